"""The shared part of the three encoders: a transformers model + token ids as an Encoder.

:class:`HFSequenceEncoder` owns everything that does not depend on the architecture:

* ``tokenize``: every sequence becomes ``prefix + body + suffix`` (the model's own special
  tokens around the sequence's ids), right-padded; the mask is True on all three parts
  (a ``<cls>`` or ``<eos>`` embedding is a real model output) and False on padding.
* the long-sequence policy, shared so that every encoder answers a too-long sequence the
  same way (never by silent truncation):

  - ``long_sequences: error`` - tokenize raises, naming the length, the limit and the fix;
  - ``long_sequences: chunk`` - the body is split into the fewest windows that fit
    (``max_tokens`` minus the special tokens; windows differ in length by at most one),
    each window is wrapped in the special tokens and encoded on its own, and the
    embeddings are concatenated. Only the first window's prefix and the last window's
    suffix are kept, so the result is laid out exactly like one long encoding:
    ``prefix + one row per body token + suffix``. ``max_chunks`` bounds the windows.
    Tokens of different windows never attend to each other.

* ``forward``: the model with ``attention_mask``; ``last_hidden_state`` is returned in
  float32 (whatever the weight dtype, so a float32 projection can read it) with padded
  rows zeroed.

Subclasses provide ``body_ids`` (sequence -> ids without special tokens);
:class:`PerLetterEncoder` does so for ESM-style vocabularies of one token per letter.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from chatnt_core.errors import ConfigError, InvalidSequenceError
from chatnt_core.interfaces import Encoder, EncoderOutput, EncoderTokens
from chatnt_core.modality import Modality
from chatnt_core.plugins import BuildContext
from chatnt_hf_encoders.loading import DTypeName

LongSequencePolicy = Literal["error", "chunk"]


class HFEncoderCommonParams(BaseModel):
    """Params every encoder of this plugin accepts (each subclass adds its own)."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None, description="local model directory (with config.json) or a hub id"
    )
    revision: str | None = Field(default=None, description="hub branch, tag or commit for 'path'")
    local_files_only: bool = Field(
        default=False, description="never contact the hub; use local or cached files only"
    )
    dtype: DTypeName = Field(
        default="float32", description="dtype of the weights; embeddings are returned in float32"
    )
    seed: int = Field(default=0, description="seed for randomly initialised weights")
    long_sequences: LongSequencePolicy = Field(
        default="error",
        description="a sequence longer than max_tokens: 'error' stops with a message; 'chunk' "
        "encodes it in windows of max_tokens and concatenates the embeddings",
    )
    max_chunks: int = Field(
        default=8, ge=1, description="with long_sequences: chunk, most windows per sequence"
    )


def check_weight_source(
    random_init: bool, preset: str | None, path: str | None, example: str, weights: str
) -> None:
    """Exactly one source of weights: a checkpoint ``path`` or a preset built at random."""
    random = random_init or preset == "tiny"
    if random and path is not None:
        raise ValueError(
            "random_init (and preset tiny) builds random weights without files: drop 'path'"
        )
    if random and preset is None:
        raise ValueError(f"random_init needs a preset naming the architecture, e.g. {example}")
    if path is None and preset is None:
        raise ValueError(f"give a preset ({example} or tiny) or a path to {weights} weights")


def split_evenly(ids: Sequence[int], window: int) -> list[list[int]]:
    """The fewest pieces of at most ``window`` ids, lengths differing by at most one."""
    count = max(1, -(-len(ids) // window))
    base, extra = divmod(len(ids), count)
    pieces, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        pieces.append(list(ids[start:stop]))
        start = stop
    return pieces


def check_modality(encoder: str, modality: Modality, context: BuildContext) -> None:
    """Refuse a config slot of another modality (e.g. a protein model under ``dna:``)."""
    if context.modality is not None and Modality(context.modality) != modality:
        raise ConfigError(
            f"{encoder} encodes {modality} sequences but is configured under the "
            f"'{context.modality}' encoder slot: move it under '{modality}:' or choose a "
            f"{context.modality} encoder"
        )


class HFSequenceEncoder(Encoder):
    """A Hugging Face encoder model (``last_hidden_state``) behind the Encoder interface."""

    model: PreTrainedModel

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        name: str,
        modality: Modality,
        hidden_size: int,
        max_tokens: int,
        prefix_ids: Sequence[int],
        suffix_ids: Sequence[int],
        pad_id: int,
        long_sequences: LongSequencePolicy = "error",
        max_chunks: int = 8,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.modality = Modality(modality)
        self.embed_dim = int(hidden_size)
        self.max_tokens = int(max_tokens)
        self.prefix_ids = [int(i) for i in prefix_ids]
        self.suffix_ids = [int(i) for i in suffix_ids]
        self.pad_id = int(pad_id)
        self.long_sequences: LongSequencePolicy = long_sequences
        self.max_chunks = int(max_chunks)
        self.num_special = len(self.prefix_ids) + len(self.suffix_ids)
        self.window = self.max_tokens - self.num_special  # body tokens per window
        if self.window < 1:
            raise ConfigError(
                f"{name} max_tokens={max_tokens} leaves no room for a sequence next to its "
                f"{self.num_special} special tokens: raise max_tokens"
            )
        self.model.eval()

    @abstractmethod
    def body_ids(self, sequence: str) -> list[int]:
        """One sequence -> its token ids, without special tokens."""

    # -- ids ------------------------------------------------------------------------------

    def _check_length(self, sequence: str, body: Sequence[int]) -> None:
        needed = len(body) + self.num_special
        if needed <= self.max_tokens:
            return
        size = f"a {self.modality} sequence of {len(sequence)} characters ({needed} tokens "
        size += "with the special tokens)"
        if self.long_sequences == "error":
            raise InvalidSequenceError(
                f"{size} is longer than the {self.name} encoder's max_tokens={self.max_tokens}:"
                " shorten it, or set long_sequences: chunk in the encoder params to encode it "
                "in windows"
            )
        windows = -(-len(body) // self.window)
        if windows > self.max_chunks:
            raise InvalidSequenceError(
                f"{size} needs {windows} windows of {self.window} tokens, more than the "
                f"{self.name} encoder's max_chunks={self.max_chunks}: shorten it or raise "
                "max_chunks"
            )

    def _pad(self, rows: Sequence[Sequence[int]]) -> EncoderTokens:
        width = max((len(row) for row in rows), default=1)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, N)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, N)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
            mask[i, : len(row)] = True
        return EncoderTokens(input_ids=input_ids, mask=mask)

    def tokenize(self, sequences: Sequence[str]) -> EncoderTokens:
        """Right-padded ``prefix + body + suffix`` rows; N may exceed max_tokens when chunking."""
        rows = []
        for sequence in sequences:
            body = self.body_ids(sequence)
            self._check_length(sequence, body)
            rows.append([*self.prefix_ids, *body, *self.suffix_ids])
        return self._pad(rows)

    # -- tensors --------------------------------------------------------------------------

    def run_model(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N) ids + (B, N) bool mask, N <= max_tokens -> (B, N, D_enc) hidden states."""
        output = self.model(input_ids=input_ids, attention_mask=mask.long())
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:  # remote-code models may return plain tuples
            hidden = output[0]
        assert isinstance(hidden, torch.Tensor)
        return hidden

    def _forward_chunked(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode each row window by window and stitch the windows back together."""
        head, tail = len(self.prefix_ids), len(self.suffix_ids)
        windows: list[list[int]] = []
        plans: list[list[tuple[int, int, int]]] = []  # per row: (window, keep from, keep to)
        for row, length in zip(input_ids.tolist(), mask.sum(dim=1).tolist()):
            pieces = split_evenly(row[head : length - tail], self.window)
            plan = []
            for j, piece in enumerate(pieces):
                start = 0 if j == 0 else head
                stop = head + len(piece) + (tail if j == len(pieces) - 1 else 0)
                plan.append((len(windows), start, stop))
                windows.append([*self.prefix_ids, *piece, *self.suffix_ids])
            plans.append(plan)
        batch = self._pad(windows)
        hidden = self.run_model(
            batch.input_ids.to(input_ids.device), batch.mask.to(input_ids.device)
        )  # (W, <= max_tokens, D_enc)
        out = hidden.new_zeros((*input_ids.shape, hidden.shape[-1]))  # (B, N, D_enc)
        for b, plan in enumerate(plans):
            stitched = torch.cat([hidden[w, start:stop] for w, start, stop in plan])
            out[b, : stitched.shape[0]] = stitched
        return out

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
        mask = mask.bool()
        length = input_ids.shape[1]
        if length <= self.max_tokens:
            hidden = self.run_model(input_ids, mask)
        elif self.long_sequences == "chunk":
            hidden = self._forward_chunked(input_ids, mask)
        else:
            raise InvalidSequenceError(
                f"{self.name} encoder input of {length} tokens exceeds max_tokens="
                f"{self.max_tokens}: shorten the sequence or set long_sequences: chunk"
            )
        embeddings = hidden.float().masked_fill(~mask[..., None], 0.0)  # (B, N, D_enc)
        return EncoderOutput(embeddings=embeddings, mask=mask)


def _special_id(encoder: str, tokenizer: PreTrainedTokenizerBase, attribute: str) -> int:
    value = getattr(tokenizer, attribute, None)
    if value is None:
        raise ConfigError(
            f"the {encoder} tokenizer defines no {attribute}: use the tokenizer of the model"
        )
    return int(value)


class PerLetterEncoder(HFSequenceEncoder):
    """One token per letter, looked up in the tokenizer's vocabulary, ``<cls> ... <eos>``.

    Letters are mapped one by one instead of through the tokenizer's text splitter, which
    would turn a run of unknown letters into a single ``<unk>`` and shift every position.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        modality: Modality,
        max_tokens: int,
        long_sequences: LongSequencePolicy = "error",
        max_chunks: int = 8,
    ) -> None:
        rows = int(getattr(model.config, "vocab_size", 0))
        vocab = {str(token): int(i) for token, i in tokenizer.get_vocab().items()}
        if max(vocab.values()) >= rows:
            raise ConfigError(
                f"the {name} tokenizer has ids up to {max(vocab.values())} but the model has "
                f"only {rows} embedding rows: use the tokenizer saved with the model"
            )
        super().__init__(
            model,
            name=name,
            modality=modality,
            hidden_size=int(getattr(model.config, "hidden_size", 0)),
            max_tokens=max_tokens,
            prefix_ids=[_special_id(name, tokenizer, "cls_token_id")],
            suffix_ids=[_special_id(name, tokenizer, "eos_token_id")],
            pad_id=_special_id(name, tokenizer, "pad_token_id"),
            long_sequences=long_sequences,
            max_chunks=max_chunks,
        )
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.unk_id = _special_id(name, tokenizer, "unk_token_id")

    def normalise(self, sequence: str) -> str:
        """The letters as the vocabulary spells them (upper case by default)."""
        return sequence.upper()

    def body_ids(self, sequence: str) -> list[int]:
        return [self.vocab.get(letter, self.unk_id) for letter in self.normalise(sequence)]
