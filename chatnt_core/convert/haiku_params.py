"""The published ChatNT parameters as one flat ``{"module/param": array}`` dict.

Why a reader of its own: the published file is a Haiku parameter dict saved with joblib
(read here with :mod:`chatnt_core.convert.safe_pickle`, never ``joblib.load``). The same
names may also come as an ``.npz`` (keys ``module_path/param_name``) or a folder of
safetensors files (same keys). Module prefixes are normalised the way the official loader
does it: ``bio_brain_encoder`` -> ``chat_nt_encoder``, ``bio_brain_decoder`` ->
``chat_nt_decoder``.

:class:`HaikuParams` hands the arrays out one by one, checking each shape, so a missing or
misshapen array is refused with its Haiku name, and anything left untaken at the end is
reported too (a file of another model is not silently half-read).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chatnt_core.convert.safe_pickle import load_restricted
from chatnt_core.errors import ChatNTError

RENAMES = (("bio_brain_decoder", "chat_nt_decoder"), ("bio_brain_encoder", "chat_nt_encoder"))


class ConversionError(ChatNTError):
    """The source does not hold the parameters of a ChatNT the converter understands."""


def _normalise(name: str) -> str:
    for old, new in RENAMES:
        name = name.replace(old, new)
    return name


def _flatten(tree: Any, source: Path) -> dict[str, np.ndarray]:
    """``{module: {param: array}}`` (Haiku) -> ``{"module/param": array}``."""
    if not isinstance(tree, Mapping):
        raise ConversionError(
            f"{source} holds a {type(tree).__name__}, not a Haiku parameter dict "
            "{module_path: {param_name: array}}"
        )
    flat: dict[str, np.ndarray] = {}
    for module, group in tree.items():
        if not isinstance(group, Mapping):
            raise ConversionError(f"{source}: module '{module}' is not a dict of arrays")
        for name, value in group.items():
            if not isinstance(value, np.ndarray):
                raise ConversionError(f"{source}: '{module}/{name}' is not an array")
            flat[_normalise(f"{module}/{name}")] = value
    return flat


def _read_safetensors_folder(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
    if not files:
        raise ConversionError(f"{folder} holds no .safetensors files")
    flat: dict[str, np.ndarray] = {}
    for file in files:
        if not file.is_file():
            raise ConversionError(f"{file} is listed in {index.name} but missing")
        flat.update({_normalise(k): v for k, v in load_file(str(file)).items()})
    return flat


def read_params(source: str | Path) -> dict[str, np.ndarray]:
    """The flat, renamed parameter dict of a ``.joblib``/pickle file, ``.npz`` or folder."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_safetensors_folder(path)
    if not path.is_file():
        raise ConversionError(
            f"{path} does not exist: give the published jax_params/params.joblib, an .npz "
            "of the same names, or the folder of the PyTorch port's safetensors files"
        )
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {_normalise(k): data[k] for k in data.files}
    return _flatten(load_restricted(path), path)


class HaikuParams:
    """Arrays handed out by name, each shape checked; ``leftover`` lists what was not."""

    def __init__(self, flat: Mapping[str, np.ndarray], source: str) -> None:
        self._flat = dict(flat)
        # a taken array is dropped here at once (a 7B model is held once, not twice)
        self._shapes = {name: tuple(array.shape) for name, array in self._flat.items()}
        self.source = source

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            raise ConversionError(
                f"{self.source} has no parameter '{name}': it is not a (complete) ChatNT "
                "parameter file"
            )
        return self._shapes[name]

    def take(self, name: str, shape: Iterable[int]) -> np.ndarray:
        """The array ``name``, refused unless its shape is ``shape``; each is taken once."""
        found, expected = self.shape(name), tuple(shape)
        if found != expected:
            raise ConversionError(
                f"{self.source}: parameter '{name}' has shape {found}, expected "
                f"{expected} from the other arrays (a different or damaged model)"
            )
        if name not in self._flat:
            raise ValueError(f"'{name}' was taken twice")  # a bug in the rules
        return self._flat.pop(name)

    def count(self, prefix: str) -> int:
        """How many consecutively numbered modules ``{prefix}{i}/`` there are."""
        i = 0
        while any(n.startswith(f"{prefix}{i}/") for n in self._shapes):
            i += 1
        return i

    def child(self, prefix: str) -> str:
        """The single module name right under ``prefix/`` (e.g. the NT model's own name)."""
        start = len(prefix) + 1
        found = {n[start:].split("/")[0] for n in self._shapes if n.startswith(prefix + "/")}
        found.discard("~")
        if len(found) != 1:
            raise ConversionError(
                f"{self.source}: expected one module under '{prefix}', found "
                f"{sorted(found) or 'none'}"
            )
        return found.pop()

    def leftover(self, ignored: Iterable[str] = ()) -> list[str]:
        """Names never taken, except those containing one of ``ignored``."""
        skip = tuple(ignored)
        return sorted(n for n in self._flat if not any(s in n for s in skip))
