"""Put projected sequence vectors into the prompt: one masked scatter, count checked.

The released ChatNT code found placeholders by index arithmetic and clamped ids that fell
out of range. Here the slot rows are found by id, their number must equal
K x (tag occurrences), and ``masked_scatter`` fills them in row-major order - the order in
which ``chatnt_core.batching`` lists occurrences. The published weights' layout (K vectors
inserted before a placeholder that stays) is the same scatter over K + 1 rows per tag whose
last row is left alone (``slot_mask``).
"""

from __future__ import annotations

from typing import Literal

import torch

from chatnt_core.errors import PlaceholderCountError

PlaceholderLayout = Literal["replace", "insert_before_kept"]


def slot_mask(
    input_ids: torch.Tensor,  # (B, T)
    placeholder_token_id: int,
    num_latents: int,
    layout: PlaceholderLayout = "replace",
) -> torch.Tensor:
    """(B, T) bool: the rows the projected vectors go to.

    ``replace``: every placeholder row. ``insert_before_kept``: each tag is K + 1
    placeholder rows, and the last of each group of K + 1 in a run is the kept placeholder
    (the published ChatNT's layout), so it is not a slot.
    """
    is_placeholder = input_ids == placeholder_token_id  # (B, T)
    if layout == "replace":
        return is_placeholder
    count = is_placeholder.long().cumsum(dim=-1)  # (B, T)
    run_start = torch.where(is_placeholder, 0, count).cummax(dim=-1).values  # (B, T)
    position = count - run_start  # 1-based position within a run of placeholders
    kept = is_placeholder & (position % (num_latents + 1) == 0)
    return is_placeholder & ~kept


def merge_sequence_embeddings(
    token_embeddings: torch.Tensor,  # (B, T, D)
    input_ids: torch.Tensor,  # (B, T)
    projected: torch.Tensor,  # (O, K, D)
    placeholder_token_id: int,
    layout: PlaceholderLayout = "replace",
) -> torch.Tensor:
    """Return (B, T, D) with the slot rows replaced by the projected vectors."""
    placeholder_mask = slot_mask(input_ids, placeholder_token_id, projected.shape[1], layout)
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
