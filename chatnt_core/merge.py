"""Put projected sequence vectors into the prompt: one masked scatter, count checked.

The released ChatNT code found placeholders by index arithmetic and clamped ids that fell
out of range. Here the placeholder rows are found by id, their number must equal
K x (tag occurrences), and ``masked_scatter`` fills them in row-major order - the order in
which ``chatnt_core.batching`` lists occurrences.
"""

from __future__ import annotations

import torch

from chatnt_core.errors import PlaceholderCountError


def merge_sequence_embeddings(
    token_embeddings: torch.Tensor,  # (B, T, D)
    input_ids: torch.Tensor,  # (B, T)
    projected: torch.Tensor,  # (O, K, D)
    placeholder_token_id: int,
) -> torch.Tensor:
    """Return (B, T, D) with the placeholder rows replaced by the projected vectors."""
    placeholder_mask = input_ids == placeholder_token_id  # (B, T)
    found = int(placeholder_mask.sum())
    expected = projected.shape[0] * projected.shape[1]
    if found != expected:
        raise PlaceholderCountError(
            f"the prompt has {found} placeholder positions but {projected.shape[0]} sequence "
            f"tag(s) x K={projected.shape[1]} = {expected} projected vectors; every tag must "
            "expand to exactly K placeholder tokens"
        )
    if expected == 0:
        return token_embeddings
    mask = placeholder_mask.unsqueeze(-1).expand_as(token_embeddings)  # (B, T, D)
    return token_embeddings.masked_scatter(mask, projected.to(token_embeddings.dtype))
