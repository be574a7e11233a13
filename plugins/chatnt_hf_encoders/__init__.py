"""chatnt plugin: pretrained Hugging Face sequence encoders.

Registers three encoders, all built on transformers models:

* ``esm2`` - Meta's ESM-2 protein model (``preset: 8m`` ... ``3b``, or ``tiny`` for tests);
* ``rna-fm`` - the RNA-FM RNA model, run on transformers' ``EsmModel`` and loaded from
  the multimolecule checkpoint without depending on multimolecule;
* ``hf-encoder`` - any ``AutoModel`` + ``AutoTokenizer`` with a declared modality.

::

    encoders:
      protein:
        name: esm2
        params: {preset: 650m, long_sequences: chunk}
      rna:
        name: rna-fm
        params: {preset: rna-fm}

They share one base (tokenize with the model's special tokens, right padding, the
``long_sequences`` policy, ``last_hidden_state`` out), so a too-long sequence is treated
the same way whichever encoder reads it: an error naming the fix, or chunked encoding,
never silent truncation. The plugin is found through the ``chatnt`` entry-point group::

    [project.entry-points.chatnt]
    hf-encoders = "chatnt_hf_encoders"
"""

from __future__ import annotations

from chatnt_core.hookspecs import Register, hookimpl
from chatnt_hf_encoders.base import HFEncoderCommonParams, HFSequenceEncoder, PerLetterEncoder
from chatnt_hf_encoders.esm2 import Esm2Encoder, Esm2Params, build_esm2, esm2_config
from chatnt_hf_encoders.generic import HFEncoder, HFEncoderParams, build_hf_encoder
from chatnt_hf_encoders.rna import (
    RnaFmEncoder,
    RnaFmParams,
    build_rna_fm,
    convert_multimolecule_state_dict,
    rnafm_config,
)

__version__ = "0.1.0"

__all__ = [
    "Esm2Encoder",
    "Esm2Params",
    "HFEncoder",
    "HFEncoderCommonParams",
    "HFEncoderParams",
    "HFSequenceEncoder",
    "PerLetterEncoder",
    "RnaFmEncoder",
    "RnaFmParams",
    "__version__",
    "build_esm2",
    "build_hf_encoder",
    "build_rna_fm",
    "convert_multimolecule_state_dict",
    "esm2_config",
    "register_encoders",
    "rnafm_config",
]


@hookimpl
def register_encoders(register: Register) -> None:
    register("esm2", build_esm2, Esm2Params)
    register("rna-fm", build_rna_fm, RnaFmParams)
    register("hf-encoder", build_hf_encoder, HFEncoderParams)
