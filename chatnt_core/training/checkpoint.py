"""Checkpoints: one self-describing directory per save, written atomically, verified on load.

Layout of ``OUTPUT_DIR/checkpoint-000100/``::

    config.yaml              resolved model config (plugin names + versions) and TrainConfig
    model.safetensors        trainable parameters + persistent buffers of trainable modules
    tokenizer/               the decoder tokenizer, only when training modified it
    optimizer.safetensors    optimizer tensors (``optimizer-rank{r}.*`` when sharded)
    optimizer.json           the optimizer state's skeleton (see ``state_io``)
    rng-rank{r}.safetensors  python / numpy / torch CPU / CUDA RNG of each process
    trainer_state.json       step, data position, schedule, accumulated metrics
    manifest.json            SHA-256 and size of every other file; written last

``OUTPUT_DIR/latest`` names the newest complete checkpoint. Frozen pretrained weights are
never copied: the model config references them (a path, a hub id or a seeded random init).

A save goes to a hidden sibling ``.checkpoint-000100.tmp``, every file is fsynced, and
the directory is renamed into place; ``latest`` is then replaced atomically. A crash at
any point leaves the previous checkpoint and ``latest`` untouched. Nothing is pickled and
``torch.load`` is never called.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from chatnt_core.config import parse_config, resolve_config
from chatnt_core.errors import ChatNTError, UnknownComponentError
from chatnt_core.training import state_io

FORMAT = "chatnt-checkpoint/1"
MANIFEST = "manifest.json"
LATEST = "latest"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def _clean_name(name: str) -> str:
    """Parameter names without the segments FSDP and activation checkpointing insert."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def trainable_state_dict(
    model: nn.Module, full_state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: parameters with ``requires_grad`` and the persistent
    buffers of modules that hold such parameters, or that hold no parameters at all and
    sit in a module that does (running statistics such as ``RunningStandardize``, which
    are learned state of the trainable module around them). ``full_state`` may come from
    a sharded wrapper (FSDP, DeepSpeed) that has to gather it first."""
    state = full_state if full_state is not None else model.state_dict()
    state = {_clean_name(k): v for k, v in state.items()}
    names = trainable_names(model)
    return {n: state[n].detach().cpu().contiguous().clone() for n in sorted(names) if n in state}


def trainable_names(model: nn.Module) -> set[str]:
    """The state-dict names ``trainable_state_dict`` keeps (see there)."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    modules = dict(model.named_modules())

    def trains(module: nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    for prefix, module in modules.items():
        owner = module
        if prefix and next(module.parameters(), None) is None:
            owner = modules[prefix.rpartition(".")[0]]
        if trains(owner):
            names |= {
                f"{prefix}.{b}" if prefix else b for b, _ in module.named_buffers(recurse=False)
            }
    return {_clean_name(n) for n in names}


def modified_tokenizer(decoder: nn.Module) -> Any:
    """The decoder's tokenizer if it changed after the decoder was built, else None.

    What the decoder does to its tokenizer while it is built (adding the placeholder
    token) happens again when the checkpoint is loaded, so only later changes (tokens a
    user or a plugin added) make the config insufficient and the tokenizer worth saving.
    """
    tokenizer = getattr(decoder, "tokenizer", None)
    built = getattr(decoder, "tokenizer_size", None)
    if tokenizer is None or built is None or not hasattr(tokenizer, "save_pretrained"):
        return None
    return tokenizer if len(tokenizer) != built else None


@dataclass
class CheckpointPayload:
    """Everything one process contributes to a save."""

    config: dict[str, Any]  # config.yaml content
    weights: dict[str, torch.Tensor]  # used on the main process only
    trainer_state: dict[str, Any]  # used on the main process only
    optimizer_state: dict[str, Any] | None  # this process's (a shard when sharded)
    optimizer_sharded: bool = False  # every process writes its own optimizer file
    tokenizer: Any = None  # an object with save_pretrained, when it was modified
    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)
    # writes extra files into the checkpoint directory before the manifest (a converted
    # model's frozen parts, referenced from its config as ``./name``)
    assets: Callable[[Path], None] | None = None


def _write_optimizer(directory: Path, stem: str, state: dict[str, Any]) -> None:
    skeleton, tensors = state_io.flatten_state(state)
    state_io.write_tensors(directory / f"{stem}.safetensors", tensors)
    state_io.write_json(directory / f"{stem}.json", skeleton)


def _write_manifest(directory: Path) -> None:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative != MANIFEST:
            files[relative] = {"sha256": state_io.sha256_file(path), "size": path.stat().st_size}
    state_io.write_json(directory / MANIFEST, {"format": FORMAT, "files": files})


def _remove_tree(path: Path) -> None:
    """Rename first so a half-removed directory never looks like a checkpoint."""
    doomed = path.with_name(f".{path.name}.removing-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(output_dir: Path, step: int, payload: CheckpointPayload) -> Path:
    """Write ``checkpoint-{step}`` atomically; call it on every process (it synchronises)."""
    output_dir = Path(output_dir)
    name = checkpoint_name(step)
    final = output_dir / name
    tmp = output_dir / f".{name}.tmp"
    main = payload.rank == 0
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # debris of an earlier interrupted save
            shutil.rmtree(tmp)
        tmp.mkdir()
    payload.barrier()
    rng_tensors, rng_meta = state_io.capture_rng()
    state_io.write_tensors(tmp / f"rng-rank{payload.rank}.safetensors", rng_tensors, rng_meta)
    if payload.optimizer_sharded and payload.optimizer_state is not None:
        _write_optimizer(tmp, f"optimizer-rank{payload.rank}", payload.optimizer_state)
    payload.barrier()
    if main:
        state_io.write_text(tmp / "config.yaml", yaml.safe_dump(payload.config, sort_keys=False))
        state_io.write_tensors(tmp / "model.safetensors", payload.weights, {"format": FORMAT})
        if not payload.optimizer_sharded and payload.optimizer_state is not None:
            _write_optimizer(tmp, "optimizer", payload.optimizer_state)
        state = {**payload.trainer_state, "step": step, "world_size": payload.world_size}
        state_io.write_json(tmp / "trainer_state.json", state)
        if payload.tokenizer is not None:
            payload.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            for path in (tmp / "tokenizer").iterdir():
                state_io.fsync_path(path)
        if payload.assets is not None:
            payload.assets(tmp)
        _write_manifest(tmp)
        state_io.fsync_path(tmp)
        if final.exists():  # re-saving a step (after a resume): replace it whole
            _remove_tree(final)
        os.replace(tmp, final)
        state_io.fsync_path(output_dir)
        state_io.write_text_atomic(output_dir / LATEST, name + "\n")
    payload.barrier()
    return final


def save_model(model: Any, output_dir: Path, step: int = 0) -> Path:
    """A ``ChatNTModel`` as a checkpoint without trainer or optimizer state (e.g. an
    untrained assembly, for benchmarks and tests); loads like any training checkpoint."""
    config = {
        "format": FORMAT,
        "step": step,
        "model": model.resolved.to_dict(),
        "plugins": model.resolved.plugin_versions(),
        "train": {"seed": 0},
    }
    payload = CheckpointPayload(
        config=config,
        weights=trainable_state_dict(model),
        trainer_state={},
        optimizer_state=None,
        tokenizer=modified_tokenizer(model.decoder),
    )
    return save_checkpoint(output_dir, step, payload)


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(output_dir).iterdir() if Path(output_dir).is_dir() else []:
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def rotate_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (never the one ``latest`` names)."""
    latest = read_latest(output_dir)
    found = list_checkpoints(output_dir)
    for _, path in found[: max(0, len(found) - keep_last)]:
        if latest is None or path.resolve() != latest.resolve():
            _remove_tree(path)


def read_latest(output_dir: Path) -> Path | None:
    pointer = Path(output_dir) / LATEST
    if not pointer.is_file():
        return None
    return Path(output_dir) / pointer.read_text(encoding="utf-8").strip()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or an output directory whose ``latest`` names one."""
    path = Path(path)
    if (path / MANIFEST).is_file() or (path / "config.yaml").is_file():
        return path
    latest = read_latest(path)
    if latest is not None:
        return latest
    raise ChatNTError(
        f"{path} is neither a checkpoint (no {MANIFEST}) nor an output directory with a "
        f"'{LATEST}' file: give a checkpoint-NNNNNN directory"
    )


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest; raise a one-line ChatNTError naming it."""
    fix = "restore the file or resume from an earlier checkpoint"
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ChatNTError(
            f"{manifest_path} is missing, so the checkpoint is incomplete (an interrupted "
            "save?): resume from an earlier checkpoint"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise ChatNTError(
            f"{manifest_path} is corrupt: resume from an earlier checkpoint"
        ) from None
    for relative, entry in files.items():
        path = directory / relative
        if not path.is_file():
            raise ChatNTError(f"checkpoint file {path} is missing: {fix}")
        size = path.stat().st_size
        if size != entry["size"]:
            raise ChatNTError(
                f"checkpoint file {path} is truncated or altered ({size} bytes, manifest says "
                f"{entry['size']}): {fix}"
            )
        if state_io.sha256_file(path) != entry["sha256"]:
            raise ChatNTError(
                f"checkpoint file {path} is corrupt (SHA-256 differs from {MANIFEST}): {fix}"
            )
    return dict(manifest)


@dataclass
class Checkpoint:
    """A verified checkpoint directory, read lazily part by part."""

    directory: Path
    config: dict[str, Any]
    trainer_state: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        directory = resolve_checkpoint(path)
        verify_checkpoint(directory)
        config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8"))
        state_path = directory / "trainer_state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        return cls(directory, config, state)

    def weights(self) -> dict[str, torch.Tensor]:
        return state_io.read_tensors(self.directory / "model.safetensors")[0]

    def optimizer_state(self, rank: int = 0) -> dict[str, Any] | None:
        for stem in (f"optimizer-rank{rank}", "optimizer"):
            if (self.directory / f"{stem}.json").is_file():
                skeleton = json.loads((self.directory / f"{stem}.json").read_text())
                tensors, _ = state_io.read_tensors(self.directory / f"{stem}.safetensors")
                state: dict[str, Any] = state_io.unflatten_state(skeleton, tensors)
                return state
        return None

    def restore_rng(self, rank: int = 0) -> bool:
        """Restore this process's RNG; False when the checkpoint has no state for ``rank``."""
        path = self.directory / f"rng-rank{rank}.safetensors"
        if not path.is_file():
            return False
        state_io.restore_rng(*state_io.read_tensors(path))
        return True

    @property
    def tokenizer_dir(self) -> Path | None:
        path = self.directory / "tokenizer"
        return path if path.is_dir() else None


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load trainable weights; every stored name must exist and every trainable one be there."""
    expected = set(trainable_state_dict(model))
    unexpected = sorted(set(weights) - set(model.state_dict()))
    missing = sorted(expected - set(weights))
    if unexpected or missing:
        detail = f"unknown {unexpected[:3]}" if unexpected else f"missing {missing[:3]}"
        raise ChatNTError(
            f"{source}/model.safetensors does not fit the model ({detail}): load it with the "
            "config.yaml it was saved with"
        )
    model.load_state_dict(weights, strict=False)


LOCAL_PREFIX = "./"  # a params path inside the checkpoint directory itself


def anchor_local_paths(model_data: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Component ``path``/``tokenizer`` params written ``./name`` point into ``directory``
    (a converted model keeps its frozen parts there, so the folder can move)."""

    def anchored(block: Any) -> Any:
        if not isinstance(block, dict) or not isinstance(block.get("params"), dict):
            return block
        params = dict(block["params"])
        for key in ("path", "tokenizer"):
            value = params.get(key)
            if isinstance(value, str) and value.startswith(LOCAL_PREFIX):
                params[key] = str(directory / value[len(LOCAL_PREFIX) :])
        return {**block, "params": params}

    out = dict(model_data)
    out["decoder"] = anchored(out.get("decoder"))
    encoders = out.get("encoders")
    if isinstance(encoders, dict):
        out["encoders"] = {m: anchored(slot) for m, slot in encoders.items()}
    return out


def load_model_from_checkpoint(path: str | Path) -> Any:
    """Rebuild the trained ``ChatNTModel`` from a checkpoint (verified first), in eval mode.

    Frozen parts are rebuilt from the config (pretrained paths, seeded random inits);
    LoRA adapters are re-applied; the stored trainable weights are loaded on top.
    """
    from chatnt_core.model import ChatNTModel
    from chatnt_core.training.config import LoraSettings
    from chatnt_core.training.lora import apply_lora

    checkpoint = Checkpoint.open(path)
    model_data = anchor_local_paths(dict(checkpoint.config["model"]), checkpoint.directory)
    if checkpoint.tokenizer_dir is not None:
        decoder = dict(model_data["decoder"])
        params = dict(decoder.get("params", {}))
        if "tokenizer" in params:
            params["tokenizer"] = str(checkpoint.tokenizer_dir)
            model_data["decoder"] = {**decoder, "params": params}
    saved = checkpoint.config.get("plugins", {})
    try:
        resolved = resolve_config(parse_config(model_data, f"{checkpoint.directory}/config.yaml"))
    except UnknownComponentError as exc:
        needed = ", ".join(f"{name} {version}" for name, version in sorted(saved.items()))
        raise UnknownComponentError(
            f"{checkpoint.directory} needs a component no loaded plugin provides ({exc}); "
            f"it was saved with the plugins {needed}: install the missing one (pip) or fix "
            "the broken one"
        ) from None
    for plugin, version in resolved.plugin_versions().items():
        if plugin in saved and saved[plugin] != version:
            warnings.warn(
                f"checkpoint was saved with {plugin} {saved[plugin]}, now {version} is "
                "installed; weights may not match",
                stacklevel=2,
            )
    model = ChatNTModel.from_config(resolved)  # frozen random parts: the config's seed
    lora = checkpoint.config.get("train", {}).get("lora")
    if lora:
        apply_lora(model.decoder, LoraSettings.model_validate(lora))
    load_weights(model, checkpoint.weights(), checkpoint.directory)
    return model.eval()
