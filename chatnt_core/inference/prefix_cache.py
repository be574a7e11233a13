"""The prompt prefix every row of a batch shares, run through a frozen decoder once.

With a chat template, every training prompt starts with the same tokens (the system
message and the opening of the user turn). When the decoder is frozen, their keys and
values never change, so they are computed once, without gradient, and each batch starts
from a copy of that cache: the decoder then runs (and back-propagates through) only the
part of each prompt that differs. Rows are left-padded; after the shared prefix is cut
out, each row's padding sits between the prefix and the rest, which the attention mask
hides and the position ids skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatnt_core.batching import IGNORE_INDEX
from chatnt_core.inference.encoding_cache import weights_version
from chatnt_core.interfaces import Decoder


def shared_prefix_length(
    input_ids: torch.Tensor,  # (B, T) left-padded
    attention_mask: torch.Tensor,  # (B, T) bool
    labels: torch.Tensor,  # (B, T)
    placeholder_token_id: int,
) -> int:
    """Real tokens every row starts with, before any placeholder and any answer.

    The prefix stops one token before the earliest answer token, so the position that
    predicts the first answer token is always computed with the rest of the row.
    """
    pads = (~attention_mask).sum(dim=1)  # (B,)
    lengths = attention_mask.sum(dim=1)  # (B,)
    width = int(lengths.min())
    if width < 2:
        return 0
    columns = torch.arange(width, device=input_ids.device)
    index = pads[:, None] + columns[None, :]  # (B, width)
    real = input_ids.gather(1, index)  # (B, width) each row's first real tokens
    row_labels = labels.gather(1, index)
    same = (real == real[:1]).all(dim=0) & (real[0] != placeholder_token_id)  # (width,)
    # the token after a prefix position must not be an answer token, and the last real
    # token of the shortest row always stays with the rest
    quiet_next = (row_labels[:, 1:] == IGNORE_INDEX).all(dim=0)  # (width - 1,)
    same &= torch.cat([quiet_next, quiet_next.new_zeros(1)])
    breaks = (~same).nonzero()
    return int(breaks[0]) if len(breaks) else width - 1


def drop_prefix(tensor: torch.Tensor, attention_mask: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, T, ...) -> (B, T - prefix, ...): each row without its first ``prefix`` real tokens."""
    width = attention_mask.shape[1]
    pads = (~attention_mask).sum(dim=1, keepdim=True)  # (B, 1)
    columns = torch.arange(width - prefix, device=tensor.device)[None, :]  # (1, T - P)
    index = torch.where(columns < pads, columns, columns + prefix)  # (B, T - P)
    if tensor.dim() == 3:
        return tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[2]))
    return tensor.gather(1, index)


def frozen_columns(input_ids: torch.Tensor, placeholder_token_id: int, limit: int) -> int:
    """Leading columns of (B, T) ids that hold no placeholder in any row, at most ``limit``.

    Their decoder states do not depend on anything trained, so with a frozen decoder they
    can run without gradient.
    """
    has_placeholder = (input_ids == placeholder_token_id).any(dim=0).nonzero()  # (n, 1)
    first = int(has_placeholder[0]) if len(has_placeholder) else input_ids.shape[1]
    return max(0, min(first, limit))


@dataclass
class _Entry:
    key: tuple[Any, ...]
    cache: Any  # the decoder's own cache object for batch size 1


class PrefixCache:
    """The most recent shared prefix's cache (batch 1), keyed by ids, weights and autocast."""

    def __init__(self) -> None:
        self._entry: _Entry | None = None

    def repeated(self, decoder: Decoder, prefix_ids: torch.Tensor, batch_size: int) -> Any:
        """A cache for ``batch_size`` rows that already holds ``prefix_ids`` (P,)."""
        autocast = torch.is_autocast_enabled(prefix_ids.device.type)
        key = (tuple(prefix_ids.tolist()), weights_version(decoder), autocast)
        if self._entry is None or self._entry.key != key:
            with torch.no_grad():
                ids = prefix_ids[None, :]  # (1, P)
                mask = torch.ones_like(ids, dtype=torch.bool)
                positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
                out = decoder(
                    decoder.embed_tokens(ids), mask, positions, use_cache=True, logits_to_keep=1
                )
            self._entry = _Entry(key, out.past_key_values)
        return decoder.repeat_cache(self._entry.cache, batch_size)

    def clear(self) -> None:
        self._entry = None
