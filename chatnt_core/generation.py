"""Autoregressive answers: KV-cached by default, full recomputation on request.

The released ChatNT code re-ran the whole 512-token prompt for every new token. Here the
prompt (with the sequences merged in) is run once, and each step feeds one token per row
against the decoder's KV cache. ``use_cache=False`` keeps the recompute path, which the
tests use as the reference and the benchmark as the baseline.

Rows are left-padded; positions come from the attention mask, and the mask grows by one
column per step. A row that has emitted a stop token is fed padding (its output is cut
at the stop) until a quarter of the rows still decoded have stopped; then the stopped
rows leave the batch and its KV cache, so long answers do not make short ones pay.
What a step costs, and why it is cheaper than ``transformers``' own loop (a KV cache with
room reserved, rows-first linear layers, LoRA as plain products): docs/architecture.md,
"A decoding step".
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from chatnt_core.adapter_decoding import lean_adapters, uniform_gate
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


@torch.no_grad()
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


def generation_room(model: ChatNTModel, prompt_length: int, config: GenerationConfig) -> int:
    """How many tokens may follow a ``prompt_length`` prompt; refuses a prompt with no room."""
    room = model.decoder.max_context - prompt_length
    if room < 1:
        raise PromptTooLongError(
            f"the prompt fills the decoder's whole context ({prompt_length} of "
            f"{model.decoder.max_context} tokens); shorten the conversation"
        )
    return min(config.max_new_tokens, room)


def stop_token_ids(model: ChatNTModel, config: GenerationConfig) -> list[int]:
    """The ids that end an answer: the decoder's EOS (unless ignored) and the config's."""
    stops = set(config.stop_token_ids)
    if not config.ignore_eos:
        stops.add(model.decoder.eos_token_id)
    return sorted(stops)


# decoding drops the rows that have stopped once they are a quarter of the batch or more
COMPACT_AT = 0.75
# KV-cache positions reserved for an answer at first: task answers are shorter, and
# reserving max_new_tokens (128 in chatnt batch) for 32 rows cost 0.2 GB of peak memory
RESERVED_ROOM = 32


class _Answers:
    """The tokens chosen step by step for every row, and which rows have stopped."""

    def __init__(self, model: ChatNTModel, config: GenerationConfig, rows: int, device: Any):
        self.temperature = config.temperature
        self.pad = model.decoder.pad_token_id
        self.stops = torch.tensor(stop_token_ids(model, config), dtype=torch.long, device=device)
        self.generator = None
        if config.temperature > 0 and config.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.produced: list[torch.Tensor] = []
        self.rows = rows

    def choose(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(A, V) last-position logits of the still decoded ``rows`` (A,) -> (A,) next
        tokens (padding for rows that have stopped)."""
        token = _next_tokens(logits, self.temperature, self.generator)
        token = torch.where(self.finished[rows], torch.full_like(token, self.pad), token)
        step = torch.full((self.rows,), self.pad, dtype=torch.long, device=token.device)
        step[rows] = token
        self.produced.append(step)
        self.finished[rows] |= torch.isin(token, self.stops)
        return token

    @property
    def done(self) -> bool:
        return bool(self.finished.all())

    def ids(self) -> list[list[int]]:
        """New token ids per row, cut before the first stop token."""
        tokens = torch.stack(self.produced, dim=1).tolist() if self.produced else []
        stop_set = set(self.stops.tolist())
        answers: list[list[int]] = []
        for row in tokens or [[] for _ in range(self.rows)]:
            cut = next((i for i, t in enumerate(row) if t in stop_set), len(row))
            answers.append(row[:cut])
        return answers


@torch.no_grad()
def continue_from(
    model: ChatNTModel,
    state: PromptState,
    input_ids: torch.Tensor,
    config: GenerationConfig | None = None,
) -> list[list[int]]:
    """New token ids per row, decoded from ``state``. Decoders that reserve room in a
    copy of the cache (``Decoder.reserve_cache``; the HF plugin does) leave ``state``'s
    cache as it was; with others it grows.

    ``input_ids`` (B, T) are the prompts ``state`` was computed from (their placeholders
    say where the gated adapters act; their width is the prompt length)."""
    config = config or GenerationConfig()
    decoder = model.decoder
    limit = generation_room(model, input_ids.shape[1], config)
    answers = _Answers(model, config, input_ids.shape[0], input_ids.device)
    gate = row_gate(input_ids, decoder.placeholder_token_id)  # (A, 1)
    logits, mask, positions = state.logits, state.mask, state.next_positions
    # room for the answer, written in place (it doubles if the answer outgrows it)
    past = decoder.reserve_cache(state.past, min(limit, RESERVED_ROOM))
    active = torch.arange(input_ids.shape[0], device=input_ids.device)  # (A,) rows decoded
    # every answer token follows the sequences: one gate per row; lean adapters when uniform
    with lean_adapters(decoder, uniform_gate(decoder, gate)):
        for step in range(limit):
            token = answers.choose(logits, active)  # (A,)
            if answers.done or step == limit - 1:
                break
            running = ~answers.finished[active]  # (A,)
            if int(running.sum()) <= COMPACT_AT * len(active):
                # rows that have stopped leave the batch (their cache rows too)
                keep = running.nonzero()[:, 0]
                past = select_cache_rows(past, keep)
                mask, positions, gate = mask[keep], positions[keep], gate[keep]
                token, active = token[keep], active[keep]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            with adapters_gated(decoder, gate):
                out = decoder(
                    decoder.embed_tokens(token[:, None]),  # (A, 1, D)
                    mask,
                    positions,
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
            past, positions = out.past_key_values, positions + 1  # positions: (A, 1)
            logits = out.logits[:, -1]
    return answers.ids()


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
    changes it (to keep a copy of it, for instance)."""
    config = config or GenerationConfig()
    limit = generation_room(model, batch.input_ids.shape[1], config)
    embeds = model.embed_prompt(batch, cache)  # (B, T, D)
    if config.use_cache:
        state = run_prompt(model, batch, embeds)
        if on_prompt is not None:
            on_prompt(state)
        return continue_from(model, state, batch.input_ids, config)
    # the released ChatNT's way: the whole prompt and answer so far, again for every token
    decoder = model.decoder
    answers = _Answers(model, config, embeds.shape[0], embeds.device)
    all_rows = torch.arange(embeds.shape[0], device=embeds.device)
    mask = batch.attention_mask  # (B, T)
    gate = placeholder_gate(batch.input_ids, decoder.placeholder_token_id)  # (B, T)
    new_gate = row_gate(batch.input_ids, decoder.placeholder_token_id)  # (B, 1)
    for step in range(limit):
        with adapters_gated(decoder, gate):
            out = decoder(embeds, mask, position_ids_from_mask(mask), logits_to_keep=1)
        token = answers.choose(out.logits[:, -1], all_rows)  # (B,)
        if answers.done or step == limit - 1:
            break
        embeds = torch.cat([embeds, decoder.embed_tokens(token[:, None]).to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        gate = torch.cat([gate, new_gate], dim=1)
    return answers.ids()
