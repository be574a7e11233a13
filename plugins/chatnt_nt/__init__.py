"""chatnt plugin: the Nucleotide Transformer v2 DNA encoder, native PyTorch.

Registers one encoder, ``nucleotide-transformer-v2``: ChatNT's DNA encoder (NT-v2: rotary
embeddings, pre-LayerNorm blocks, SwiGLU feed-forward, final LayerNorm) written in plain
PyTorch. It loads the published Hugging Face checkpoints (50m, 100m, 250m, 500m
multi-species) without their remote code, and reproduces NT's 6-mer tokenizer id for id::

    encoders:
      dna:
        name: nucleotide-transformer-v2
        params: {preset: 500m}                 # InstaDeepAI/nucleotide-transformer-v2-500m-...
        # params: {path: /models/nt-v2-500m}   # a local copy; its config.json sets the sizes
        # params: {preset: tiny}               # random weights, for tests and offline demos

Sequences longer than ``max_tokens`` (2048 tokens, ``<cls>`` included) raise unless
``long_sequences: chunk``; see ``chatnt_nt.encoder``. Modules: ``tokenizer`` (ids and the
input rule), ``model`` (the architecture), ``checkpoint`` (reading, validating and writing
the published layout), ``encoder`` (params, the ``Encoder`` and the factory).
"""

from __future__ import annotations

from chatnt_core.hookspecs import Register, hookimpl
from chatnt_nt.checkpoint import read_config, save_pretrained
from chatnt_nt.encoder import (
    NAME,
    NucleotideTransformerEncoder,
    NucleotideTransformerParams,
    build_nucleotide_transformer,
)
from chatnt_nt.model import PRESETS, NTv2Config, NTv2Model
from chatnt_nt.tokenizer import NTTokenizer, build_vocab

__version__ = "0.1.0"

__all__ = [
    "NAME",
    "PRESETS",
    "NTTokenizer",
    "NTv2Config",
    "NTv2Model",
    "NucleotideTransformerEncoder",
    "NucleotideTransformerParams",
    "__version__",
    "build_nucleotide_transformer",
    "build_vocab",
    "read_config",
    "register_encoders",
    "save_pretrained",
]


@hookimpl
def register_encoders(register: Register) -> None:
    register(NAME, build_nucleotide_transformer, NucleotideTransformerParams)
