"""The Perceiver resamplers: ChatNT's English-aware one and the plain one (Supp. Fig. 1a).

Both map a variable-length encoder output to K learned latents in the decoder's width, so
every tagged sequence costs the decoder exactly K prompt positions whatever its length.
The English-aware variant also lets the latents read the question, so the summary it hands
the decoder can depend on what is asked (the point of ChatNT's design).

Layout, following the released ChatNT code (see DESIGN.md section 4): a biased linear map
D_enc -> D, then ``num_layers`` layers of pre-LayerNorm residual sub-blocks. The keys and
values of each cross-attention are the inputs concatenated with the latents *as they
entered the layer* (not yet normalised or updated), and both sub-blocks use that same copy.
No tanh gates, no positional encoding. Read bottom-up: factories, modules, the layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from chatnt_core.errors import ConfigError
from chatnt_core.interfaces import Projection, QuestionSource, WordOutput
from chatnt_core.plugins import BuildContext
from chatnt_core.projections.attention import (
    MaskedCrossAttention,
    check_question_input,
    check_sequence_input,
    require_dims,
    resolve_head_dim,
)


class PerceiverLayer(nn.Module):
    """One resampler layer: sequence cross-attention, optional question one, then an MLP."""

    def __init__(
        self, dim: int, num_heads: int, head_dim: int, ffn_dim: int, with_question: bool
    ) -> None:
        super().__init__()
        self.norm_seq = nn.LayerNorm(dim)
        self.attn_seq = MaskedCrossAttention(dim, num_heads, head_dim)
        self.norm_question: nn.LayerNorm | None = nn.LayerNorm(dim) if with_question else None
        self.attn_question: MaskedCrossAttention | None = (
            MaskedCrossAttention(dim, num_heads, head_dim) if with_question else None
        )
        self.norm_ffn = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim, bias=True)
        self.fc2 = nn.Linear(ffn_dim, dim, bias=True)

    def forward(
        self,
        latents: torch.Tensor,  # (B, K, D)
        seq: torch.Tensor,  # (B, N, D)
        seq_mask: torch.Tensor,  # (B, N) bool
        question: torch.Tensor | None,  # (B, Q, D)
        question_mask: torch.Tensor | None,  # (B, Q) bool
    ) -> torch.Tensor:
        x_in = latents  # keys/values of both attentions use this copy
        b, k, _ = x_in.shape
        latent_mask = torch.ones(b, k, dtype=torch.bool, device=x_in.device)  # (B, K)
        kv = torch.cat([seq, x_in], dim=1)  # (B, N + K, D)
        kv_mask = torch.cat([seq_mask, latent_mask], dim=1)  # (B, N + K)
        x = x_in + self.attn_seq(self.norm_seq(x_in), kv, kv_mask)  # (B, K, D)
        if self.attn_question is not None and self.norm_question is not None:
            if question is None or question_mask is None:
                raise ValueError("this layer reads the question; pass question embeddings")
            kv = torch.cat([question, x_in], dim=1)  # (B, Q + K, D)
            kv_mask = torch.cat([question_mask, latent_mask], dim=1)  # (B, Q + K)
            x = x + self.attn_question(self.norm_question(x), kv, kv_mask)  # (B, K, D)
        hidden = F.gelu(self.fc1(self.norm_ffn(x)), approximate="none")  # (B, K, F)
        return x + self.fc2(hidden)  # (B, K, D)


def _truncated_normal_(tensor: torch.Tensor, std: float) -> None:
    """Normal(0, std) cut at two standard deviations (Haiku's TruncatedNormal)."""
    nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


class _PerceiverBase(Projection):
    """Shared body of both resamplers; subclasses decide whether the question is read."""

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_latents: int,
        *,
        num_layers: int,
        num_heads: int,
        head_dim: int | None,
        ffn_dim: int | None,
        with_question: bool,
        summary: bool = False,
        output_rms: float | None = None,
        word_output: WordOutput = "off",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.num_latents = num_latents
        resolved_head_dim = resolve_head_dim(output_dim, num_heads, head_dim)
        self.input_proj = nn.Linear(input_dim, output_dim, bias=True)
        self.latents = nn.Parameter(torch.empty(num_latents, output_dim))  # (K, D)
        _truncated_normal_(self.latents.data, 1.0 / math.sqrt(output_dim))
        self.layers = nn.ModuleList(
            PerceiverLayer(
                output_dim, num_heads, resolved_head_dim, ffn_dim or 4 * output_dim, with_question
            )
            for _ in range(num_layers)
        )
        # Optional: the latents start from the sequence's mean and max over its tokens, so a
        # site anywhere in the sequence reaches the decoder before attention has learned
        # where to look (with near-uniform attention at the start, one site among hundreds
        # of tokens is diluted to nothing).
        self.summary: nn.Linear | None = (
            nn.Linear(2 * input_dim, output_dim, bias=False) if summary else None
        )
        # The pooled features are standardised per channel (running statistics): what tells
        # sequences apart is how far a channel's peak lies from its usual value, which is a
        # small shift on top of a large constant (measured: ~12% of the summary's size, and
        # ~2% of the outputs' once the constant latents and layers are added).
        self.summary_norm: RunningStandardize | None = (
            RunningStandardize(2 * input_dim) if summary else None
        )
        # Optional: outputs scaled like the decoder's own token embeddings (RMS per vector).
        self.output_gain: nn.Parameter | None = None
        if output_rms is not None:
            self.output_gain = nn.Parameter(torch.full((output_dim,), float(output_rms)))
        # Optional: the decoder reads words instead of the free vectors (see
        # PerceiverParams.vocabulary_output and ChatNTModel.words_for), chosen among
        # word_ids (empty: the whole vocabulary; the trainer fills it from the task cards'
        # label anchors, and it is saved with the weights whatever its length).
        self.word_output: WordOutput = word_output
        self.word_ids: torch.Tensor
        self.register_buffer("word_ids", torch.zeros(0, dtype=torch.long))

    def word_vocabulary(self) -> torch.Tensor | None:
        return self.word_ids if len(self.word_ids) else None

    def set_word_vocabulary(self, ids: Sequence[int]) -> None:
        """Restrict the words the decoder is given to ``ids`` (decoder token ids)."""
        self.word_ids = torch.tensor(sorted(set(ids)), dtype=torch.long, device=self.latents.device)

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        saved = state_dict.get(prefix + "word_ids")
        if saved is not None:  # the vocabulary's length is the checkpoint's, not the config's
            self.word_ids = torch.zeros_like(saved, device=self.latents.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    def _resample(
        self,
        seq_embeddings: torch.Tensor,  # (B, N, D_enc)
        seq_mask: torch.Tensor,  # (B, N)
        question: torch.Tensor | None,  # (B, Q, D)
        question_mask: torch.Tensor | None,  # (B, Q)
    ) -> torch.Tensor:
        seq_embeddings, mask = check_sequence_input(seq_embeddings, seq_mask, self.input_dim)
        seq = self.input_proj(seq_embeddings)  # (B, N, D)
        b = seq.shape[0]
        x = self.latents.unsqueeze(0).expand(b, -1, -1)  # (B, K, D)
        if self.summary is not None and self.summary_norm is not None:
            pooled = masked_mean_max(seq_embeddings, mask)  # (B, 2 D_enc)
            x = x + self.summary(self.summary_norm(pooled))[:, None, :]
        for layer in self.layers:
            x = layer(x, seq, mask, question, question_mask)  # (B, K, D)
        if self.output_gain is not None:
            x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-6) * self.output_gain
        return x


class RunningStandardize(nn.Module):
    """Per-channel standardisation with running statistics, updated in training mode.

    Unlike batch normalisation it always divides by the running statistics (a batch of one
    sequence is fine, and training and inference see the same map); the first batches set
    them as a plain average (momentum 1/n), later ones as a moving average (``momentum``).
    """

    mean: torch.Tensor
    var: torch.Tensor
    batches: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, C)
        if self.training:
            with torch.no_grad():
                flat = x.detach().float()
                self.batches += 1
                rate = max(1.0 / float(self.batches), self.momentum)
                self.mean.lerp_(flat.mean(dim=0), rate)
                var = flat.var(dim=0, unbiased=False) if flat.shape[0] > 1 else self.var
                self.var.lerp_(var, rate)
        return (x - self.mean) * torch.rsqrt(self.var + self.eps)


def masked_mean_max(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N, D) + (B, N) mask -> (B, 2D): mean and element-wise max over real tokens."""
    weights = mask.to(embeddings.dtype)[..., None]  # (B, N, 1)
    mean = (embeddings * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, D)
    lowest = torch.finfo(embeddings.dtype).min
    peak = embeddings.masked_fill(~mask[..., None], lowest).amax(dim=1)  # (B, D)
    return torch.cat([mean, peak], dim=-1)


class PerceiverResampler(_PerceiverBase):
    """The plain Perceiver resampler: latents read the sequence only (no question block)."""

    uses_question = False

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_latents: int,
        *,
        num_layers: int = 3,
        num_heads: int = 8,
        head_dim: int | None = None,
        ffn_dim: int | None = None,
        summary: bool = False,
        output_rms: float | None = None,
        word_output: WordOutput = "off",
    ) -> None:
        super().__init__(
            input_dim,
            output_dim,
            num_latents,
            num_layers=num_layers,
            num_heads=num_heads,
            head_dim=head_dim,
            ffn_dim=ffn_dim,
            with_question=False,
            summary=summary,
            output_rms=output_rms,
            word_output=word_output,
        )

    def forward(
        self,
        seq_embeddings: torch.Tensor,  # (B, N, D_enc)
        seq_mask: torch.Tensor,  # (B, N) bool
        question_embeddings: torch.Tensor | None = None,  # ignored
        question_mask: torch.Tensor | None = None,  # ignored
    ) -> torch.Tensor:
        """(B, N, D_enc) + mask -> (B, K, D); a question, if given, is ignored."""
        return self._resample(seq_embeddings, seq_mask, None, None)


class EnglishAwarePerceiver(_PerceiverBase):
    """ChatNT's projection: the latents read the sequence, then the question, each layer.

    With ``question_source="own"`` the question tokens are embedded by a trainable table
    inside the projection (as in the released ChatNT), so the frozen decoder's table is
    left alone; with ``"decoder"`` the model passes the decoder's own input embeddings.
    """

    uses_question = True

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_latents: int,
        *,
        num_layers: int = 3,
        num_heads: int = 8,
        head_dim: int | None = None,
        ffn_dim: int | None = None,
        question_source: QuestionSource = "own",
        question_vocab_size: int | None = None,
        summary: bool = False,
        output_rms: float | None = None,
        word_output: WordOutput = "off",
    ) -> None:
        super().__init__(
            input_dim,
            output_dim,
            num_latents,
            num_layers=num_layers,
            num_heads=num_heads,
            head_dim=head_dim,
            ffn_dim=ffn_dim,
            with_question=True,
            summary=summary,
            output_rms=output_rms,
            word_output=word_output,
        )
        self.question_source = question_source
        self.question_table: nn.Embedding | None = None
        if question_source == "own":
            if question_vocab_size is None or question_vocab_size < 1:
                raise ConfigError(
                    "question_embeddings='own' needs the decoder vocabulary size "
                    "(BuildContext.question_vocab_size); set it or use 'decoder'"
                )
            self.question_table = nn.Embedding(question_vocab_size, output_dim)
            # Same scale as the latents: keys are not normalised, so the table's scale
            # sets how loudly the question speaks against the latents.
            _truncated_normal_(self.question_table.weight.data, 1.0 / math.sqrt(output_dim))

    def embed_question(self, question_ids: torch.Tensor) -> torch.Tensor:
        """(B, Q) decoder-vocabulary ids -> (B, Q, D) from the projection's own table.

        Ids past the table (the placeholder, when the table has the decoder's vocabulary
        size as in the published ChatNT) read its last row, as the official JAX gather does.
        """
        if self.question_table is None:
            return super().embed_question(question_ids)
        rows = self.question_table.num_embeddings
        return self.question_table(question_ids.clamp(max=rows - 1))  # (B, Q, D)

    def forward(
        self,
        seq_embeddings: torch.Tensor,  # (B, N, D_enc)
        seq_mask: torch.Tensor,  # (B, N) bool
        question_embeddings: torch.Tensor | None = None,  # (B, Q, D)
        question_mask: torch.Tensor | None = None,  # (B, Q) bool
    ) -> torch.Tensor:
        """(B, N, D_enc) + (B, Q, D) question -> (B, K, D).

        An all-padding question row is allowed: the latents are always among the keys, so
        the question block then just attends among the latents.
        """
        if question_embeddings is None:
            raise ValueError(
                "the english-aware-perceiver reads the question: pass question_embeddings "
                "(B, Q, D) (from embed_question when question_source is 'own')"
            )
        question, qmask = check_question_input(
            question_embeddings, question_mask, self.output_dim, seq_embeddings.shape[0]
        )  # (B, Q, D), (B, Q)
        return self._resample(seq_embeddings, seq_mask, question, qmask)


class PerceiverParams(BaseModel):
    """Params of ``perceiver-resampler``; widths and K come from the assembly."""

    model_config = ConfigDict(extra="forbid")

    num_layers: int = Field(default=3, ge=1, description="Number of resampler layers (ChatNT: 3).")
    num_heads: int = Field(default=8, ge=1, description="Attention heads per cross-attention.")
    head_dim: int | None = Field(
        default=None,
        ge=1,
        description="Width of each head; default decoder width // num_heads (must divide).",
    )
    ffn_dim: int | None = Field(
        default=None,
        ge=1,
        description="Hidden width of each layer's MLP; default 4 x decoder width.",
    )
    summary: bool = Field(
        default=False,
        description="Start the latents from a linear map of the sequence's mean and max "
        "over its tokens (not in ChatNT; lets a small budget read sites at once).",
    )
    normalize_output: bool = Field(
        default=False,
        description="Scale each output vector to the RMS of the decoder's token embeddings "
        "(a learned per-channel gain starting there).",
    )
    vocabulary_output: WordOutput | bool = Field(
        default="off",
        description="Hand the decoder words instead of free vectors: 'argmax', the embedding "
        "of the word each output vector scores highest against (straight-through gradients "
        "in training), or 'mixture', the softmax mixture of the words' embeddings; the words "
        "are the training config's label_anchors vocabulary (not in ChatNT). true means "
        "'argmax', false 'off'.",
    )


class EnglishAwarePerceiverParams(PerceiverParams):
    """Params of ``english-aware-perceiver``: the plain ones plus the question source."""

    question_embeddings: Literal["own", "decoder"] = Field(
        default="own",
        description="Embed the question with a trainable table of the projection's own "
        "('own', as ChatNT) or reuse the decoder's input embeddings ('decoder').",
    )
    question_vocab_size: int | None = Field(
        default=None,
        ge=1,
        description="Rows of the own question table; default the decoder tokenizer's size. "
        "The published ChatNT's has the decoder vocabulary's 32000 rows, so its placeholder "
        "id 32000 reads the last row.",
    )


def _word_output(params: PerceiverParams) -> WordOutput:
    choice = params.vocabulary_output
    if isinstance(choice, bool):
        return "argmax" if choice else "off"
    return choice


def build_perceiver_resampler(params: PerceiverParams, context: BuildContext) -> PerceiverResampler:
    """Factory registered as ``perceiver-resampler``."""
    input_dim, output_dim, num_latents = require_dims(context, "perceiver-resampler")
    return PerceiverResampler(
        input_dim,
        output_dim,
        num_latents,
        num_layers=params.num_layers,
        num_heads=params.num_heads,
        head_dim=params.head_dim,
        ffn_dim=params.ffn_dim,
        summary=params.summary,
        output_rms=context.embedding_rms or 1.0 if params.normalize_output else None,
        word_output=_word_output(params),
    )


def build_english_aware_perceiver(
    params: EnglishAwarePerceiverParams, context: BuildContext
) -> EnglishAwarePerceiver:
    """Factory registered as ``english-aware-perceiver``."""
    input_dim, output_dim, num_latents = require_dims(context, "english-aware-perceiver")
    return EnglishAwarePerceiver(
        input_dim,
        output_dim,
        num_latents,
        num_layers=params.num_layers,
        num_heads=params.num_heads,
        head_dim=params.head_dim,
        ffn_dim=params.ffn_dim,
        question_source=params.question_embeddings,
        question_vocab_size=params.question_vocab_size or context.question_vocab_size,
        summary=params.summary,
        output_rms=context.embedding_rms or 1.0 if params.normalize_output else None,
        word_output=_word_output(params),
    )
