"""Benchmark: the paper's projection ablation (English-aware vs plain Perceiver vs MLP).

ChatNT reports that reading the question in the Perceiver projection helps: 0.77 vs 0.71
mean MCC over its tasks for the English-aware Perceiver vs the plain Perceiver resampler.
This trains one assembly three times, changing only ``model.encoders.dna.projection``:

* ``english-aware-perceiver``: the base config's Perceiver params (question read through
  ``question_embeddings``);
* ``perceiver-resampler``: the same params without ``question_embeddings``;
* ``mlp``: ``pooling: mean_max``, ``normalize_output: true`` (the quickstart's projection).

Every variant runs through the real Trainer from the same seed (same encoder init, same
encoder warm-up, same sampler draws) for the same ``--steps`` updates on the same data, is
then evaluated on the demo test split (``--eval-per-task`` records per task, greedy answers
of at most 40 tokens, no calibration) and one table is printed: each task's score (its
card's metric) with its unparseable share, the mean of the task scores, and the time to
set up (decoder load + encoder warm-up) and to train. Everything also goes to
``--out/ablation.json``; each variant's checkpoint and evaluation report stay under
``--out/<variant>/``.

The base training config: ``--config YAML``, else ``registry/training/quickstart.yaml`` (the
SmolLM2 recipe: frozen SmolLM2-135M-Instruct from the model store, motif-cnn encoder,
English-aware Perceiver K = 8, 800 warm-up updates, fp32). Its
``data``, ``output_dir`` and ``max_steps`` are replaced (a decaying schedule decays over
``--steps``): the data is ``--data DIR`` or demo data written to ``--out/data``
(``--train-size``/``--test-size`` records per task, seed 0).

Run (about: 3 x (warm-up + steps x seconds per update + evaluation)):

    python bench/projection_ablation.py --steps 150 --eval-per-task 100 \\
        --out runs/projection-ablation
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import disable_progress_bars

from chatnt_core.config import load_config, read_yaml
from chatnt_core.data.demo import write_demo
from chatnt_core.evaluation.evaluate import evaluate_model
from chatnt_core.training.config import parse_train_config, training_preset_path
from chatnt_core.training.trainer import Trainer

PAPER_REFERENCE = (
    "paper (ChatNT): English-aware Perceiver 0.77 vs plain Perceiver resampler 0.71 mean MCC"
)
VARIANTS = ("english-aware-perceiver", "perceiver-resampler", "mlp")
MLP_PARAMS: dict[str, Any] = {"pooling": "mean_max", "normalize_output": True}


def read_config(path: Path) -> dict[str, Any]:
    """A training YAML as a dict, with a model given by name or path inlined."""
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: expected a training config mapping")
    if isinstance(config.get("model"), str):
        model = load_config(config["model"])
        config["model"] = model.model_dump(mode="json", exclude_unset=True)
    return config


def base_config(path: str | None) -> tuple[str, dict[str, Any]]:
    """(where it came from, the training config): ``path``, else the shipped quickstart."""
    source = Path(path) if path is not None else training_preset_path("quickstart")
    return str(source), read_config(source)


def projection_for(variant: str, base: dict[str, Any]) -> dict[str, Any]:
    """``variant``'s projection; the Perceivers share the base Perceiver's params."""
    if variant == "mlp":
        return {"name": "mlp", "params": dict(MLP_PARAMS)}
    perceivers = ("english-aware-perceiver", "perceiver-resampler")
    params = dict(base.get("params") or {}) if base.get("name") in perceivers else {}
    if variant == "perceiver-resampler":
        params.pop("question_embeddings", None)
    return {"name": variant, "params": params}


def train_config(
    base: dict[str, Any], variant: str, data: Path, out: Path, steps: int
) -> dict[str, Any]:
    config = copy.deepcopy(base)
    slot = config["model"]["encoders"]["dna"]
    slot["projection"] = projection_for(variant, slot.get("projection") or {})
    config.update(
        data=[str(data)],
        output_dir=str(out),
        max_steps=steps,
        epochs=None,
        save_every=10**9,
        keep_last=1,
        progress=False,
        tensorboard=False,
    )
    return config


def fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's weights (equal hashes: equal warm-up)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def run_variant(
    config: dict[str, Any], data: Path, out: Path, eval_per_task: int
) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    trainer = Trainer(parse_train_config(config, source=str(out)))
    setup_s = time.perf_counter() - started
    encoder = fingerprint(trainer.model.encoders["dna"])
    started = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    report = evaluate_model(
        trainer.model,
        data,
        out / "eval",
        max_per_task=eval_per_task,
        max_new_tokens=40,
        model_name=out.name,
    )
    eval_s = time.perf_counter() - started
    tasks = {
        name: {
            "metric": task.summary["metric"],
            "score": task.summary["score"],
            "unparseable_pct": task.summary["unparseable_pct"],
            "n": task.summary["n"],
        }
        for name, task in report.tasks.items()
    }
    scores = [t["score"] for t in tasks.values() if t["score"] is not None]
    del trainer
    gc.collect()
    return {
        "projection": config["model"]["encoders"]["dna"]["projection"],
        "encoder_after_warmup": encoder,
        "setup_s": setup_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "final_loss": result.loss,
        "tasks": tasks,
        "mean_score": sum(scores) / len(scores) if scores else None,
        "tasks_without_score": len(tasks) - len(scores),
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Variants as rows; each task cell is its score and, in brackets, % unparseable."""
    first = next(iter(results.values()))["tasks"]
    heads = [f"{task} {entry['metric']}" for task, entry in first.items()]
    width = max(14, *(len(h) for h in heads))
    print(
        f"{'variant':<24}"
        + "".join(f" {h:>{width}}" for h in heads)
        + f" {'mean':>7} {'setup s':>8} {'train s':>8}"
    )
    for variant, result in results.items():
        cells = ""
        for task in first:
            entry = result["tasks"][task]
            score = "n/a" if entry["score"] is None else f"{entry['score']:.3f}"
            cell = f"{score} ({entry['unparseable_pct']:.0f}%)"
            cells += f" {cell:>{width}}"
        mean = "n/a" if result["mean_score"] is None else f"{result['mean_score']:.3f}"
        mean += "*" if result["tasks_without_score"] else ""
        print(f"{variant:<24}{cells} {mean:>7} {result['setup_s']:>8.0f} {result['train_s']:>8.0f}")
    print("cells: score of the task's metric (% unparseable answers); mean: of the task scores")
    if any(r["tasks_without_score"] for r in results.values()):
        print("* mean over the tasks with a defined score (n/a: metric undefined)")
    print(PAPER_REFERENCE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="training YAML (default: built in)")
    parser.add_argument("--steps", type=int, default=150, help="training updates per variant")
    parser.add_argument("--eval-per-task", type=int, default=100, help="test records per task")
    parser.add_argument("--out", default="runs/projection-ablation", help="output directory")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--data", default=None, help="instruction data directory (train, test)")
    parser.add_argument("--train-size", type=int, default=1000, help="demo records per task")
    parser.add_argument("--test-size", type=int, default=200, help="demo records per task")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "data"
    if args.data is None and not (data / "manifest.json").is_file():
        write_demo(data, args.train_size, args.test_size, seed=0, overwrite=True)
    source, base = base_config(args.config)
    print(
        f"config {source}, data {data}, {args.steps} updates per "
        f"variant, precision {base.get('precision', 'fp32')}, threads {torch.get_num_threads()}"
    )
    results: dict[str, dict[str, Any]] = {}
    for variant in args.variants:
        config = train_config(base, variant, data, out / variant, args.steps)
        results[variant] = run_variant(config, data, out / variant, args.eval_per_task)
        print(
            f"{variant}: trained in {results[variant]['train_s']:.0f} s, final loss "
            f"{results[variant]['final_loss']:.3f}, evaluated in "
            f"{results[variant]['eval_s']:.0f} s",
            flush=True,
        )
    print_table(results)
    same = len({r["encoder_after_warmup"] for r in results.values()}) == 1
    print(f"encoder after warm-up identical across variants: {'yes' if same else 'no'}")
    summary = {
        "config": source,
        "base_config": base,
        "data": str(data),
        "steps": args.steps,
        "eval_per_task": args.eval_per_task,
        "variants": results,
        "paper_reference": {"english-aware-perceiver": 0.77, "perceiver-resampler": 0.71},
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'ablation.json'}")


if __name__ == "__main__":
    main()
