"""The three component interfaces every plugin implements: Encoder, Projection, Decoder.

The core never imports a concrete model. It talks to these abstract classes only, so a
plugin that subclasses them (in any package) can be assembled from a config.

Tensor-shape glossary (used in comments across the package):

    B      batch size (prompts, or sequences for an encoder call)
    N      encoder tokens per sequence, padded (N <= Encoder.max_tokens, unless the encoder
           chunks long sequences into windows of max_tokens and concatenates them)
    D_enc  encoder embedding width (Encoder.embed_dim)
    Q      question tokens (decoder vocabulary), padded
    K      latents per sequence: the projection's output length (config num_latents)
    D      decoder hidden width (Decoder.hidden_size) = D_dec
    T      decoder tokens in a prompt, padded; each @tag occupies K of them
    V      decoder vocabulary size

Masks are boolean, shape (B, N) or (B, Q) or (B, T), True where a position holds a real
token and False at padding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from chatnt_core.modality import Modality


@dataclass
class EncoderTokens:
    """Encoder input ids for a batch of sequences."""

    input_ids: torch.Tensor  # (B, N) long
    mask: torch.Tensor  # (B, N) bool, True at real tokens

    @classmethod
    def right_padded(cls, rows: Sequence[Sequence[int]], pad_id: int) -> EncoderTokens:
        """Id rows -> (B, N) ids right-padded with ``pad_id`` and the (B, N) real-token mask."""
        width = max((len(row) for row in rows), default=1) or 1
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, N)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, N)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
            mask[i, : len(row)] = True
        return cls(input_ids=input_ids, mask=mask)


@dataclass
class EncoderOutput:
    """Per-token embeddings of a batch of sequences."""

    embeddings: torch.Tensor  # (B, N, D_enc)
    mask: torch.Tensor  # (B, N) bool, True at real tokens


@dataclass
class DecoderOutput:
    """Next-token logits and, when asked for, the KV cache to continue from."""

    logits: torch.Tensor  # (B, T, V)
    past_key_values: Any = None  # opaque to the core; handed back on the next call


class Encoder(nn.Module, ABC):
    """A biological-sequence encoder: sequences in, per-token embeddings out.

    Subclasses set ``modality``, ``embed_dim`` and ``max_tokens`` in ``__init__``. The
    tokenizer is part of the encoder because published weights only make sense with the
    ids they were trained on.
    """

    modality: Modality
    embed_dim: int  # D_enc
    max_tokens: int  # the longest N the model accepts, special tokens included

    @abstractmethod
    def tokenize(self, sequences: Sequence[str]) -> EncoderTokens:
        """Turn validated sequences into a right-padded id batch (B, N)."""

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
        """(B, N) ids + (B, N) mask -> (B, N, D_enc) embeddings + the same mask."""

    def encode(self, sequences: Sequence[str]) -> EncoderOutput:
        """Tokenize and run in one call, on the encoder's own device."""
        tokens = self.tokenize(sequences)
        device = next(self.parameters()).device
        return self(tokens.input_ids.to(device), tokens.mask.to(device))


QuestionSource = Literal["own", "decoder"]
WordOutput = Literal["off", "argmax", "mixture"]


class Projection(nn.Module, ABC):
    """Maps one encoder's token embeddings to K vectors in the decoder's embedding space.

    A projection may read the question (``uses_question``). Its question embeddings come
    either from a table of its own (``question_source == "own"``, see ``embed_question``)
    or from the decoder's input embeddings (``"decoder"``); the model picks the source.
    """

    num_latents: int  # K
    output_dim: int  # D
    uses_question: bool = False
    # How the decoder is given each output vector (see ChatNTModel.words_for and
    # chatnt_core/training/anchors.py): "off", the vector itself; "argmax", the embedding of
    # the word it scores highest against (dot product); "mixture", the softmax mixture of
    # the words' embeddings. Words come from word_vocabulary(). The projection itself always
    # returns free vectors.
    word_output: WordOutput = "off"
    question_source: QuestionSource = "decoder"

    @property
    def outputs_words(self) -> bool:
        return self.word_output != "off"

    def word_vocabulary(self) -> torch.Tensor | None:
        """(W,) decoder ids a word-output projection picks among; None: the whole vocabulary."""
        return None

    def set_word_vocabulary(self, ids: Sequence[int]) -> None:
        """Restrict the words of a word-output projection to ``ids`` (saved with its weights)."""
        raise NotImplementedError(f"{type(self).__name__} does not output words")

    def embed_question(self, question_ids: torch.Tensor) -> torch.Tensor:
        """(B, Q) decoder-vocabulary ids -> (B, Q, D) from the projection's own table."""
        raise NotImplementedError(f"{type(self).__name__} has no question embedding table")

    @abstractmethod
    def forward(
        self,
        seq_embeddings: torch.Tensor,  # (B, N, D_enc)
        seq_mask: torch.Tensor,  # (B, N) bool
        question_embeddings: torch.Tensor | None = None,  # (B, Q, D)
        question_mask: torch.Tensor | None = None,  # (B, Q) bool
    ) -> torch.Tensor:
        """Return (B, K, D) vectors that replace the K placeholder tokens of each tag."""


class Decoder(nn.Module, ABC):
    """An English causal language model driven through ``inputs_embeds``.

    The core builds the prompt (template + K placeholder ids per tag), embeds it with
    ``embed_tokens``, scatters the projected sequence vectors into the placeholder rows
    and calls ``forward``. ``placeholder_token_id`` is an id the tokenizer knows but the
    embedding table may not have a row for: ``embed_tokens`` must accept it.
    """

    hidden_size: int  # D
    vocab_size: int  # V (rows of the output layer)
    tokenizer_size: int  # ids the tokenizer can emit, placeholder included (>= V possible)
    max_context: int  # longest T the decoder handles
    placeholder_token: str  # the text form of the placeholder, e.g. "<seq>"
    placeholder_token_id: int
    eos_token_id: int
    pad_token_id: int
    # ``forward`` also takes a (B, 1, T, T_past + T) bool attention grid (True: query t may
    # attend key s) instead of the (B, T_past + T) padding mask; answer scoring then puts
    # all phrasings of a prompt in one row (chatnt_core/inference/candidate_tree.py)
    supports_tree_attention: bool = False

    @abstractmethod
    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        """Text -> ids; the placeholder string maps to ``placeholder_token_id``."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Ids -> text, special tokens dropped."""

    @abstractmethod
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D). Placeholder ids get any finite vector (overwritten)."""

    def embedding_table(self) -> torch.Tensor:
        """(V, D) the input embedding of every vocabulary id; override to return the
        weight itself instead of a looked-up copy."""
        device = next(iter(self.parameters()), torch.empty(0)).device
        ids = torch.arange(self.vocab_size, device=device)[None, :]  # (1, V)
        return self.embed_tokens(ids)[0]

    @abstractmethod
    def forward(
        self,
        inputs_embeds: torch.Tensor,  # (B, T, D)
        attention_mask: torch.Tensor,  # (B, T_past + T) bool
        position_ids: torch.Tensor,  # (B, T) long
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> DecoderOutput:
        """Causal forward on embeddings; returns logits (B, T, V) and the cache.

        ``attention_mask`` is a (B, T_past + T) padding mask (zeros may be anywhere:
        greedy decoding leaves wrong guesses in the cache, masked out), or with
        ``supports_tree_attention`` possibly a (B, 1, T, T_past + T) bool grid that
        replaces the causal mask. ``logits_to_keep`` > 0 asks for the logits of the last
        that many positions only
        (B, logits_to_keep, V): over a large vocabulary the output layer is a big share of
        the cost, and training and generation only read the answer positions.
        """

    def reserve_cache(self, past_key_values: Any, extra_tokens: int) -> Any:
        """A cache equal to ``past_key_values`` with room for ``extra_tokens`` more
        positions, so that decoding writes each step in place rather than reallocating
        the cache; ``past_key_values`` itself must not change. A pure speed-up: the
        default returns the cache as it is."""
        return past_key_values

    def drop_cache_tail(self, past_key_values: Any, tokens: int) -> bool:
        """Remove the last ``tokens`` positions of every row of ``past_key_values`` in
        place, if the cache allows it, and say whether it did. Greedy decoding drops the
        guessed tokens that no row kept, so that later steps need no mask with holes. A
        pure speed-up: the default does nothing and returns False, and those positions
        stay in the cache, masked out."""
        return False

    def repeat_cache(self, past_key_values: Any, batch_size: int) -> Any:
        """A fresh cache holding ``past_key_values`` (batch 1) repeated ``batch_size`` times.

        Lets the core encode a prompt prefix every row shares (the system message) once
        and reuse it. Decoders that cannot do this raise NotImplementedError, and the core
        then runs the prefix with each row.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot repeat a cache")

    def native_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> str:
        """Render messages with the decoder's own chat template (if it has one)."""
        raise NotImplementedError(f"{type(self).__name__} has no chat template of its own")
