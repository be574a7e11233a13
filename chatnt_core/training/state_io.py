"""Pickle-free storage of training state: nested state dicts and RNG states.

Checkpoints must be safe to open from an untrusted source, so nothing is ever pickled:
tensors go to safetensors, everything else to JSON. A nested state (an optimizer's
``state_dict``, say) becomes a JSON *skeleton*, where each tensor is replaced by
``{"__tensor__": name}`` and tuples and non-string-keyed dicts are tagged so they come
back as they were, plus a flat ``{name: tensor}`` mapping for safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

TENSOR = "__tensor__"
TUPLE = "__tuple__"
ITEMS = "__items__"  # a dict whose keys are not all plain strings


def flatten_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able skeleton and named tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            name = path or "tensor"
            tensors[name] = value.detach().cpu().contiguous().clone()
            return {TENSOR: name}
        if isinstance(value, dict):
            plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
            if plain:
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
            return {
                ITEMS: [
                    [walk(k, f"{path}.key{i}"), walk(v, f"{path}.{k}" if path else str(k))]
                    for i, (k, v) in enumerate(value.items())
                ]
            }
        if isinstance(value, tuple):
            return {TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store {type(value).__name__} at '{path}' without pickle")

    return walk(state, prefix), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``flatten_state``."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {TENSOR}:
            return tensors[skeleton[TENSOR]]
        if set(skeleton) == {TUPLE}:
            return tuple(unflatten_state(v, tensors) for v in skeleton[TUPLE])
        if set(skeleton) == {ITEMS}:
            return {
                unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton[ITEMS]
            }
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


# ---- RNG ---------------------------------------------------------------------------------


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's python, numpy, torch CPU and CUDA RNG states: tensors + metadata."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    tensors = {
        "python": torch.tensor(words, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = cuda_state
    meta = {
        "python": json.dumps({"version": version, "gauss_next": gauss}),
        "numpy": json.dumps(
            {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
        ),
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Put back what ``capture_rng`` took; CUDA states only where devices match."""
    py = json.loads(meta["python"])
    words = tuple(int(w) for w in tensors["python"].tolist())
    random.setstate((py["version"], words, py["gauss_next"]))
    npm = json.loads(meta["numpy"])
    keys = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((npm["kind"], keys, npm["pos"], npm["has_gauss"], npm["cached"]))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ---- files -------------------------------------------------------------------------------


def fsync_path(path: Path) -> None:
    """Flush a file or directory to disk (directories: their entries, i.e. renames)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open directories; nothing more to do there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_text(tmp, text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(path),
        metadata=metadata,
    )
    fsync_path(path)


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata() or {}
    return tensors, dict(metadata)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
