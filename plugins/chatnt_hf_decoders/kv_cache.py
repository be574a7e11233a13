"""A KV cache layer with room reserved ahead, written in place while an answer is decoded.

transformers' ``DynamicLayer`` concatenates each new key and value onto the cache: every
decoding step reallocates and copies the whole cache of every layer (at batch 8 on the
SmolLM2 assembly, about a tenth of a step's time). :func:`reserve` copies the prompt's
cache once into buffers with room to spare; each step then writes its one position and
hands attention a view, and the room doubles when an answer outgrows it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are the filled part of larger buffers.

    ``keys``/``values`` are views of ``key_buffer``/``value_buffer`` (B, H, capacity, d)
    over the first ``length`` positions, so everything in transformers that reads them
    (sequence length, mask sizes) sees an ordinary dynamic layer. An answer longer than
    the room reserved doubles it.
    """

    key_buffer: torch.Tensor
    value_buffer: torch.Tensor
    length: int  # positions filled
    reserved_from: int  # positions filled when the room was reserved

    @classmethod
    def from_layer(cls, layer: DynamicLayer, extra: int) -> ReservedLayer:
        """A copy of ``layer`` (initialized, (B, H, L, d)) with ``extra`` free positions."""
        keys, values = layer.keys, layer.values
        assert keys is not None and values is not None
        reserved = cls()
        reserved.__dict__.update(
            {k: v for k, v in layer.__dict__.items() if k not in ("keys", "values")}
        )
        batch, heads, length, dim = keys.shape
        reserved.key_buffer = keys.new_empty((batch, heads, length + extra, dim))
        reserved.value_buffer = values.new_empty(
            (batch, values.shape[1], length + extra, values.shape[-1])
        )
        reserved.key_buffer[:, :, :length] = keys
        reserved.value_buffer[:, :, :length] = values
        reserved.length = reserved.reserved_from = length
        reserved._expose()
        return reserved

    def _expose(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[-2]
        end = self.length + new
        if end > self.key_buffer.shape[-2]:  # more than was reserved: double the room
            self.key_buffer = self._grown(self.key_buffer, end)
            self.value_buffer = self._grown(self.value_buffer, end)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def _grown(self, buffer: torch.Tensor, needed: int) -> torch.Tensor:
        """A copy of ``buffer``'s filled part with room for at least ``needed`` positions
        (twice the current room at least, so growing costs O(1) per step amortized)."""
        batch, heads, capacity, dim = buffer.shape
        room = max(needed, self.length + 2 * (capacity - self.reserved_from))
        grown = buffer.new_empty((batch, heads, room, dim))
        grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices``; the buffers are replaced by indexed copies, so a shallow
        copy of this layer (``generation.select_cache_rows``) leaves the original intact."""
        self.key_buffer = self.key_buffer[indices]
        self.value_buffer = self.value_buffer[indices]
        self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
        self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
        self._expose()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of positions to remove")
        self.length = max(0, self.length + tokens_to_remove)
        self._expose()


def reserve(past: Any, extra: int) -> Any:
    """A copy of the transformers cache ``past`` whose plain dynamic layers have room for
    ``extra`` more positions; ``past`` itself is not changed. Other layer kinds (sliding
    windows, linear attention) are shallow copies that keep growing their own way, and
    caches without ``layers`` are returned unchanged: reserving is only a speed-up."""
    layers = getattr(past, "layers", None)
    if layers is None or extra < 1:
        return past
    reserved = copy.copy(past)
    reserved.layers = [
        ReservedLayer.from_layer(layer, extra)
        if type(layer) in (DynamicLayer, ReservedLayer) and layer.is_initialized
        else copy.copy(layer)
        for layer in layers
    ]
    return reserved


def drop_tail(past: Any, tokens: int) -> bool:
    """Remove the last ``tokens`` positions of every layer of the transformers cache
    ``past`` in place; False (nothing changed) unless every layer is a plain or reserved
    dynamic layer holding more than ``tokens`` positions. Other layer kinds (sliding
    windows, linear attention) cannot always step back, so they are left alone."""
    layers = getattr(past, "layers", None)
    if tokens < 1 or not layers:
        return False
    if not all(type(layer) in (DynamicLayer, ReservedLayer) for layer in layers):
        return False
    if any(not layer.is_initialized or layer.get_seq_length() <= tokens for layer in layers):
        return False
    for layer in layers:
        layer.crop(-tokens)
    return True
