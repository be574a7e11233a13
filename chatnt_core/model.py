"""ChatNTModel: encoders + projections + decoder, wired as the paper's Methods §1.1.

Read bottom-up: ``forward`` (teacher-forced loss on answer tokens) and ``generate`` both
start from ``embed_prompt``, which embeds the prompt tokens, runs each unique sequence
through its modality's encoder once, projects every tag occurrence with the question it
sits in, and scatters the K vectors of each occurrence into its placeholder rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chatnt_core.adapter_gate import adapters_gated, gate_of, placeholder_gate
from chatnt_core.assembly import build_components
from chatnt_core.batching import (
    IGNORE_INDEX,
    Example,
    ModelBatch,
    collate,
    position_ids_from_mask,
    tokenize_example,
)
from chatnt_core.config import (
    ModelConfig,
    ResolvedComponent,
    ResolvedConfig,
    load_config,
    resolve_config,
)
from chatnt_core.contracts import Component, check_encoder_output, check_projection_output
from chatnt_core.errors import PromptError
from chatnt_core.inference.encoding_cache import EncodingCache, weights_version
from chatnt_core.inference.prefix_cache import (
    PrefixCache,
    drop_prefix,
    frozen_columns,
    shared_prefix_length,
)
from chatnt_core.interfaces import Decoder, Encoder, Projection
from chatnt_core.merge import merge_sequence_embeddings
from chatnt_core.modality import Modality
from chatnt_core.plugins import PluginRegistry
from chatnt_core.prompt import SequenceInput, Turn, as_sequence_inputs, rename_tags


@dataclass
class ModelOutput:
    loss: torch.Tensor | None  # scalar, mean over answer tokens
    logits: torch.Tensor  # (B, T_kept, V): from the first position predicting an answer token
    projected: torch.Tensor | None = None  # (O, K, D) the vectors of every tag occurrence


class ChatNTModel(nn.Module):
    """The assembled model. Build it with ``ChatNTModel.from_config``."""

    def __init__(
        self,
        resolved: ResolvedConfig,
        encoders: Mapping[Modality, Encoder],
        projections: Mapping[Modality, Projection],
        decoder: Decoder,
    ) -> None:
        super().__init__()
        self.resolved = resolved
        self.config: ModelConfig = resolved.config
        self.encoders = nn.ModuleDict({m.value: e for m, e in encoders.items()})
        self.projections = nn.ModuleDict({m.value: p for m, p in projections.items()})
        self.decoder = decoder
        # Per-encoder LRU of outputs, used only when the encoder cannot be changing.
        self.encoding_caches: dict[Modality, EncodingCache] = {
            m: EncodingCache(slot.cache_size)
            for m, slot in self.config.encoders.items()
            if slot.cache_size > 0
        }
        # Keys and values of the prompt prefix all rows share, reused while the decoder is
        # frozen (see chatnt_core/inference/prefix_cache.py); switch off to run every row in full.
        self.use_prefix_cache = True
        self.prefix_cache = PrefixCache()
        # Logits only from the first position that predicts an answer token; off computes
        # them at every position (bench/train_throughput.py measures the difference).
        self.answer_logits_only = True

    @classmethod
    def from_config(
        cls,
        source: ModelConfig | ResolvedConfig | str | Path,
        registry: PluginRegistry | None = None,
    ) -> ChatNTModel:
        """Build from a preset name, a YAML path, a ModelConfig or a ResolvedConfig."""
        if isinstance(source, (str, Path)):
            source = load_config(source)
        resolved = (
            source if isinstance(source, ResolvedConfig) else resolve_config(source, registry)
        )
        parts = build_components(resolved, registry)
        return cls(resolved, parts.encoders, parts.projections, parts.decoder)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ChatNTModel:
        """Load a training checkpoint (a ``checkpoint-NNNNNN`` dir or a run dir with ``latest``).

        Hashes are checked, no pickle is read; frozen pretrained parts are rebuilt from the
        config they are referenced in.
        """
        from chatnt_core.training.checkpoint import load_model_from_checkpoint

        model = load_model_from_checkpoint(path)
        assert isinstance(model, cls)
        return model

    # ---- helpers -------------------------------------------------------------------------

    @property
    def modalities(self) -> list[Modality]:
        return [Modality(m) for m in self.encoders]

    @property
    def num_latents(self) -> int:
        return self.config.num_latents

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    def encoder(self, modality: Modality) -> Encoder:
        module = self.encoders[modality.value]
        assert isinstance(module, Encoder)
        return module

    def projection(self, modality: Modality) -> Projection:
        module = self.projections[modality.value]
        assert isinstance(module, Projection)
        return module

    def tokenize(self, examples: Sequence[Example], require_all_used: bool = True) -> ModelBatch:
        """Check, template, tokenize and pad a list of conversations."""
        tokenized = [
            tokenize_example(
                example,
                self.decoder,
                self.config.prompt,
                self.num_latents,
                self.modalities,
                require_all_used,
            )
            for example in examples
        ]
        return collate(tokenized, self.decoder.pad_token_id)

    def prompt_batch(
        self,
        questions: Sequence[str],
        sequences: Sequence[Mapping[str, str | SequenceInput]] | None = None,
    ) -> ModelBatch:
        """A batch of single-turn prompts, ``sequences[i]`` holding the tags of question i."""
        sequences = sequences if sequences is not None else [{} for _ in questions]
        if len(sequences) != len(questions):
            raise PromptError(
                f"got {len(questions)} questions but {len(sequences)} sequence mappings; "
                "give one mapping per question"
            )
        if any(not question.strip() for question in questions):
            raise PromptError(
                "the question is empty: write what you want to know about the sequence, "
                "e.g. 'Is there a CTCF site in @seq.fna?'"
            )
        examples = [Example([Turn(q)], as_sequence_inputs(s)) for q, s in zip(questions, sequences)]
        return self.tokenize(examples).to(self.device)

    # ---- the data path -------------------------------------------------------------------

    @staticmethod
    def _component(part: ResolvedComponent) -> Component:
        return Component(part.path, part.config.name, part.plugin)

    def _cacheable(self, encoder: Encoder) -> bool:
        """Outputs may be reused: eval mode, and no gradient is wanted from the encoder."""
        wants_grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        return not encoder.training and not wants_grad

    def encode_sequences(
        self, modality: Modality, sequences: Sequence[str], cache: EncodingCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unique sequences -> (U, N, D_enc) embeddings and (U, N) mask.

        Rows come from ``cache`` (a conversation's) or the model's own per-encoder cache
        when the encoder is frozen or in eval mode; the rest are encoded in one call.
        """
        encoder = self.encoder(modality)
        caches: list[EncodingCache] = []
        if self._cacheable(encoder):
            own = self.encoding_caches.get(modality)
            caches = [c for c in (cache, own) if c is not None]
        name = f"{modality.value}:{self.config.encoders[modality].name}"
        version = weights_version(encoder) if caches else 0
        rows: dict[str, torch.Tensor] = {}
        for sequence in sequences:
            for store in caches:
                hit = store.get(name, version, sequence)
                if hit is not None:
                    rows[sequence] = hit
                    break
        missing = [s for s in sequences if s not in rows]
        if missing:
            out = check_encoder_output(  # (M, N, D_enc), or one line naming the plugin
                encoder.encode(missing),
                self._component(self.resolved.encoders[modality]),
                len(missing),
                encoder.embed_dim,
            )
            for i, sequence in enumerate(missing):
                rows[sequence] = out.embeddings[i, out.mask[i]]  # (n_i, D_enc)
        for store in caches:
            for sequence in sequences:
                store.put(name, version, sequence, rows[sequence])
        ordered = [rows[s] for s in sequences]
        width = max(r.shape[0] for r in ordered)
        embeddings = ordered[0].new_zeros((len(ordered), width, encoder.embed_dim))
        mask = torch.zeros((len(ordered), width), dtype=torch.bool, device=embeddings.device)
        for i, r in enumerate(ordered):
            embeddings[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return embeddings, mask

    def project_occurrences(
        self, batch: ModelBatch, cache: EncodingCache | None = None
    ) -> torch.Tensor:
        """(O, K, D): the projected vectors of every tag occurrence, in batch order."""
        out = torch.zeros(
            (batch.num_occurrences, self.num_latents, self.decoder.hidden_size),
            device=self.device,
        )
        for modality, unique in batch.sequences.items():
            picks = [i for i, m in enumerate(batch.occurrence_modality) if m == modality]
            embeddings, mask = self.encode_sequences(modality, unique, cache)  # (U, N, D_enc)
            seq_index = torch.tensor([batch.occurrence_sequence[i] for i in picks])
            q_index = torch.tensor([batch.occurrence_question[i] for i in picks])
            projection = self.projection(modality)
            q_emb = q_mask = None
            if projection.uses_question:
                q_ids = batch.question_ids[q_index.to(batch.question_ids.device)]  # (P, Q)
                q_mask = batch.question_mask[q_index.to(batch.question_mask.device)]
                if projection.question_source == "own":
                    q_emb = projection.embed_question(q_ids)  # (P, Q, D)
                else:
                    q_emb = self.decoder.embed_tokens(q_ids)  # (P, Q, D)
            seq_index = seq_index.to(embeddings.device)
            projected = check_projection_output(
                projection(embeddings[seq_index], mask[seq_index], q_emb, q_mask),
                self._component(self.resolved.projections[modality]),
                len(picks),
                self.num_latents,
                self.decoder.hidden_size,
            )
            out = out.to(projected.dtype)
            out[torch.tensor(picks, device=out.device)] = projected  # (P, K, D)
        return out

    def embed_prompt(self, batch: ModelBatch, cache: EncodingCache | None = None) -> torch.Tensor:
        """(B, T, D) decoder input embeddings with the sequences merged in."""
        tokens = self.decoder.embed_tokens(batch.input_ids)  # (B, T, D)
        projected = self.words_for(batch, self.project_occurrences(batch, cache))  # (O, K, D)
        return merge_sequence_embeddings(
            tokens,
            batch.input_ids,
            projected,
            self.decoder.placeholder_token_id,
            self.config.prompt.placeholder_layout,
        )

    def words_for(self, batch: ModelBatch, projected: torch.Tensor) -> torch.Tensor:
        """(O, K, D) -> (O, K, D): occurrences of word-output projections become words.

        Each vector scores the projection's word vocabulary (``vector . embedding``);
        ``argmax`` hands the decoder the best word's embedding (in training the gradient
        passes straight through the softmax mixture), ``mixture`` the softmax mixture of
        the words' embeddings. Why: a frozen LLM reads its own token embeddings at once
        (measured: with the label's exact token embeddings in place of the vectors, 40
        LoRA updates answered the demo tasks perfectly), free vectors hardly at all.
        """
        out = projected
        for modality in set(batch.occurrence_modality):
            projection = self.projection(modality)
            if not projection.outputs_words:
                continue
            picks = [i for i, m in enumerate(batch.occurrence_modality) if m == modality]
            table = self.decoder.embedding_table().detach().to(projected.dtype)  # (V, D)
            vocabulary = projection.word_vocabulary()
            if vocabulary is not None:
                table = table[vocabulary.to(table.device)]  # (W, D)
            index = torch.tensor(picks, device=projected.device)
            logits = projected[index] @ table.T  # (P, K, W)
            mixture = torch.softmax(logits.float(), dim=-1).to(table.dtype) @ table  # (P, K, D)
            if projection.word_output == "mixture":
                words = mixture
            else:
                words = table[logits.argmax(dim=-1)]  # (P, K, D)
                if torch.is_grad_enabled() and projected.requires_grad:
                    words = words + mixture - mixture.detach()
            out = out.clone() if out is projected else out
            out[index] = words.to(out.dtype)
        return out

    def _prefix_cacheable(self) -> bool:
        """The shared prefix's keys and values can be reused: nothing that acts on it trains
        (the decoder is frozen, or only its gated adapters train, which are off before the
        first sequence placeholder)."""
        trains = any(p.requires_grad for p in self.decoder.parameters())
        return not trains or gate_of(self.decoder) is not None

    def shared_prefix(self, batch: ModelBatch) -> tuple[Any, int]:
        """The KV cache of the prompt start every row shares (system text and the question
        up to its first tag), repeated per row, and its length; ``(None, 0)`` when there is
        none, the decoder may change it, or the decoder cannot repeat its cache. Used by
        training, generation and answer scoring alike."""
        if not (self.use_prefix_cache and self._prefix_cacheable()):
            return None, 0
        ids, mask = batch.input_ids, batch.attention_mask
        prefix = shared_prefix_length(ids, mask, batch.labels, self.decoder.placeholder_token_id)
        if prefix == 0:
            return None, 0
        first_real = int((~mask[0]).sum())
        try:
            past = self.prefix_cache.repeated(
                self.decoder, ids[0, first_real : first_real + prefix], ids.shape[0]
            )
        except NotImplementedError:
            return None, 0
        return past, prefix

    def forward(self, batch: ModelBatch) -> ModelOutput:
        """Teacher-forced pass; the loss counts answer tokens only (labels != IGNORE_INDEX).

        Logits are computed from the first position that predicts an answer token on
        (``ModelOutput.logits`` holds those last positions). With a frozen decoder, the
        prompt prefix every row shares comes from ``prefix_cache`` instead of being run,
        and the columns before the first sequence placeholder run without gradient.
        """
        tokens = self.decoder.embed_tokens(batch.input_ids)  # (B, T, D)
        projected = self.project_occurrences(batch)  # (O, K, D)
        inputs_embeds = merge_sequence_embeddings(
            tokens,
            batch.input_ids,
            self.words_for(batch, projected),
            self.decoder.placeholder_token_id,
            self.config.prompt.placeholder_layout,
        )  # (B, T, D)
        ids, mask, labels = batch.input_ids, batch.attention_mask, batch.labels  # (B, T)
        frozen = self.use_prefix_cache and self._prefix_cacheable()
        past, prefix = self.shared_prefix(batch)
        if prefix > 0:
            inputs_embeds = drop_prefix(inputs_embeds, mask, prefix)  # (B, T - P, D)
            ids, labels = drop_prefix(ids, mask, prefix), drop_prefix(labels, mask, prefix)
            mask = drop_prefix(mask, mask, prefix)
        positions = position_ids_from_mask(mask) + prefix  # (B, T - P)
        full_mask = torch.cat([mask.new_ones((mask.shape[0], prefix)), mask], dim=1)
        answers = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()  # columns predicting
        first_answer = int(answers[0]) if len(answers) else labels.shape[1]
        keep = labels.shape[1] - first_answer if self.answer_logits_only else labels.shape[1]
        keep = keep if len(answers) else 0
        quiet = 0
        if frozen and inputs_embeds.requires_grad:
            quiet = frozen_columns(ids, self.decoder.placeholder_token_id, first_answer)
        if quiet > 0:
            # no placeholder in these columns: gated adapters are off there
            with torch.no_grad(), adapters_gated(self.decoder, None):
                past = self.decoder(
                    inputs_embeds=inputs_embeds[:, :quiet],
                    attention_mask=full_mask[:, : prefix + quiet],
                    position_ids=positions[:, :quiet],
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                ).past_key_values
            inputs_embeds, positions = inputs_embeds[:, quiet:], positions[:, quiet:]
            ids, labels = ids[:, quiet:], labels[:, quiet:]
            keep = min(keep, labels.shape[1])
        # dropped prefix and quiet columns hold no placeholder, so the gate of what is left
        # is computed from what is left
        gate = placeholder_gate(ids, self.decoder.placeholder_token_id).to(inputs_embeds.device)
        with adapters_gated(self.decoder, gate):
            out = self.decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=full_mask,
                position_ids=positions,
                past_key_values=past,
                use_cache=past is not None,
                logits_to_keep=keep,
            )
        if keep == 0:
            return ModelOutput(None, out.logits, projected)
        logits = out.logits[:, :-1]  # (B, keep - 1, V): position t predicts t + 1
        targets = labels[:, -keep + 1 :]  # (B, keep - 1)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        return ModelOutput(loss, out.logits, projected)

    def generate(
        self,
        questions: Sequence[str],
        sequences: Sequence[Mapping[str, str | SequenceInput]] | None = None,
        max_new_tokens: int = 40,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """Answer single-turn questions in one padded batch (greedy unless temperature > 0)."""
        from chatnt_core.inference.generation import GenerationConfig, generate_ids

        batch = self.prompt_batch(questions, sequences)
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        ids = generate_ids(self, batch, config)
        return [text.strip() for text in self.answer_texts(batch, ids)]

    def answer_texts(self, batch: ModelBatch, ids: Sequence[Sequence[int]]) -> list[str]:
        """Generated ids of each batch row as text, with the user's tag names put back
        (the ``alias`` prompt mode shows the decoder @seq1, @seq2, ... instead)."""
        names = batch.user_names or [{} for _ in ids]
        return [rename_tags(self.decoder.detokenize(list(row)), n) for row, n in zip(ids, names)]
