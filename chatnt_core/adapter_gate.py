"""Where the decoder's LoRA adapters act: only from the first sequence placeholder on.

Why: ChatNT's promise is a pretrained LLM that keeps all its English. LoRA adapters let a
frozen decoder learn to read the projected sequence vectors far faster than a projection
alone can push them in (the quickstart measures it), but adapters that act everywhere
change the answer to a plain English question too. Gated, they act only at positions at or
after a row's first placeholder: a conversation without a sequence runs the bare decoder
exactly, and so does every prompt position before the first sequence (which also keeps the
shared prompt prefix cacheable while the adapters train).

The gate is a 0/1 tensor, (B, T) for a pass over whole rows or (B, 1) for a generation
step, set around each decoder call with :meth:`AdapterGate.scope` and applied by a forward
hook on every adapter's up-projection (``lora_B``), which scales the adapter's output.
With no gate set the adapters are off: a call site that forgets to set one gets the bare
decoder, never adapters in a tag-free conversation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def placeholder_gate(input_ids: torch.Tensor, placeholder_token_id: int) -> torch.Tensor:
    """(B, T) ids -> (B, T) float: 1 at and after each row's first placeholder, else 0."""
    seen = (input_ids == placeholder_token_id).to(torch.int32).cumsum(dim=1)  # (B, T)
    return (seen > 0).to(torch.float32)


def row_gate(input_ids: torch.Tensor, placeholder_token_id: int) -> torch.Tensor:
    """(B, T) prompt ids -> (B, 1) float: 1 for rows holding any placeholder (new tokens)."""
    return (input_ids == placeholder_token_id).any(dim=1, keepdim=True).to(torch.float32)


class AdapterGate:
    """The gate of one decoder's adapters; see the module docstring."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.handles: list[Any] = []

    def attach(self, decoder: nn.Module) -> int:
        """Hook every ``lora_B`` module under ``decoder``; returns how many were hooked."""
        for name, module in decoder.named_modules():
            if name.endswith("lora_B") and isinstance(module, nn.ModuleDict):
                for adapter in module.values():
                    self.handles.append(adapter.register_forward_hook(self._scale))
        return len(self.handles)

    def _scale(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self.value is None:
            return output * 0.0  # adapters off: the bare decoder
        return output * self.value[..., None].to(output.dtype)  # (B, T, 1) or (B, 1, 1)

    @contextmanager
    def scope(self, gate: torch.Tensor | None) -> Iterator[None]:
        """Adapters scaled by ``gate`` ((B, T) or (B, 1)) for the calls inside."""
        previous, self.value = self.value, gate
        try:
            yield
        finally:
            self.value = previous


def gate_of(decoder: nn.Module) -> AdapterGate | None:
    """The decoder's adapter gate, if its adapters are gated."""
    gate = getattr(decoder, "adapter_gate", None)
    return gate if isinstance(gate, AdapterGate) else None


@contextmanager
def adapters_gated(decoder: nn.Module, gate: torch.Tensor | None) -> Iterator[None]:
    """``AdapterGate.scope`` when the decoder's adapters are gated; otherwise nothing."""
    adapter_gate = gate_of(decoder)
    if adapter_gate is None:
        yield
        return
    with adapter_gate.scope(gate):
        yield
