"""Autoregressive answers: KV-cached by default, full recomputation on request.

The released ChatNT code re-ran the whole 512-token prompt for every new token. Here the
prompt (with the sequences merged in) is run once, and each step feeds one token per row
against the decoder's KV cache. ``use_cache=False`` keeps the recompute path, which the
tests use as the reference and the benchmark as the baseline.

Rows are left-padded; positions come from the attention mask, and the mask grows by one
column per step. A row that has emitted a stop token keeps being fed padding (its output
is cut at the stop) until every row has stopped or ``max_new_tokens`` is reached.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from chatnt_core.adapter_gate import adapters_gated, placeholder_gate, row_gate
from chatnt_core.batching import ModelBatch, position_ids_from_mask
from chatnt_core.errors import PromptTooLongError
from chatnt_core.prefix_cache import drop_prefix

if TYPE_CHECKING:
    from chatnt_core.encoding_cache import EncodingCache
    from chatnt_core.model import ChatNTModel


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 40
    temperature: float = 0.0  # 0 = greedy; the paper samples at 0.001, practically greedy
    use_cache: bool = True
    seed: int | None = None  # for temperature sampling
    stop_token_ids: tuple[int, ...] = ()  # in addition to the decoder's EOS
    ignore_eos: bool = False  # run to max_new_tokens (benchmarks); stop_token_ids still stop


@dataclass
class PromptState:
    """The decoder after reading a batch of prompts: what answer generation and answer
    scoring both start from."""

    logits: torch.Tensor  # (B, V) at each row's last prompt position
    past: Any  # the decoder's KV cache over the whole prompt
    mask: torch.Tensor  # (B, P + T') attention mask matching ``past``
    next_positions: torch.Tensor  # (B, 1) position id of the first answer token

    def rows(self, index: torch.Tensor) -> PromptState:
        """The state of rows ``index`` (R,), with a cache of their own (copied rows)."""
        index = index.to(self.logits.device)
        return PromptState(
            self.logits[index],
            select_cache_rows(self.past, index),
            self.mask[index],
            self.next_positions[index],
        )


def select_cache_rows(past: Any, index: torch.Tensor) -> Any:
    """A new KV cache whose row r is row ``index[r]`` of ``past``; ``past`` is not touched.

    Transformers caches (``Cache`` with ``layers``): the container and each layer are
    shallow-copied, then ``batch_select_indices`` replaces the copies' key/value tensors
    by indexed (hence newly allocated) ones. The decoder later grows the copy in place,
    which is why the shared prompt cache must never be handed over itself. Legacy tuple
    caches ``((k, v), ...)`` are indexed tensor by tensor.
    """
    if hasattr(past, "layers") and hasattr(past, "batch_select_indices"):
        selected = copy.copy(past)
        selected.layers = [copy.copy(layer) for layer in past.layers]
        selected.batch_select_indices(index)
        return selected
    if isinstance(past, (tuple, list)):
        return tuple(tuple(t.index_select(0, index.to(t.device)) for t in layer) for layer in past)
    raise TypeError(
        f"cannot copy rows of a {type(past).__name__} decoder cache: shared-prefix scoring "
        "needs a transformers Cache or a tuple of (key, value) tensors per layer; use "
        "score_candidates_naive with this decoder"
    )


def run_prompt(model: ChatNTModel, batch: ModelBatch, embeds: torch.Tensor) -> PromptState:
    """Run the (B, T, D) merged prompt embeddings through the decoder once.

    The start every row shares (system text, question up to the first tag) comes from the
    model's prefix cache when the decoder allows it; logits are computed at the last
    position only (a full-vocabulary row per prompt position would be B x T x V floats).
    """
    decoder = model.decoder
    mask = batch.attention_mask  # (B, T)
    gate = placeholder_gate(batch.input_ids, decoder.placeholder_token_id)  # (B, T)
    past, prefix = model.shared_prefix(batch)
    if prefix > 0:
        # the rows' common start comes from the prefix cache; each row runs only the rest
        embeds, gate = drop_prefix(embeds, mask, prefix), drop_prefix(gate, mask, prefix)
        rest = drop_prefix(mask, mask, prefix)  # (B, T - P)
        mask = torch.cat([rest.new_ones((rest.shape[0], prefix)), rest], dim=1)
    positions = position_ids_from_mask(mask)[:, -embeds.shape[1] :]  # (B, T - P)
    with adapters_gated(decoder, gate):
        out = decoder(
            embeds, mask, positions, past_key_values=past, use_cache=True, logits_to_keep=1
        )
    return PromptState(out.logits[:, -1], out.past_key_values, mask, positions[:, -1:] + 1)


def _next_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) last-position logits -> (B,) token ids."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_ids(
    model: ChatNTModel,
    batch: ModelBatch,
    config: GenerationConfig | None = None,
    cache: EncodingCache | None = None,
    on_prompt: Callable[[PromptState], None] | None = None,
) -> list[list[int]]:
    """New token ids per row, stop token excluded.

    ``on_prompt`` sees the decoder's state after the prompt, before any answer token
    changes it (``ChatNT.ask_batch`` keeps a copy to score answer phrasings from, so the
    prompt runs once for the answer and the P(yes) classifier)."""
    config = config or GenerationConfig()
    decoder = model.decoder
    prompt_length = batch.input_ids.shape[1]
    room = decoder.max_context - prompt_length
    if room < 1:
        raise PromptTooLongError(
            f"the prompt fills the decoder's whole context ({prompt_length} of "
            f"{decoder.max_context} tokens); shorten the conversation"
        )
    max_new = min(config.max_new_tokens, room)
    stop_ids = set(config.stop_token_ids)
    if not config.ignore_eos:
        stop_ids.add(decoder.eos_token_id)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=batch.input_ids.device)
    generator = None
    if config.temperature > 0 and config.seed is not None:
        generator = torch.Generator(device=batch.input_ids.device).manual_seed(config.seed)

    embeds = model.embed_prompt(batch, cache)  # (B, T, D)
    rows = embeds.shape[0]
    finished = torch.zeros(rows, dtype=torch.bool, device=embeds.device)
    produced: list[torch.Tensor] = []
    # gated LoRA adapters act from each row's first placeholder on (chatnt_core/adapter_gate.py)
    new_gate = row_gate(batch.input_ids, decoder.placeholder_token_id)  # (B, 1)
    if config.use_cache:
        state = run_prompt(model, batch, embeds)
        if on_prompt is not None:
            on_prompt(state)
        logits, past, mask, positions = state.logits, state.past, state.mask, state.next_positions
    else:
        mask = batch.attention_mask  # (B, T)
        gate = placeholder_gate(batch.input_ids, decoder.placeholder_token_id)  # (B, T)
        with adapters_gated(decoder, gate):
            out = decoder(embeds, mask, position_ids_from_mask(mask), logits_to_keep=1)
        logits = out.logits[:, -1]
    for step in range(max_new):
        token = _next_tokens(logits, config.temperature, generator)  # (B,)
        token = torch.where(finished, torch.full_like(token, decoder.pad_token_id), token)
        produced.append(token)
        finished |= torch.isin(token, stops)
        if bool(finished.all()) or step == max_new - 1:
            break
        step_embeds = decoder.embed_tokens(token[:, None])  # (B, 1, D)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if config.use_cache:
            with adapters_gated(decoder, new_gate):
                out = decoder(
                    step_embeds,
                    mask,
                    positions,
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
            past = out.past_key_values
            positions = positions + 1  # (B, 1)
        else:
            embeds = torch.cat([embeds, step_embeds.to(embeds.dtype)], dim=1)
            gate = torch.cat([gate, new_gate], dim=1)
            with adapters_gated(decoder, gate):
                out = decoder(embeds, mask, position_ids_from_mask(mask), logits_to_keep=1)
        logits = out.logits[:, -1]

    tokens = torch.stack(produced, dim=1).tolist() if produced else [[] for _ in range(rows)]
    stop_set = set(stops.tolist())
    answers: list[list[int]] = []
    for row in tokens:
        cut = next((i for i, t in enumerate(row) if t in stop_set), len(row))
        answers.append(row[:cut])
    return answers
