"""chatnt plugin: small character-level encoders, trained from scratch, for any modality.

Registers two encoders, both over single letters (DNA, RNA or protein - whichever
encoder slot they fill) and randomly initialised from a seed, with no pretrained weights:

* ``char-transformer``: a small transformer, used by the tests' tiny models;
* ``motif-cnn``: a convolutional motif scanner, the encoder of the offline quickstart
  (it learns binding sites from scratch at a fraction of the cost)::

    encoders:
      dna:
        name: motif-cnn
        params: {hidden_size: 64, kernel_size: 19}
        projection: {name: mlp, params: {pooling: max}}

The plugin is found through the ``chatnt`` entry-point group; chatnt's own
``pyproject.toml`` declares it exactly as a third-party package would::

    [project.entry-points.chatnt]
    char-encoder = "chatnt_char_encoder"

Copy this package as the starting point for an encoder plugin of your own: a module with
a ``@hookimpl`` ``register_encoders`` that calls ``register(name, factory, params_model)``.
"""

from __future__ import annotations

from chatnt_char_encoder.cnn import MotifCNNEncoder, MotifCNNParams, build_motif_cnn
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
    "MotifCNNEncoder",
    "MotifCNNParams",
    "__version__",
    "build_char_transformer",
    "build_motif_cnn",
    "build_vocab",
    "register_encoders",
]


@hookimpl
def register_encoders(register: Register) -> None:
    register("char-transformer", build_char_transformer, CharTransformerParams)
    register("motif-cnn", build_motif_cnn, MotifCNNParams)
