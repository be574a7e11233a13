"""The built-in projections, registered as an ordinary plugin (entry point ``core-projections``).

* ``english-aware-perceiver`` - ChatNT's Perceiver resampler that also reads the question.
* ``perceiver-resampler`` - the same without the question block (Supp. Fig. 1a).
* ``mlp`` - a LLaVA-style two-layer MLP on K chunk means of the sequence.

Each factory takes its validated params and a BuildContext carrying D_enc, D and K.
"""

from __future__ import annotations

from chatnt_core.hookspecs import Register, hookimpl
from chatnt_core.projections.attention import MaskedCrossAttention
from chatnt_core.projections.mlp import MLPParams, MLPProjection, build_mlp_projection
from chatnt_core.projections.perceiver import (
    EnglishAwarePerceiver,
    EnglishAwarePerceiverParams,
    PerceiverParams,
    PerceiverResampler,
    build_english_aware_perceiver,
    build_perceiver_resampler,
)

__all__ = [
    "EnglishAwarePerceiver",
    "EnglishAwarePerceiverParams",
    "MLPParams",
    "MLPProjection",
    "MaskedCrossAttention",
    "PerceiverParams",
    "PerceiverResampler",
    "register_projections",
]


@hookimpl
def register_projections(register: Register) -> None:
    """Register the three built-in projections with their params models."""
    register("english-aware-perceiver", build_english_aware_perceiver, EnglishAwarePerceiverParams)
    register("perceiver-resampler", build_perceiver_resampler, PerceiverParams)
    register("mlp", build_mlp_projection, MLPParams)
