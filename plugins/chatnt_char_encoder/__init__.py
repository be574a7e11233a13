"""chatnt plugin: a tiny character-level transformer encoder for any modality.

Registers one encoder, ``char-transformer``: a small transformer over single letters
(DNA, RNA or protein - whichever encoder slot it fills), randomly initialised from a seed.
It has no pretrained weights; it exists for tests and for the offline quickstart, which
trains every component from scratch::

    encoders:
      dna:
        name: char-transformer
        params: {hidden_size: 32, num_layers: 2, max_tokens: 1024}

The plugin is found through the ``chatnt`` entry-point group; chatnt's own
``pyproject.toml`` declares it exactly as a third-party package would::

    [project.entry-points.chatnt]
    char-encoder = "chatnt_char_encoder"

Copy this package as the starting point for an encoder plugin of your own: a module with
a ``@hookimpl`` ``register_encoders`` that calls ``register(name, factory, params_model)``.
"""

from __future__ import annotations

from chatnt_char_encoder.encoder import (
    CharTransformerEncoder,
    CharTransformerParams,
    build_char_transformer,
    build_vocab,
)
from chatnt_core.hookspecs import Register, hookimpl

__version__ = "0.1.0"

__all__ = [
    "CharTransformerEncoder",
    "CharTransformerParams",
    "__version__",
    "build_char_transformer",
    "build_vocab",
    "register_encoders",
]


@hookimpl
def register_encoders(register: Register) -> None:
    register("char-transformer", build_char_transformer, CharTransformerParams)
