"""LoRA adapters as two plain products per layer while an answer is decoded.

Every answer token comes after the row's sequences, so while a batch decodes, the gate of
each row (``adapter_gate``) is one fixed value: 1 for rows holding a sequence, 0 for the
others. When it is the same for every row, each adapted layer computes
``W x + g * s * B (A x)`` with the same ``g * s`` at every step. ``peft`` gets there
through its general forward (adapter loops, dtype casts, dropout, the gate's hook): on
the SmolLM2 assembly (LoRA on four projections of 30 layers) that is a tenth of a
decoding step at batch 8. :func:`lean_adapters` has each adapted layer compute the
three products directly (rows-first, ``chatnt_core.inference.rows_first``), or only the base
product when the gate is 0.

Measured (quickstart checkpoint, batch 8, 40 tokens): ``peft`` 4.44 s, lean 4.07 s, and
the adapters folded into one weight per layer 3.66 s. Folding was not kept: it holds a
second copy of every adapted weight while decoding (106 MB here, gigabytes for a 7B
decoder), which pushed ``chatnt batch``'s peak memory from 1.31 to 1.48 GB.

Only plain LoRA on ``nn.Linear`` layers in eval mode is handled; with anything else
(DoRA, LoRA biases, dropout in training mode, several active adapters, mixed gates)
the block changes nothing and ``peft`` runs as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from chatnt_core.adapter_gate import gate_of
from chatnt_core.inference import rows_first

Forward = Callable[..., torch.Tensor]


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


def _lean_forward(layer: Any, gate_value: float) -> Forward | None:
    """The forward of one ``peft`` LoRA Linear at gate ``gate_value``, or None when the
    layer is not plain LoRA on an ``nn.Linear`` with one active adapter."""
    base = layer.base_layer
    if type(base) is not nn.Linear or getattr(layer, "merged", False):
        return None
    weight, bias = base.weight, base.bias
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    off = getattr(layer, "disable_adapters", False) or gate_value == 0.0 or not active
    if off:
        return lambda x, *args, **kwargs: rows_first.linear(x.to(weight.dtype), weight, bias)
    if len(active) > 1 or getattr(layer, "fan_in_fan_out", False):
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}):  # DoRA and other variants
        return None
    a, b, dropout = layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name]
    if b.bias is not None or (dropout.training and not isinstance(dropout, nn.Identity)):
        return None
    scale = layer.scaling[name] * gate_value

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = x.to(weight.dtype)
        down = rows_first.linear(x, a.weight, None)  # (..., r)
        return rows_first.linear(x, weight, bias) + rows_first.linear(down, b.weight, None) * scale

    return forward


@contextmanager
def lean_adapters(decoder: nn.Module, gate_value: float | None) -> Iterator[bool]:
    """Inside the block (without autograd), each LoRA layer of ``decoder`` computes its
    output directly at the uniform gate ``gate_value``; yields whether it does (False:
    no adapters, a gate that is not uniform, autograd on, or a layer it cannot handle)."""
    layers = [] if gate_value is None or torch.is_grad_enabled() else _lora_layers(decoder)
    lean: list[tuple[nn.Module, Forward]] = []
    for layer in layers:
        forward = _lean_forward(layer, float(gate_value or 0.0))
        if forward is None:
            lean = []
            break
        lean.append((layer, forward))
    for layer, forward in lean:
        layer.forward = forward
    try:
        yield bool(lean)
    finally:
        for layer, _ in lean:
            del layer.forward
