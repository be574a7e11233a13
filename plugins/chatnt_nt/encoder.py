"""``nucleotide-transformer-v2``: the DNA encoder of ChatNT, native PyTorch, no remote code.

Weights: the published Hugging Face checkpoints (``path`` = a local directory or a Hub id;
a real ``preset`` without ``path`` means ``InstaDeepAI/nucleotide-transformer-v2-{size}-
multi-species``), or a preset's architecture with random weights (``random_init``, always for
``preset: tiny``). Output: the final, LayerNorm-ed token embeddings (B, N, D_enc), ``<cls>``
first, padded rows zero. See ``chatnt_nt.model`` for the maths and ``chatnt_nt.tokenizer``
for the ids and the input rule (case, ``U``, IUPAC codes).

Long sequences: NT-v2 was trained on up to 2048 tokens (``<cls>`` included, ~12 kb), our
default ``max_tokens``. Longer input is never truncated silently; ``long_sequences`` decides:

* ``error`` (default): :class:`chatnt_core.errors.InvalidSequenceError` naming the length in
  tokens, the limit and the fix;
* ``chunk``: the *token* stream (so 6-mer boundaries stay where a whole-sequence
  tokenization puts them) is cut into windows of ``max_tokens - 1`` tokens; each window gets
  its own ``<cls>`` and runs on its own (no attention across windows); the rows are
  concatenated back into one row per sequence - the first window's ``<cls>`` row, then every
  token row in order - so a sequence of n tokens still gives n rows. More than
  ``max_chunks`` windows is the same error.

``tokenize`` returns the full token stream (one ``<cls>``); ``forward`` does the windowing, so
``encode`` and a direct ``forward`` on ``tokenize``'s output agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from chatnt_core.errors import ConfigError, InvalidSequenceError
from chatnt_core.interfaces import Encoder, EncoderOutput, EncoderTokens
from chatnt_core.modality import Modality
from chatnt_core.plugins import BuildContext
from chatnt_nt import checkpoint
from chatnt_nt.model import PRESETS, AttentionImpl, NTv2Model
from chatnt_nt.tokenizer import CLS_ID, PAD_ID, NTTokenizer

NAME = "nucleotide-transformer-v2"
JAX_EPS = 1e-5  # the LayerNorm epsilon the JAX models were trained with
RANDOM_INIT_EPS = JAX_EPS  # the HF configs say 1e-12

Preset = Literal["tiny", "50m", "100m", "250m", "500m"]


class NucleotideTransformerParams(BaseModel):
    """The ``params:`` block of a ``nucleotide-transformer-v2`` encoder."""

    model_config = ConfigDict(extra="forbid")

    preset: Preset | None = Field(
        default=None,
        description="model size; without 'path' a real size downloads "
        "InstaDeepAI/nucleotide-transformer-v2-{size}-multi-species, 'tiny' is random only",
    )
    path: str | None = Field(
        default=None,
        description="local checkpoint directory or Hub id; its config.json decides the sizes",
    )
    random_init: bool = Field(
        default=False,
        description="build the preset's architecture with random (seeded) weights; no download",
    )
    layer_norm_eps: float | None = Field(
        default=None,
        gt=0,
        description=f"LayerNorm epsilon; default {JAX_EPS}, what the published weights were "
        "trained with in JAX (their Hugging Face config.json files say 1e-12, which is not "
        "used unless given here)",
    )
    max_tokens: int = Field(
        default=2048, ge=2, description="tokens per forward window, <cls> included"
    )
    long_sequences: Literal["error", "chunk"] = Field(
        default="error",
        description="over max_tokens: 'error', or 'chunk' into windows of max_tokens - 1 "
        "tokens, each with its own <cls>, embeddings concatenated",
    )
    max_chunks: int = Field(default=8, ge=1, description="most windows per sequence when chunking")
    attention: AttentionImpl = Field(
        default="sdpa",
        description="'sdpa' (torch scaled_dot_product_attention) or 'manual' (explicit softmax)",
    )
    seed: int = Field(default=0, description="seed for random_init weights")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag, commit)")
    local_files_only: bool = Field(
        default=False, description="use the local Hugging Face cache only, never the network"
    )

    @model_validator(mode="after")
    def _consistent(self) -> NucleotideTransformerParams:
        if self.preset is None and self.path is None:
            raise ValueError("give a 'preset' (tiny, 50m, 100m, 250m, 500m) or a 'path'")
        if self.preset == "tiny":
            if "random_init" in self.model_fields_set and not self.random_init:
                raise ValueError("preset 'tiny' has no published weights; it is random_init only")
            self.random_init = True
        if self.random_init:
            if self.preset is None:
                raise ValueError("random_init needs a 'preset' to take the sizes from")
            if self.path is not None:
                raise ValueError(
                    "random_init builds the preset with random weights; drop 'path' (or "
                    "random_init to load the checkpoint)"
                )
            if self.revision is not None:
                raise ValueError("'revision' selects downloaded weights; random_init has none")
        return self

    def checkpoint_path(self) -> str | None:
        """Where the weights come from: ``path``, the preset's Hub id, or None (random)."""
        if self.random_init:
            return None
        if self.path is not None:
            return self.path
        return checkpoint.HUB_ID_TEMPLATE.format(size=self.preset)


class NucleotideTransformerEncoder(Encoder):
    """NT-v2 as a chatnt DNA encoder: (B, N) ids -> (B, N, D_enc) final embeddings.

    Input rule (``chatnt_nt.tokenizer``): lower case is upper-cased, RNA ``U`` is read as
    ``T``, IUPAC ambiguity codes (R Y S W K M B D H V) become ``N``; other characters raise.
    Long sequences (over ``max_tokens`` tokens, ``<cls>`` included) are never truncated:
    ``long_sequences="error"`` raises InvalidSequenceError; ``"chunk"`` runs windows of
    ``max_tokens - 1`` tokens cut from the token stream, each with its own ``<cls>``, and
    concatenates their rows (first ``<cls>`` kept), up to ``max_chunks`` windows.
    """

    def __init__(self, model: NTv2Model, params: NucleotideTransformerParams) -> None:
        super().__init__()
        self.modality = Modality.DNA
        self.model = model
        self.embed_dim = model.config.hidden_size
        self.max_tokens = params.max_tokens
        self.long_sequences = params.long_sequences
        self.max_chunks = params.max_chunks
        self.tokenizer = NTTokenizer()
        model.set_attention(params.attention)

    @classmethod
    def from_params(cls, params: NucleotideTransformerParams) -> NucleotideTransformerEncoder:
        """Build random (seeded, global RNG untouched) or load and validate a checkpoint."""
        source = params.checkpoint_path()
        if source is None:
            assert params.preset is not None  # guaranteed by the params validator
            eps = params.layer_norm_eps or RANDOM_INIT_EPS
            config = dataclasses.replace(PRESETS[params.preset], layer_norm_eps=eps)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(params.seed)
                model = NTv2Model(config)
                model.init_weights()
            return cls(model, params)
        directory = checkpoint.resolve_directory(source, params.revision, params.local_files_only)
        # the published configs' 1e-12 is not what the weights were trained with (1e-5)
        config = checkpoint.read_config(directory, params.layer_norm_eps or JAX_EPS)
        if params.preset is not None and params.preset != "tiny":
            expected = PRESETS[params.preset]
            sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
            if any(getattr(config, s) != getattr(expected, s) for s in sizes):
                raise ConfigError(
                    f"{source}: its config.json is not the {params.preset} size "
                    f"(hidden {config.hidden_size}, {config.num_hidden_layers} layers); drop "
                    "'preset' to let the checkpoint decide, or fix 'path'"
                )
        with torch.device("meta"):
            model = NTv2Model(config)  # no memory until the checkpoint's tensors arrive
        checkpoint.load_weights(model, directory)
        return cls(model, params)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json + model.safetensors in the published NT-v2 layout."""
        return checkpoint.save_pretrained(self.model, directory)

    # ---- tokens --------------------------------------------------------------------------

    def _windows_needed(self, num_tokens: int) -> int:
        """Windows of ``max_tokens - 1`` body tokens for a row of ``num_tokens`` (cls incl.)."""
        return max(1, math.ceil((num_tokens - 1) / (self.max_tokens - 1)))

    def _check_length(self, num_tokens: int, nucleotides: int | None = None) -> None:
        if num_tokens <= self.max_tokens:
            return
        what = f"DNA sequence of {nucleotides} nt" if nucleotides is not None else "DNA input"
        if self.long_sequences == "error":
            raise InvalidSequenceError(
                f"{what} is {num_tokens} tokens (<cls> included), over the {NAME} limit of "
                f"max_tokens={self.max_tokens}: shorten it, or set 'long_sequences: chunk' to "
                f"encode it in windows of {self.max_tokens - 1} tokens (at most "
                f"max_chunks={self.max_chunks})"
            )
        windows = self._windows_needed(num_tokens)
        if windows > self.max_chunks:
            raise InvalidSequenceError(
                f"{what} is {num_tokens} tokens (<cls> included) and needs {windows} windows of "
                f"{self.max_tokens - 1} tokens, over max_chunks={self.max_chunks}: shorten it "
                "or raise max_chunks"
            )

    def tokenize(self, sequences: Sequence[str]) -> EncoderTokens:
        """Right-padded (B, N) ids, one ``<cls>`` per row; N may exceed max_tokens if chunking."""
        rows = []
        for sequence in sequences:
            ids = self.tokenizer.token_ids(sequence)
            self._check_length(len(ids), len(sequence))
            rows.append(ids)
        return self.tokenizer.pad(rows)

    # ---- forward -------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
        mask = mask.bool()
        lengths = mask.sum(dim=1)  # (B,)
        longest = int(lengths.max()) if lengths.numel() else 0
        self._check_length(longest)
        if longest <= self.max_tokens:
            return EncoderOutput(embeddings=self.model(input_ids, mask), mask=mask)
        return EncoderOutput(embeddings=self._chunked(input_ids, lengths), mask=mask)

    def _chunked(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Run each row's windows (all rows' windows in one batch) and stitch them back."""
        step = self.max_tokens - 1
        windows: list[torch.Tensor] = []
        places: list[tuple[int, int, int]] = []  # (row, first body index, body tokens)
        cls = input_ids.new_tensor([CLS_ID])
        for row, length in enumerate(lengths.tolist()):
            body = input_ids[row, 1:length]  # (n - 1,) right padding, <cls> first
            for start in range(0, max(len(body), 1), step):
                piece = body[start : start + step]
                windows.append(torch.cat((cls, piece)))
                places.append((row, start, len(piece)))
        width = max(len(w) for w in windows)
        ids = input_ids.new_full((len(windows), width), PAD_ID)  # (W, <= max_tokens)
        window_mask = torch.zeros_like(ids, dtype=torch.bool)  # (W, <= max_tokens)
        for i, window in enumerate(windows):
            ids[i, : len(window)] = window
            window_mask[i, : len(window)] = True
        out = self.model(ids, window_mask)  # (W, <= max_tokens, D)
        stitched = out.new_zeros((*input_ids.shape, out.shape[-1]))  # (B, N, D)
        for i, (row, start, count) in enumerate(places):
            if start == 0:
                stitched[row, 0] = out[i, 0]  # the first window's <cls> row stands for all
            stitched[row, 1 + start : 1 + start + count] = out[i, 1 : 1 + count]
        return stitched


def build_nucleotide_transformer(
    params: NucleotideTransformerParams, context: BuildContext
) -> NucleotideTransformerEncoder:
    """The registered factory: ``factory(params, context)``; fills the DNA slot only."""
    if context.modality not in (None, Modality.DNA):
        raise ConfigError(
            f"{NAME} encodes DNA, not {context.modality}; configure it under 'encoders.dna'"
        )
    return NucleotideTransformerEncoder.from_params(params)
