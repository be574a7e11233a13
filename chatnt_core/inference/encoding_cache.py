"""Encoder outputs kept for reuse, keyed by encoder, weights version and sequence.

Two users: a ``ChatSession`` keeps one (unbounded) so a conversation encodes each sequence
once; the model keeps a small LRU one per encoder (``cache_size`` in the config) so a
frozen encoder skips sequences it has seen in earlier prompts.

The weights version is read from PyTorch's own bookkeeping: every in-place change to a
tensor (an optimizer step, ``load_state_dict``) bumps its ``_version`` counter, and moving
a module to another device or dtype gives its tensors new storage. So a cached row can
never outlive the weights that produced it, and checking costs one pass over the
parameter list, not a hash of the weights.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
from torch import nn


def weights_version(module: nn.Module) -> int:
    """A number that changes whenever any parameter or buffer of ``module`` changes."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return hash(tuple((t.data_ptr(), t._version, t.dtype) for t in tensors))


class EncodingCache:
    """(encoder, weights version, sequence) -> unpadded (n, D_enc) encoder rows."""

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be >= 1, or None for no limit")
        self.max_entries = max_entries
        self._rows: OrderedDict[tuple[str, int, str], torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, encoder: str, version: int, sequence: str) -> torch.Tensor | None:
        key = (encoder, version, sequence)
        rows = self._rows.get(key)
        if rows is None:
            self.misses += 1
            return None
        self.hits += 1
        self._rows.move_to_end(key)
        return rows

    def put(self, encoder: str, version: int, sequence: str, rows: torch.Tensor) -> None:
        self._rows[(encoder, version, sequence)] = rows.detach()
        self._rows.move_to_end((encoder, version, sequence))
        if self.max_entries is not None:
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()
