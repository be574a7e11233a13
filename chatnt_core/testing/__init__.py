"""The plugin author's kit: a conformance suite for encoders, projections and decoders.

The core relies on more than the abstract methods: right-padded masks, outputs that do
not depend on padding, determinism in eval mode, a KV cache that agrees with a full
forward, weights that survive a safetensors round-trip, a strict params model. These
checks say which of those a component breaks, one line per failure, so a plugin's test
suite can be one line per component::

    from chatnt_core.testing import check_component, check_encoder

    def test_my_encoder() -> None:
        check_encoder(MyEncoder(MyParams())).raise_for_failures()

    def test_registered() -> None:  # through the installed entry point and the factory
        check_component(("encoder", "my-encoder"), {"size": 8},
                        BuildContext(modality=Modality.DNA)).raise_for_failures()

Entry points: :func:`check_encoder`, :func:`check_projection`, :func:`check_decoder`,
:func:`check_params_model` and :func:`check_component`. Each returns a
:class:`ConformanceReport`; ``print(report)`` lists every check. The check names are the
keys of ``ENCODER_CHECKS``, ``PROJECTION_CHECKS``, ``DECODER_CHECKS`` and
``PARAMS_CHECKS``; pass some as ``skip=`` to leave them out (they show as skipped).

Nothing here imports pytest: the kit runs anywhere, pytest or not.
"""

from chatnt_core.testing._common import DEFAULT_ATOL, DEFAULT_RTOL
from chatnt_core.testing.component import check_component
from chatnt_core.testing.decoder import DECODER_CHECKS, DEFAULT_TEXTS, check_decoder
from chatnt_core.testing.encoder import (
    DEFAULT_SEQUENCES,
    ENCODER_CHECKS,
    check_encoder,
    default_sequences,
)
from chatnt_core.testing.params import PARAMS_CHECKS, check_params_model
from chatnt_core.testing.projection import PROJECTION_CHECKS, check_projection
from chatnt_core.testing.report import (
    CheckFailed,
    CheckResult,
    CheckSkipped,
    ConformanceReport,
)

__all__ = [
    "DECODER_CHECKS",
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "DEFAULT_SEQUENCES",
    "DEFAULT_TEXTS",
    "ENCODER_CHECKS",
    "PARAMS_CHECKS",
    "PROJECTION_CHECKS",
    "CheckFailed",
    "CheckResult",
    "CheckSkipped",
    "ConformanceReport",
    "check_component",
    "check_decoder",
    "check_encoder",
    "check_params_model",
    "check_projection",
    "default_sequences",
]
