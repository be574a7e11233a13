"""Converters from other projects' checkpoints to chatnt checkpoints.

``official`` reads the published ChatNT (InstaDeep's JAX/Haiku parameters) through
``safe_pickle``, which never runs code from the file.
"""

from chatnt_core.convert.haiku_params import ConversionError
from chatnt_core.convert.official import ConvertOptions, convert_official
from chatnt_core.convert.official_rules import Heads
from chatnt_core.convert.safe_pickle import UnsafePickleError, load_restricted

__all__ = [
    "ConversionError",
    "ConvertOptions",
    "Heads",
    "UnsafePickleError",
    "convert_official",
    "load_restricted",
]
