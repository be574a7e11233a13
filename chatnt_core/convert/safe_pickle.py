"""Read a joblib or pickle file of numpy arrays without running any code from it.

Why: the published ChatNT weights are a ``joblib`` file, and ``joblib.load`` (like
``pickle.load``) calls whatever the file names - opening one is running a program. This
reader admits only what a parameter file needs: dicts, lists, tuples, strings, numbers,
and numpy arrays and dtypes (plain pickled, or joblib's ``NumpyArrayWrapper`` whose bytes
follow it in the stream). Any other global - ``os.system``, ``builtins.eval``, a class of
some library - is refused with a :class:`UnsafePickleError` naming it, before it is
looked up. Object arrays (``dtype=object``, which would hold more pickles) are refused
too. Compressed joblib files (zlib, gzip, bz2, xz, lzma) are decompressed with the
standard library first.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np

from chatnt_core.errors import ChatNTError


class UnsafePickleError(ChatNTError):
    """The file names something a parameter file never needs (it could run code)."""


_JOBLIB_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
_NUMPY_MODULES = (
    "numpy",
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
)


class _ArrayWrapper:
    """Stand-in for joblib's NumpyArrayWrapper: only its attributes are kept (``__dict__``
    update by the BUILD opcode), then the array bytes are read from the stream."""

    shape: tuple[int, ...]
    order: str
    dtype: np.dtype[Any]
    numpy_array_alignment_bytes: int | None

    def read(self, stream: BinaryIO) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        if dtype.hasobject:
            raise UnsafePickleError("the file holds an object array (it could run code)")
        if getattr(self, "numpy_array_alignment_bytes", None) is not None:
            padding = int.from_bytes(stream.read(1), "little")
            stream.read(padding)
        count = int(np.prod(self.shape, dtype=np.int64)) if len(self.shape) else 1
        data = stream.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise ChatNTError("the file ends inside an array: it is truncated")
        array = np.frombuffer(data, dtype=dtype, count=count)
        if self.order == "F":
            return array.reshape(self.shape[::-1]).transpose().copy()
        return array.reshape(self.shape).copy()


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for plain ndarrays only (no subclass is ever built)."""
    if cls is not np.ndarray:
        raise UnsafePickleError(f"the file builds an array of class {cls!r}: only ndarray is read")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's protocol-5 array reconstruction (in-band buffer), for plain arrays only."""
    array = np.frombuffer(bytes(buffer), dtype=_dtype(dtype))
    return np.asarray(array.reshape(tuple(shape), order="F" if order == "F" else "C")).copy()


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype[Any]:
    dtype = np.dtype(spec, align=align)
    if dtype.hasobject:
        raise UnsafePickleError("the file holds an object dtype (it could run code)")
    return dtype


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes: latin-1 text to bytes only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("the file calls _codecs.encode in an unexpected way")
    return text.encode("latin1")


def _scalar(dtype: np.dtype[Any], data: bytes) -> Any:
    if dtype.hasobject:
        raise UnsafePickleError("the file holds an object scalar (it could run code)")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcode table can be extended, as joblib does) with a
    closed list of globals."""

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)
    stack: list[Any]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == _JOBLIB_WRAPPER:
            return _ArrayWrapper
        if module in _NUMPY_MODULES:
            allowed = {"_reconstruct": _reconstruct, "ndarray": np.ndarray, "dtype": _dtype}
            allowed |= {"scalar": _scalar, "_frombuffer": _frombuffer}
            if name in allowed:
                return allowed[name]
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        raise UnsafePickleError(
            f"refusing to read {module}.{name} from the file: only numpy arrays, dicts, lists "
            "and scalars are allowed in a parameter file (this one could run code)"
        )

    def load_build(self) -> None:
        """BUILD, then a joblib wrapper becomes its array, read from the stream."""
        stack = self.stack
        state = stack.pop()
        target = stack[-1]
        if isinstance(target, _ArrayWrapper):
            if not isinstance(state, dict):
                raise UnsafePickleError("malformed joblib array header")
            target.__dict__.update(state)
            stack[-1] = target.read(self._file)
            return
        if isinstance(target, (np.ndarray, np.dtype)):
            target.__setstate__(state)  # type: ignore[union-attr]
            return
        raise UnsafePickleError(
            f"the file sets the state of a {type(target).__name__}: only arrays are allowed"
        )

    dispatch[pickle.BUILD[0]] = load_build

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__(stream)
        self._file = stream


_COMPRESSED = (
    (b"\x78", zlib.decompress),  # joblib's zlib (0x78 0x01/0x5e/0x9c/0xda)
    (b"\x1f\x8b", gzip.decompress),
    (b"BZh", bz2.decompress),
    (b"\xfd7zXZ", lzma.decompress),
    (b"\x5d\x00\x00", lzma.decompress),
)


def _open(path: Path) -> BinaryIO:
    """A stream of the pickle: the file itself when uncompressed (no copy in memory)."""
    with path.open("rb") as probe:
        head = probe.read(1)
    if head == b"\x80":  # a pickle protocol marker: not compressed
        return path.open("rb")
    data = path.read_bytes()
    for magic, decompress in _COMPRESSED:
        if data.startswith(magic):
            try:
                return io.BytesIO(decompress(data))
            except (OSError, ValueError, zlib.error, lzma.LZMAError) as exc:
                raise ChatNTError(f"{path}: cannot decompress it ({exc})") from None
    raise ChatNTError(
        f"{path} is not a pickle or joblib file (unknown header {data[:4]!r}): give the "
        "published params.joblib, an .npz of the same names, or a safetensors folder"
    )


def load_restricted(path: str | Path) -> Any:
    """The object a joblib/pickle file holds, built from the allowed types only."""
    path = Path(path)
    try:
        with _open(path) as stream:
            return _RestrictedUnpickler(stream).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, ValueError) as exc:
        raise ChatNTError(f"{path}: not a readable parameter file ({exc})") from None
