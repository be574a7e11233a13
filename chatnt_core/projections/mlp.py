"""The LLaVA-style MLP projector, with mask-aware pooling to a fixed K outputs.

LLaVA maps every encoder token through a two-layer MLP and feeds all of them to the
decoder. A DNA sequence can have thousands of tokens, and the prompt reserves exactly K
placeholder positions per tag, so here the real tokens of each sequence are first averaged
into K contiguous chunks (adaptive average pooling that skips padding), then each chunk
mean goes through ``Linear -> GELU -> Linear``.

Why pool first, then MLP: (1) the MLP runs on K vectors instead of N (N can be ~2000),
and (2) the decoder sees the MLP's outputs directly. Averaging *after* the MLP would shrink
the spread of the vectors by an amount that depends on chunk size, i.e. on sequence
length, so the decoder's inputs would change scale from one sequence to the next. (Linear
maps commute with averaging; only the GELU makes the order matter.)

``pooling: max`` takes each chunk's element-wise maximum instead of its mean: for motif
detectors (ReLU match scores, e.g. the ``motif-cnn`` encoder) "is there a match in this
chunk" is the maximum, and a mean dilutes one 19-letter match among the chunk's letters.
``pooling: mean_max`` feeds both, side by side, to the MLP: composition (GC content) is
read best from the mean, site presence from the maximum.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from chatnt_core.interfaces import Projection
from chatnt_core.normalization import MaskedBatchNorm
from chatnt_core.plugins import BuildContext
from chatnt_core.projections.attention import check_sequence_input, require_dims


def chunk_mean_weights(mask: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """(B, N) bool mask -> (B, K, N) weights that average each chunk of real tokens.

    Real tokens are numbered 0..n-1 in order (wherever the padding sits). Chunk k covers
    numbers [floor(k n / K), max(floor((k + 1) n / K), floor(k n / K) + 1)) clipped to n,
    so no chunk is empty even when n < K (chunks then repeat tokens). Padding gets weight 0.
    """
    mask = mask.to(torch.bool)
    n = mask.sum(dim=1, keepdim=True)  # (B, 1)
    rank = mask.long().cumsum(dim=1) - 1  # (B, N): index among real tokens
    k = torch.arange(num_chunks, device=mask.device)[None, :]  # (1, K)
    start = (k * n) // num_chunks  # (B, K)
    end = torch.minimum(torch.maximum(((k + 1) * n) // num_chunks, start + 1), n)  # (B, K)
    rank = rank[:, None, :]  # (B, 1, N)
    inside = (rank >= start[..., None]) & (rank < end[..., None]) & mask[:, None, :]  # (B, K, N)
    counts = (end - start).clamp(min=1)  # (B, K)
    return inside.float() / counts[..., None].float()  # (B, K, N)


Pooling = Literal["mean", "max", "mean_max"]


def chunk_max(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, N, D) and (B, K, N) chunk weights -> (B, K, D) maxima over each chunk's tokens.

    One chunk at a time, so memory stays at one (B, N, D) mask rather than (B, K, N, D).
    """
    lowest = torch.finfo(embeddings.dtype).min
    chunks = [
        embeddings.masked_fill(weights[:, k, :, None] == 0, lowest).amax(dim=1)  # (B, D)
        for k in range(weights.shape[1])
    ]
    return torch.stack(chunks, dim=1)  # (B, K, D)


class MLPProjection(Projection):
    """Pool the real tokens into K chunks (mean or max), then ``Linear -> GELU -> Linear``."""

    uses_question = False

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_latents: int,
        hidden_dim: int | None = None,
        pooling: Pooling = "mean",
        normalize_output: bool = False,
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.num_latents = num_latents
        self.pooling = pooling
        hidden = hidden_dim or output_dim
        pooled_dim = 2 * input_dim if pooling == "mean_max" else input_dim
        self.fc1 = nn.Linear(pooled_dim, hidden, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, output_dim, bias=True)
        self.output_norm = MaskedBatchNorm(output_dim) if normalize_output else None

    def forward(
        self,
        seq_embeddings: torch.Tensor,  # (B, N, D_enc)
        seq_mask: torch.Tensor,  # (B, N) bool
        question_embeddings: torch.Tensor | None = None,  # ignored
        question_mask: torch.Tensor | None = None,  # ignored
    ) -> torch.Tensor:
        """(B, N, D_enc) + mask -> (B, K, D); a question, if given, is ignored."""
        seq_embeddings, mask = check_sequence_input(seq_embeddings, seq_mask, self.input_dim)
        weights = chunk_mean_weights(mask, self.num_latents).to(seq_embeddings.dtype)
        if self.pooling == "max":
            pooled = chunk_max(seq_embeddings, weights)  # (B, K, D_enc)
        elif self.pooling == "mean_max":
            mean = torch.bmm(weights, seq_embeddings)
            pooled = torch.cat([mean, chunk_max(seq_embeddings, weights)], dim=-1)  # (B, K, 2D)
        else:
            pooled = torch.bmm(weights, seq_embeddings)  # (B, K, D_enc)
        out: torch.Tensor = self.fc2(self.act(self.fc1(pooled)))  # (B, K, D)
        if self.output_norm is not None:
            out = self.output_norm(out)
        return out


class MLPParams(BaseModel):
    """Params of ``mlp``; widths and K come from the assembly."""

    model_config = ConfigDict(extra="forbid")

    hidden_dim: int | None = Field(
        default=None,
        ge=1,
        description="Hidden width of the two-layer MLP; default the decoder width.",
    )
    pooling: Pooling = Field(
        default="mean",
        description="How each of the K chunks of tokens is pooled: mean, element-wise max "
        "(for motif detectors such as motif-cnn), or mean_max (both, concatenated).",
    )
    normalize_output: bool = Field(
        default=False,
        description="Batch-normalise each output channel (running statistics at "
        "inference). Helps a decoder trained from scratch read the sequence: without it "
        "the outputs drift towards one constant vector for every sequence.",
    )


def build_mlp_projection(params: MLPParams, context: BuildContext) -> MLPProjection:
    """Factory registered as ``mlp``."""
    input_dim, output_dim, num_latents = require_dims(context, "mlp")
    return MLPProjection(
        input_dim,
        output_dim,
        num_latents,
        hidden_dim=params.hidden_dim,
        pooling=params.pooling,
        normalize_output=params.normalize_output,
    )
