"""chatnt-kmer-encoder: a DNA encoder with one learned vector per non-overlapping k-mer.

A sequence is cut into k-mers, each k-mer is looked up in a learned table, and a width-3
convolution lets every token see its two neighbours. Small enough to read in one sitting,
it has every part a real encoder plugin has: a params model, an Encoder subclass, a
factory and a hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import torch
from chatnt_core import Encoder, EncoderOutput, EncoderTokens, Modality, hookimpl
from chatnt_core.errors import ConfigError, InvalidSequenceError
from chatnt_core.hookspecs import Register
from chatnt_core.plugins import BuildContext
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

__version__ = "0.1.0"

PAD_ID, UNK_ID = 0, 1  # k-mer ids start at 2


class KmerParams(BaseModel):
    """The `params:` block of a `kmer-embedding` encoder."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key in the YAML is an error

    k: int = Field(default=3, ge=1, le=6, description="letters per token")
    embed_dim: int = Field(default=16, ge=1, description="D_enc, the embedding width")
    max_tokens: int = Field(default=512, ge=1, description="longest sequence, in tokens")
    seed: int = Field(default=0, description="seed for the initial weights")


class KmerEncoder(Encoder):
    """Token = k letters; a k-mer with a letter other than ACGT, or a short tail, is UNK."""

    def __init__(self, params: KmerParams) -> None:
        super().__init__()
        self.modality = Modality.DNA
        self.embed_dim = params.embed_dim
        self.max_tokens = params.max_tokens
        self.k = params.k
        kmers = ("".join(letters) for letters in product("ACGT", repeat=params.k))
        self.vocab = {kmer: i + 2 for i, kmer in enumerate(kmers)}
        with torch.random.fork_rng(devices=[]):  # same seed, same weights; global RNG untouched
            torch.manual_seed(params.seed)
            self.embedding = nn.Embedding(len(self.vocab) + 2, params.embed_dim)
            self.mix = nn.Conv1d(params.embed_dim, params.embed_dim, kernel_size=3, padding=1)
            self.norm = nn.LayerNorm(params.embed_dim)

    def tokenize(self, sequences: Sequence[str]) -> EncoderTokens:
        rows = []
        for sequence in sequences:
            chunks = [sequence[i : i + self.k].upper() for i in range(0, len(sequence), self.k)]
            if len(chunks) > self.max_tokens:
                raise InvalidSequenceError(
                    f"a {len(sequence)}-letter sequence needs {len(chunks)} tokens, more than "
                    f"max_tokens={self.max_tokens}: shorten it or raise max_tokens"
                )
            rows.append([self.vocab.get(chunk, UNK_ID) for chunk in chunks])
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)  # (B, N)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)  # right padding
        return EncoderTokens(input_ids=input_ids, mask=input_ids != PAD_ID)  # mask (B, N)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
        keep = mask[..., None].to(self.embedding.weight.dtype)  # (B, N, 1)
        x = self.embedding(input_ids) * keep  # (B, N, D_enc), zero at padding
        # Padding is zero before the convolution, so the last real token sees the same zero
        # neighbour in a padded batch as at the end of the sequence alone: padding never
        # changes a real token's output (the conformance suite checks exactly this).
        x = x + self.mix(x.transpose(1, 2)).transpose(1, 2)  # (B, N, D_enc)
        return EncoderOutput(embeddings=self.norm(x) * keep, mask=mask)


def build_kmer_encoder(params: KmerParams, context: BuildContext) -> KmerEncoder:
    """The factory chatnt calls with validated params and the slot being filled."""
    if context.modality is not Modality.DNA:
        raise ConfigError("kmer-embedding encodes DNA only: configure it under 'encoders.dna'")
    return KmerEncoder(params)


@hookimpl
def register_encoders(register: Register) -> None:
    """Tell chatnt the encoder's config name, factory and params model."""
    register("kmer-embedding", build_kmer_encoder, KmerParams)
