"""What is loaded: the facts a user needs before trusting an answer.

A biologist looking at an answer wants to know which model gave it: which encoder and
LLM, which plugin versions built them, what it was trained on, how well it scored on the
held-out test set and whether its probabilities are calibrated. All of that is already
on disk in the checkpoint (``config.yaml``, ``trainer_state.json``, ``calibration.json``)
and, once ``chatnt evaluate`` has run, in its ``evaluation/`` folder (``metrics.md``,
``metrics.json``, ``plots/``). This module gathers it into one JSON-safe dict, the
``Model`` tab and ``GET /api/model`` both show it, and ``markdown`` renders it for people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from chatnt_core.api import ChatNT

EVALUATION_DIR = "evaluation"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _components(chatnt: ChatNT) -> list[dict[str, str]]:
    resolved = chatnt.model.resolved
    parts = [
        *((f"encoder ({m.value})", c) for m, c in resolved.encoders.items()),
        *((f"projection ({m.value})", c) for m, c in resolved.projections.items()),
        ("decoder", resolved.decoder),
    ]
    return [
        {"role": role, "name": c.config.name, "plugin": c.plugin, "version": c.version}
        for role, c in parts
    ]


def _training(directory: Path) -> dict[str, Any]:
    """Data, steps and samples from the checkpoint's config and trainer state."""
    config = _read_yaml(directory / "config.yaml")
    train = config.get("train") or {}
    state = _read_json(directory / "trainer_state.json")
    data = train.get("data") or {}
    paths = data.get("paths", data) if isinstance(data, dict) else data
    tasks = (state.get("sampler") or {}).get("task_names")
    return {
        "data": [str(p) for p in paths] if isinstance(paths, list) else [],
        "split": data.get("split") if isinstance(data, dict) else None,
        "tasks": tasks or (data.get("tasks") if isinstance(data, dict) else None),
        "step": config.get("step"),
        "samples_seen": state.get("samples_seen"),
        "preset_or_model": train.get("model") if isinstance(train.get("model"), str) else None,
    }


def _evaluation(directory: Path) -> dict[str, Any]:
    folder = directory / EVALUATION_DIR
    metrics = _read_json(folder / "metrics.json")
    table = folder / "metrics.md"
    plots = sorted((folder / "plots").glob("*.png")) if (folder / "plots").is_dir() else []
    return {
        "folder": str(folder) if folder.is_dir() else None,
        "markdown": table.read_text(encoding="utf-8") if table.is_file() else None,
        "tasks": metrics.get("tasks", {}),
        "plots": [str(p) for p in plots],
    }


def model_info(chatnt: ChatNT) -> dict[str, Any]:
    """Checkpoint, assembly, plugins, training data, calibrators and evaluation."""
    source = Path(chatnt.source) if chatnt.source else None
    is_checkpoint = source is not None and (source / "config.yaml").is_file()
    config = chatnt.model.resolved.config
    return {
        "source": chatnt.source,
        "trained_checkpoint": is_checkpoint,
        "assembly": {
            "name": config.name,
            "description": config.description,
            "num_latents": config.num_latents,
            "components": _components(chatnt),
        },
        "plugins": chatnt.model.resolved.plugin_versions(),
        "training": _training(source) if is_checkpoint and source else None,
        "calibrated_tasks": sorted(chatnt.calibrations),
        "evaluation": _evaluation(source) if is_checkpoint and source else None,
    }


def markdown(info: dict[str, Any]) -> str:
    """The Model tab: what is loaded, then the evaluation's own report (its metrics table)."""
    assembly = info["assembly"]
    lines = [
        f"**Loaded:** `{info['source']}`"
        + ("" if info["trained_checkpoint"] else " (an untrained assembly: answers are noise)"),
        "",
        f"**Assembly:** {assembly['name']}, K = {assembly['num_latents']} vectors per sequence"
        + (f" — {assembly['description']}" if assembly["description"] else ""),
        "",
        "| part | component | plugin | version |",
        "|---|---|---|---|",
        *(
            f"| {c['role']} | {c['name']} | {c['plugin']} | {c['version']} |"
            for c in assembly["components"]
        ),
        "",
    ]
    training = info.get("training")
    if training:
        data = ", ".join(f"`{p}`" for p in training["data"]) or "unknown"
        tasks = ", ".join(training["tasks"] or []) or "as in the data"
        lines += [
            f"**Training data:** {data} (split {training['split'] or '?'}; tasks: {tasks}); "
            f"step {training['step']}, {training['samples_seen'] or '?'} samples seen.",
            "",
        ]
    calibrated = ", ".join(info["calibrated_tasks"])
    lines += [
        f"**Calibrated yes/no tasks:** {calibrated}"
        if calibrated
        else "**Calibrated yes/no tasks:** none (probabilities are shown as uncalibrated; "
        "run `chatnt calibrate`)",
        "",
    ]
    evaluation = info.get("evaluation") or {}
    if evaluation.get("markdown"):
        body = evaluation["markdown"].split("\n", 1)[-1]  # its own title dropped
        body = body.replace("\n## ", "\n#### ")  # its sections under this heading
        lines += ["### Evaluation (`chatnt evaluate`)", body]
    else:
        lines.append("No evaluation yet: run `chatnt evaluate CHECKPOINT --data DIR` to add one.")
    return "\n".join(lines)
