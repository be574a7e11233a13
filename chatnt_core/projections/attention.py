"""Masked multi-head cross-attention and the input checks the projections share.

Shapes (see :mod:`chatnt_core.interfaces`): ``Lq`` query positions, ``Lk`` key/value
positions, ``H`` heads of ``Dh`` channels each. Masks are boolean, True = attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chatnt_core.errors import ConfigError
from chatnt_core.plugins import BuildContext


def resolve_head_dim(dim: int, num_heads: int, head_dim: int | None) -> int:
    """Pick the per-head width: explicit, or ``dim // num_heads`` when that is exact.

    An inexact split would silently shrink the attention width, so it is refused and the
    message says which knob to turn.
    """
    if num_heads < 1:
        raise ConfigError(f"num_heads must be >= 1, got {num_heads}")
    if head_dim is not None:
        if head_dim < 1:
            raise ConfigError(f"head_dim must be >= 1, got {head_dim}")
        return head_dim
    if dim % num_heads != 0:
        raise ConfigError(
            f"num_heads={num_heads} does not divide the width {dim}; pick num_heads that "
            "divides it or set head_dim explicitly"
        )
    return dim // num_heads


class MaskedCrossAttention(nn.Module):
    """Multi-head attention from ``Lq`` queries to ``Lk`` keys/values with a padding mask.

    The inner width ``num_heads * head_dim`` may differ from ``dim``; the output layer maps
    it back. Masked keys get exactly zero weight (boolean mask -> -inf before softmax), which
    is what makes the projections invariant to how much padding a batch carries.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = resolve_head_dim(dim, num_heads, head_dim)
        inner = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(dim, inner, bias=True)
        self.k_proj = nn.Linear(dim, inner, bias=True)
        self.v_proj = nn.Linear(dim, inner, bias=True)
        self.out_proj = nn.Linear(inner, dim, bias=True)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def forward(
        self,
        query: torch.Tensor,  # (B, Lq, D)
        kv: torch.Tensor,  # (B, Lk, D)
        kv_mask: torch.Tensor,  # (B, Lk) bool, True = attend
    ) -> torch.Tensor:
        """Return (B, Lq, D). Every query row must see at least one True key."""
        b, lq, _ = query.shape
        q = self._split(self.q_proj(query))  # (B, H, Lq, Dh)
        k = self._split(self.k_proj(kv))  # (B, H, Lk, Dh)
        v = self._split(self.v_proj(kv))  # (B, H, Lk, Dh)
        mask = kv_mask[:, None, None, :].expand(b, 1, lq, kv_mask.shape[1])  # (B, 1, Lq, Lk)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Lq, Dh)
        out = out.transpose(1, 2).reshape(b, lq, self.num_heads * self.head_dim)  # (B, Lq, H*Dh)
        return self.out_proj(out)  # (B, Lq, D)


def check_sequence_input(
    seq_embeddings: torch.Tensor,  # (B, N, D_enc)
    seq_mask: torch.Tensor,  # (B, N)
    input_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate an encoder batch; return it with padded slots zeroed, and a bool mask.

    Zeroing matters even though padding is masked: a NaN or inf in a padded slot would
    survive ``0 * x`` in attention or pooling and in the weight gradients.
    A row with no real token has nothing to summarise, so it is an error, not zeros.
    """
    if seq_embeddings.dim() != 3 or seq_embeddings.shape[-1] != input_dim:
        raise ValueError(
            f"expected sequence embeddings of shape (B, N, {input_dim}), "
            f"got {tuple(seq_embeddings.shape)}"
        )
    if seq_mask.shape != seq_embeddings.shape[:2]:
        raise ValueError(
            f"sequence mask shape {tuple(seq_mask.shape)} does not match embeddings "
            f"{tuple(seq_embeddings.shape[:2])}"
        )
    mask = seq_mask.to(torch.bool)
    empty = ~mask.any(dim=1)  # (B,)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"sequence mask is all padding in batch row(s) {rows}; every sequence needs at "
            "least one real token (check the encoder's tokenizer output)"
        )
    return torch.where(mask[..., None], seq_embeddings, 0.0), mask  # (B, N, D_enc), (B, N)


def check_question_input(
    question_embeddings: torch.Tensor,  # (B, Q, D)
    question_mask: torch.Tensor | None,  # (B, Q) or None = all real
    dim: int,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate question embeddings; return them with padded slots zeroed, and a bool mask.

    Unlike a sequence, a question row may be all padding: the latents are always among the
    keys, so attention stays well defined.
    """
    if question_embeddings.dim() != 3 or question_embeddings.shape[-1] != dim:
        raise ValueError(
            f"expected question embeddings of shape (B, Q, {dim}), "
            f"got {tuple(question_embeddings.shape)}"
        )
    b, q = question_embeddings.shape[:2]
    if b != batch:
        raise ValueError(f"question batch {b} != sequence batch {batch}")
    if question_mask is None:
        mask = torch.ones(b, q, dtype=torch.bool, device=question_embeddings.device)
    elif question_mask.shape != (b, q):
        raise ValueError(f"question mask shape {tuple(question_mask.shape)} != embeddings {(b, q)}")
    else:
        mask = question_mask.to(torch.bool)
    return torch.where(mask[..., None], question_embeddings, 0.0), mask  # (B, Q, D), (B, Q)


def require_dims(context: BuildContext, component: str) -> tuple[int, int, int]:
    """Return (D_enc, D, K) from a build context, or say which one the assembly left out."""
    input_dim, output_dim, num_latents = context.input_dim, context.output_dim, context.num_latents
    if input_dim is None or output_dim is None or num_latents is None:
        missing = [
            name
            for name, value in (
                ("input_dim", input_dim),
                ("output_dim", output_dim),
                ("num_latents", num_latents),
            )
            if value is None
        ]
        raise ConfigError(
            f"projection '{component}' needs {', '.join(missing)} in its BuildContext "
            "(the encoder width D_enc, the decoder width D and the number of latents K)"
        )
    if min(input_dim, output_dim, num_latents) < 1:
        raise ConfigError(
            f"projection '{component}' needs positive sizes, got "
            f"input_dim={input_dim}, output_dim={output_dim}, num_latents={num_latents}"
        )
    return input_dim, output_dim, num_latents
