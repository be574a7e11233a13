"""``char-transformer``: a small character-level transformer encoder, trained from scratch.

One token per sequence letter plus a leading ``<cls>``. Vocabulary: ``<pad>`` = 0,
``<unk>`` = 1, ``<cls>`` = 2, then the modality's alphabet in sorted order. Input is
upper-cased; letters outside the alphabet map to ``<unk>``. Architecture: learned token
and position embeddings, pre-LayerNorm blocks (self-attention with a key-padding mask,
then a GELU MLP, each with a residual connection) and a final LayerNorm. Padding never
changes the outputs at real positions; outputs at padded positions are zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from chatnt_core.errors import ConfigError, InvalidSequenceError
from chatnt_core.interfaces import Encoder, EncoderOutput, EncoderTokens
from chatnt_core.modality import ALPHABETS, Modality
from chatnt_core.plugins import BuildContext

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
CLS_TOKEN = "<cls>"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN)
PAD_ID, UNK_ID, CLS_ID = 0, 1, 2


class CharTransformerParams(BaseModel):
    """The ``params:`` block of a ``char-transformer`` encoder."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(default=32, ge=1, description="embedding width D_enc")
    num_layers: int = Field(default=2, ge=1, description="number of transformer blocks")
    num_heads: int = Field(default=4, ge=1, description="attention heads; must divide hidden_size")
    ffn_dim: int | None = Field(
        default=None, ge=1, description="MLP width; default 4 * hidden_size"
    )
    max_tokens: int = Field(
        default=1024, ge=2, description="longest input in tokens, <cls> included (sequence + 1)"
    )
    conv_kernel: int = Field(
        default=0,
        ge=0,
        description="odd width of a masked 1-D convolution over the embeddings before the "
        "transformer blocks (0 = none); it learns short motifs far faster from scratch",
    )
    seed: int = Field(default=0, description="seed for the initial weights")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> CharTransformerParams:
        if self.conv_kernel and self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (or 0), got {self.conv_kernel}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})"
            )
        return self


def build_vocab(modality: Modality) -> dict[str, int]:
    """Token -> id: the three special tokens, then the sorted alphabet of the modality."""
    tokens = [*SPECIAL_TOKENS, *sorted(ALPHABETS[modality])]
    return {token: i for i, token in enumerate(tokens)}


def letter_ids(sequence: str, vocab: dict[str, int], limit: int, modality: Modality) -> list[int]:
    """Upper-cased letters -> ids (``<unk>`` for letters outside ``vocab``), at most ``limit``."""
    if len(sequence) > limit:
        raise InvalidSequenceError(
            f"sequence of length {len(sequence)} is longer than the {modality} encoder's "
            f"limit of {limit} letters: shorten it or raise max_tokens"
        )
    return [vocab.get(ch, UNK_ID) for ch in sequence.upper()]


def check_input_width(input_ids: torch.Tensor, max_tokens: int) -> int:
    """The width N of a (B, N) id batch; raises if it exceeds ``max_tokens``."""
    length = int(input_ids.shape[1])
    if length > max_tokens:
        raise InvalidSequenceError(
            f"encoder input of {length} tokens exceeds max_tokens={max_tokens}"
        )
    return length


class _SelfAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape  # (B, N, D_enc)
        head_dim = width // self.num_heads
        # (B, N, 3D) -> 3 x (B, H, N, D/H)
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, head_dim).unbind(dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        # Key-padding mask (B, 1, 1, N): every query attends to real keys only; <cls> is
        # always real, so no row is fully masked.
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        out: torch.Tensor = self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return out


class _Block(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.attn = _SelfAttention(hidden_size, num_heads)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, hidden_size)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.mlp(self.mlp_norm(x))


class CharTransformerEncoder(Encoder):
    """A character-level transformer encoder for one modality."""

    def __init__(self, modality: Modality, params: CharTransformerParams | None = None) -> None:
        super().__init__()
        params = params or CharTransformerParams()
        self.modality = Modality(modality)
        self.embed_dim = params.hidden_size
        self.max_tokens = params.max_tokens
        self.vocab = build_vocab(self.modality)
        ffn_dim = params.ffn_dim or 4 * params.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            self.token_embedding = nn.Embedding(len(self.vocab), params.hidden_size)
            self.position_embedding = nn.Embedding(params.max_tokens, params.hidden_size)
            # Letters at unit scale, positions small: at initialisation the output depends
            # mostly on the sequence, so a model trained from scratch starts from features
            # that tell sequences apart instead of collapsing onto the position signal.
            nn.init.normal_(self.token_embedding.weight, std=1.0)
            nn.init.normal_(self.position_embedding.weight, std=0.02)
            self.blocks = nn.ModuleList(
                _Block(params.hidden_size, params.num_heads, ffn_dim)
                for _ in range(params.num_layers)
            )
            self.final_norm = nn.LayerNorm(params.hidden_size)
            self.conv: nn.Conv1d | None = None
            if params.conv_kernel:
                width = params.hidden_size
                self.conv = nn.Conv1d(width, width, params.conv_kernel, padding="same")

    def token_ids(self, sequence: str) -> list[int]:
        """One sequence -> ids, ``<cls>`` first; raises if it does not fit."""
        return [CLS_ID, *letter_ids(sequence, self.vocab, self.max_tokens - 1, self.modality)]

    def tokenize(self, sequences: Sequence[str]) -> EncoderTokens:
        return EncoderTokens.right_padded([self.token_ids(s) for s in sequences], PAD_ID)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
        length = check_input_width(input_ids, self.max_tokens)
        mask = mask.bool()
        positions = torch.arange(length, device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)[None]
        if self.conv is not None:
            # Zero the padding first, so a real position next to it sees exactly what the
            # convolution's own zero padding would show for the sequence alone.
            x = x.masked_fill(~mask[..., None], 0.0)
            x = x + F.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2))  # (B, N, D_enc)
        for block in self.blocks:
            x = block(x, mask)
        x = self.final_norm(x).masked_fill(~mask[..., None], 0.0)  # (B, N, D_enc)
        return EncoderOutput(embeddings=x, mask=mask)


def build_char_transformer(
    params: CharTransformerParams, context: BuildContext
) -> CharTransformerEncoder:
    """The registered factory: ``factory(params, context)``; needs ``context.modality``."""
    if context.modality is None:
        raise ConfigError(
            "char-transformer needs to know its modality: configure it under an encoder "
            "slot such as 'dna:'"
        )
    return CharTransformerEncoder(context.modality, params)
