"""LoRA adapters folded into their base weights while an answer is decoded.

Every answer token comes after the row's sequences, so while a batch decodes, the gate of
each row (``adapter_gate``) is one fixed value: 1 for rows holding a sequence, 0 for the
others. When it is the same for every row, each adapted layer computes
``W x + g * s * B (A x)`` with the same ``g`` at every step: one linear layer with the
weight ``W + g * s * B A``. ``peft`` runs three products and half a dozen small
operations per adapted layer instead, which on the SmolLM2 assembly (LoRA on four
projections of 30 layers) is about a fifth of a decoding step at batch 8.

:func:`adapters_folded` computes the folded weights once per decoding call (a few
milliseconds; they are dropped after it, so nothing goes stale when training updates the
adapters) and has each adapted layer run as one ``linear`` inside the block. The base
weights are never modified (``peft``'s own ``merge``/``unmerge`` would add and subtract
in place, and rounding would drift the frozen decoder a little on every call).

Only plain LoRA on ``nn.Linear`` layers in eval mode is folded; with anything else
(DoRA, LoRA biases, dropout in training mode, mixed gates) the block changes nothing and
the adapters run as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from chatnt_core import rows_first
from chatnt_core.adapter_gate import gate_of


def uniform_gate(decoder: nn.Module, gate: torch.Tensor) -> float | None:
    """The one value the (B, 1) row gate takes for every row, if it is uniform; 1.0 for
    ungated adapters (always on); None when the rows differ."""
    if gate_of(decoder) is None:
        return 1.0
    if gate.numel() == 0:
        return None
    first = float(gate.reshape(-1)[0])
    return first if bool((gate == first).all()) else None


def _lora_layers(decoder: nn.Module) -> list[nn.Module]:
    return [m for m in decoder.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def _folded_weight(
    layer: Any, gate_value: float
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of one ``peft`` LoRA Linear with its active adapters folded in, or
    None when the layer is not plain LoRA on an ``nn.Linear``."""
    base = layer.base_layer
    if type(base) is not nn.Linear or getattr(layer, "merged", False):
        return None
    if getattr(layer, "disable_adapters", False) or getattr(layer, "fan_in_fan_out", False):
        return base.weight, base.bias
    weight = base.weight
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}):  # DoRA and other variants
            return None
        a, b = layer.lora_A[name], layer.lora_B[name]
        dropout = layer.lora_dropout[name]
        if b.bias is not None or (dropout.training and not isinstance(dropout, nn.Identity)):
            return None
        if gate_value != 0.0:
            delta = b.weight @ a.weight  # (out, r) @ (r, in)
            weight = weight + delta.to(weight.dtype) * (layer.scaling[name] * gate_value)
    return weight, base.bias


@contextmanager
def adapters_folded(decoder: nn.Module, gate_value: float | None) -> Iterator[bool]:
    """Inside the block, each LoRA layer of ``decoder`` runs as one linear layer with its
    adapters folded in at the uniform gate ``gate_value``; yields whether it did (False:
    no adapters, a gate that is not uniform, or a layer it cannot fold)."""
    layers = _lora_layers(decoder) if gate_value is not None else []
    folded: list[tuple[Any, tuple[torch.Tensor, torch.Tensor | None]]] = []
    with torch.no_grad():
        for layer in layers:
            weights = _folded_weight(layer, float(gate_value or 0.0))
            if weights is None:
                folded = []
                break
            folded.append((layer, weights))
    for layer, (weight, bias) in folded:
        layer.forward = _linear(weight, bias)
    try:
        yield bool(folded)
    finally:
        for layer, _ in folded:
            del layer.forward


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            return nn.functional.linear(x.to(weight.dtype), weight, bias)
        return rows_first.linear(x.to(weight.dtype), weight, bias)

    return forward
