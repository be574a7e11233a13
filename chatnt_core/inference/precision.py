"""Inference precision: the decoder's weights in float32 (the default) or bfloat16.

Decoding a small batch reads every decoder weight once per step, so weights half the size
make a step faster, on CPUs that compute in bfloat16 natively (AVX512-BF16 or AMX: AMD
Zen 4 and later, Intel Sapphire Rapids and later) and on GPUs. On a Zen 5 EPYC (2
threads) the quickstart checkpoint evaluated the demo test set 1.85x faster than in
float32, with the same metrics within 0.006, but only 89% of the answers word for word
the same (GC fractions moved by a few hundredths, phrasings swapped; ``bench/precision.py``
prints these figures). On CPUs without native bfloat16 the products are emulated and
several times slower (autocast ran at 0.14x float32 on an AVX2 EPYC). So the weights stay
as the checkpoint's config loads them (float32 unless its decoder sets a ``dtype``) and
bfloat16 is asked for: ``--precision bf16`` on ``chatnt ask``, ``chat``, ``batch``,
``serve`` and ``evaluate``, ``ChatNT.from_pretrained(path, precision="bf16")``
(``--precision fp32`` widens a decoder its config loads in bfloat16).
A ``chatnt batch`` output file holds one precision: resuming it in the other is refused.

Only the decoder changes: the encoder and projection are a small share of the work, and
their outputs (float32) are cast as the decoder reads them. Scores (P(yes), answer
log-likelihoods) are computed in float32 from the bfloat16 logits. Calibrators fitted in
float32 are applied as they are; the probabilities move by rounding only.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from chatnt_core.errors import ConfigError

if TYPE_CHECKING:
    from chatnt_core.model import ChatNTModel


class Precision(str, Enum):
    """The decoder's weight precision at inference (a CLI option's choices)."""

    FP32 = "fp32"
    BF16 = "bf16"


def as_precision(value: str | Precision) -> Precision:
    """``value`` as a :class:`Precision`, or a one-line error naming the choices."""
    try:
        return Precision(value)
    except ValueError:
        choices = ", ".join(p.value for p in Precision)
        raise ConfigError(f"unknown precision '{value}': use one of {choices}") from None


def native_bfloat16() -> bool:
    """Whether this machine's CPU computes in bfloat16 natively (oneDNN's own test)."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def set_precision(model: ChatNTModel, precision: str | Precision) -> ChatNTModel:
    """Cast ``model``'s decoder weights to ``precision`` in place (the encoder and the
    projection stay as they are); returns ``model``. For inference: training keeps
    float32 master weights (``precision: bf16`` in a training config autocasts).

    Parameters only: buffers such as the rotary embedding's frequencies stay in float32
    (rounded to bfloat16 they would shift every position's angle)."""
    import torch  # here: the CLI imports this module for its option, and stays torch-free

    dtype = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}[as_precision(precision)]
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            if parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype)
    return model


def precision_of(model: ChatNTModel) -> Precision:
    """The precision ``model``'s decoder weights are held in: bf16 when they all are
    bfloat16 (cast, or loaded so by the config), else fp32."""
    import torch

    dtypes = {p.dtype for p in model.decoder.parameters() if p.is_floating_point()}
    return Precision.BF16 if dtypes == {torch.bfloat16} else Precision.FP32
