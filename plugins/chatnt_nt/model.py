"""The Nucleotide Transformer v2 layer stack, native PyTorch. Read bottom-up.

``NTv2Model``: token embedding -> ``num_layers`` pre-LayerNorm blocks -> final LayerNorm
(``emb_layer_norm_after`` in the published checkpoints). No learned position embeddings:
positions enter through rotary embeddings on queries and keys. No dropout: the published
models were trained without it (``hidden_dropout_prob`` and ``attention_probs_dropout_prob``
are 0).

Block (``NTv2Layer``), as in the published checkpoints::

    h = x + out(SelfAttention(LN_attn(x)))          q, k, v, out with bias
    y = h + W2(silu(a) * b),  [a | b] = W1(LN_ffn(h))   W1: D -> 2F, W2: F -> D, no bias

Attention: q scaled by head_dim^-0.5, rotary embeddings on q and k in the half-split
(``rotate_half``) style with frequencies 1/10000^(2j/head_dim) at positions 0..N-1, heads
split head-major, a key-padding mask. ``attention="sdpa"`` runs
``torch.nn.functional.scaled_dot_product_attention``; ``"manual"`` keeps the explicit
softmax (the benchmark compares them, the tests check they agree).

Shapes (see ``chatnt_core.interfaces`` for the glossary): B batch, N tokens, D hidden
(= D_enc), H heads, Dh = D / H head size, F GLU width (``intermediate_size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from chatnt_nt.tokenizer import PAD_ID, VOCAB_SIZE

AttentionImpl = Literal["sdpa", "manual"]
ROTARY_BASE = 10000.0


@dataclass(frozen=True)
class NTv2Config:
    """The architecture; field names follow config.json where one exists."""

    hidden_size: int  # D
    intermediate_size: int  # F, the GLU width (W1 has 2F rows)
    num_hidden_layers: int
    num_attention_heads: int  # H
    vocab_size: int = VOCAB_SIZE
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 2050  # only written back to config.json; rotary has no table

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# Published sizes (config.json of each InstaDeepAI/nucleotide-transformer-v2-*-multi-species
# checkpoint) plus ``tiny`` for tests. Depth/width decide the name: 50m and 100m differ in
# depth only.
PRESETS: dict[str, NTv2Config] = {
    "tiny": NTv2Config(32, 64, 2, 4),
    "50m": NTv2Config(512, 2048, 12, 16),
    "100m": NTv2Config(512, 2048, 22, 16),
    "250m": NTv2Config(768, 3072, 24, 16),
    "500m": NTv2Config(1024, 4096, 29, 16),
}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., Dh) -> (..., Dh): [x1 | x2] -> [-x2 | x1] (half-split, not interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_tables(
    length: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (N, Dh), for positions 0..N-1; computed in float32 then cast."""
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / ROTARY_BASE**exponents  # (Dh/2,)
    positions = torch.arange(length, device=device, dtype=torch.float32)  # (N,)
    angles = torch.outer(positions, inv_freq)  # (N, Dh/2)
    angles = torch.cat((angles, angles), dim=-1)  # (N, Dh): frequencies duplicated
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, H, N, Dh) rotated by position; cos/sin are (N, Dh) and broadcast."""
    return x * cos + rotate_half(x) * sin


class NTv2SelfAttention(nn.Module):
    def __init__(self, config: NTv2Config, attention: AttentionImpl) -> None:
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.attention = attention
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape  # (B, N, D)
        # head-major split of D: (B, N, H, Dh) -> (B, H, N, Dh)
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        batch, length, width = x.shape  # (B, N, D)
        head_dim = width // self.num_heads
        q = self._heads(self.query(x)) * head_dim**-0.5  # (B, H, N, Dh)
        k = self._heads(self.key(x))  # (B, H, N, Dh)
        v = self._heads(self.value(x))  # (B, H, N, Dh)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys = mask[:, None, None, :]  # (B, 1, 1, N): attend to real keys only
        if self.attention == "sdpa":
            # q is already scaled, hence scale=1.
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=1.0)
        else:
            scores = q @ k.transpose(-1, -2)  # (B, H, N, N)
            scores = scores.masked_fill(~keys, float("-inf"))
            attended = scores.softmax(dim=-1) @ v  # (B, H, N, Dh)
        merged = attended.transpose(1, 2).reshape(batch, length, width)  # (B, N, D)
        out: torch.Tensor = self.out(merged)
        return out


class NTv2FeedForward(nn.Module):
    """SwiGLU without biases: the first half of W1's output is the (SiLU) gate."""

    def __init__(self, config: NTv2Config) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, linear = self.w1(x).chunk(2, dim=-1)  # 2 x (B, N, F)
        out: torch.Tensor = self.w2(F.silu(gate) * linear)  # (B, N, D)
        return out


class NTv2Layer(nn.Module):
    def __init__(self, config: NTv2Config, attention: AttentionImpl) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = NTv2SelfAttention(config, attention)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = NTv2FeedForward(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask, cos, sin)  # (B, N, D)
        return x + self.ffn(self.ffn_norm(x))  # (B, N, D)


class NTv2Model(nn.Module):
    """Ids -> final, normalised token embeddings. Weights: ``chatnt_nt.checkpoint``."""

    def __init__(self, config: NTv2Config, attention: AttentionImpl = "sdpa") -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError("num_attention_heads must divide hidden_size")
        if config.head_dim % 2:
            raise ValueError("rotary embeddings need an even head size")
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            NTv2Layer(config, attention) for _ in range(config.num_hidden_layers)
        )
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def attention(self) -> AttentionImpl:
        first = self.layers[0].attn if len(self.layers) else None
        return first.attention if isinstance(first, NTv2SelfAttention) else "sdpa"

    def set_attention(self, attention: AttentionImpl) -> None:
        """Switch every layer between the SDPA and the explicit-softmax path."""
        for module in self.modules():
            if isinstance(module, NTv2SelfAttention):
                module.attention = attention

    def init_weights(self) -> None:
        """Random init in the ESM style: N(0, 0.02) matrices, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.word_embeddings.weight[PAD_ID].zero_()

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N) ids + (B, N) bool mask -> (B, N, D); padded rows are zero."""
        mask = mask.bool()
        x = self.word_embeddings(input_ids)  # (B, N, D)
        cos, sin = rotary_tables(input_ids.shape[1], self.config.head_dim, x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, mask, cos, sin)  # (B, N, D)
        out: torch.Tensor = self.final_norm(x).masked_fill(~mask[..., None], 0.0)
        return out
