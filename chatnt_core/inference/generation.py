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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from chatnt_core.adapter_gate import adapters_gated, placeholder_gate, row_gate
from chatnt_core.batching import ModelBatch, position_ids_from_mask
from chatnt_core.errors import PromptTooLongError
from chatnt_core.inference.adapter_decoding import lean_adapters, uniform_gate
from chatnt_core.inference.drafting import Acceptance, NgramDrafter, ReferenceIndex, common_prefix
from chatnt_core.inference.prefix_cache import drop_prefix

if TYPE_CHECKING:
    from chatnt_core.inference.encoding_cache import EncodingCache
    from chatnt_core.model import ChatNTModel


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 40
    temperature: float = 0.0  # 0 = greedy; the paper samples at 0.001, practically greedy
    use_cache: bool = True
    seed: int | None = None  # for temperature sampling
    stop_token_ids: tuple[int, ...] = ()  # in addition to the decoder's EOS
    ignore_eos: bool = False  # run to max_new_tokens (benchmarks); stop_token_ids still stop
    draft_tokens: int = 4  # most tokens guessed per row and step (greedy only; 0: none)


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
    """The tokens chosen for every row so far, and which rows are complete (a stop token
    was chosen, or the row has ``limit`` tokens)."""

    def __init__(
        self, model: ChatNTModel, config: GenerationConfig, rows: int, limit: int, device: Any
    ):
        self.temperature = config.temperature
        self.stops = set(stop_token_ids(model, config))
        self.limit = limit
        self.generator = None
        if config.temperature > 0 and config.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.tokens: list[list[int]] = [[] for _ in range(rows)]  # stop tokens left out
        self.finished = [False] * rows

    def pick(self, logits: torch.Tensor) -> list[int]:
        """(A, V) next-token logits -> A token ids (greedy, or sampled)."""
        return _next_tokens(logits, self.temperature, self.generator).tolist()

    def add(self, row: int, tokens: Sequence[int]) -> list[int]:
        """Append ``tokens`` to ``row`` up to its first stop token or its limit; returns the
        tokens appended (nothing once the row is complete)."""
        kept: list[int] = []
        for token in tokens:
            if self.finished[row]:
                break
            if token in self.stops:
                self.finished[row] = True
                break
            kept.append(token)
            self.tokens[row].append(token)
            self.finished[row] = len(self.tokens[row]) >= self.limit
        return kept

    def room(self, row: int) -> int:
        return self.limit - len(self.tokens[row])

    @property
    def done(self) -> bool:
        return all(self.finished)

    def ids(self) -> list[list[int]]:
        """New token ids per row, stop token excluded."""
        return [list(row) for row in self.tokens]


def _drafters(
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    references: Sequence[Sequence[Sequence[int]]] | None,
) -> list[NgramDrafter]:
    """One n-gram drafter per row over its prompt ids (padding left out: ``mask``'s last
    T columns are the prompt's) and its reference texts (indexed once per distinct set)."""
    prompt_mask = mask[:, -input_ids.shape[1] :].bool()
    indexes: dict[tuple[tuple[int, ...], ...], ReferenceIndex] = {}
    drafters = []
    for row, (ids, keep) in enumerate(zip(input_ids, prompt_mask)):
        key = tuple(tuple(ref) for ref in references[row]) if references else ()
        if key not in indexes:
            indexes[key] = ReferenceIndex(key)
        drafters.append(NgramDrafter(ids[keep].tolist(), indexes[key]))
    return drafters


def _attention_grid(mask: torch.Tensor, fed: int) -> torch.Tensor:
    """(B, L) padding mask whose last ``fed`` columns are a step's tokens -> the
    (B, 1, fed, L) bool grid it implies (causal among those tokens). Built here it is a
    few comparisons; transformers builds it from the padding mask in Python every step."""
    length = mask.shape[1]
    keys = torch.arange(length, device=mask.device)  # (L,)
    queries = torch.arange(length - fed, length, device=mask.device)  # (fed,)
    causal = keys[None, :] <= queries[:, None]  # (fed, L)
    return (mask.bool()[:, None, :] & causal[None])[:, None]


@torch.no_grad()
def continue_from(
    model: ChatNTModel,
    state: PromptState,
    input_ids: torch.Tensor,
    config: GenerationConfig | None = None,
    references: Sequence[Sequence[Sequence[int]]] | None = None,
) -> list[list[int]]:
    """New token ids per row, decoded from ``state``. Decoders that reserve room in a
    copy of the cache (``Decoder.reserve_cache``; the HF plugin does) leave ``state``'s
    cache as it was; with others it grows.

    ``input_ids`` (B, T) are the prompts ``state`` was computed from (their placeholders
    say where the gated adapters act; their width is the prompt length). Greedy decoding
    drafts up to ``config.draft_tokens`` tokens per row and step by n-gram lookup in the
    row's prompt, its answer so far and ``references[row]`` (token lists likely to be
    copied, such as a task card's phrasings; ``chatnt_core.inference.drafting``): one step feeds
    each row's next token and its draft, and keeps the draft's longest prefix that the
    decoder itself would have picked. The tokens are those of plain greedy decoding.
    """
    config = config or GenerationConfig()
    decoder = model.decoder
    limit = generation_room(model, input_ids.shape[1], config)
    answers = _Answers(model, config, input_ids.shape[0], limit, state.logits.device)
    drafting = config.temperature <= 0 and config.draft_tokens > 0
    drafters = _drafters(input_ids, state.mask, references) if drafting else []
    acceptance = Acceptance()
    gate = row_gate(input_ids, decoder.placeholder_token_id)  # (A, 1)
    mask, positions = state.mask, state.next_positions  # (A, L), (A, 1)
    tokens = answers.pick(state.logits)  # (A,) each row's next token, not yet fed
    for row, token in enumerate(tokens):
        new = answers.add(row, [token])
        if drafting:
            drafters[row].extend(new)
    if answers.done:
        return answers.ids()
    # room for the answer, written in place (it doubles if the answer outgrows it)
    past = decoder.reserve_cache(state.past, min(limit, RESERVED_ROOM))
    active = list(range(input_ids.shape[0]))  # rows decoded
    # every answer token follows the sequences: one gate per row; lean adapters when uniform
    with lean_adapters(decoder, uniform_gate(decoder, gate)):
        while not answers.done:
            running = [not answers.finished[row] for row in active]
            if sum(running) <= COMPACT_AT * len(active):
                # rows that are complete leave the batch (their cache rows too)
                keep = [i for i, run in enumerate(running) if run]
                index = torch.tensor(keep, device=mask.device)
                past = select_cache_rows(past, index)
                mask, positions, gate = mask[index], positions[index], gate[index]
                active, tokens = [active[i] for i in keep], [tokens[i] for i in keep]
                running = [True] * len(keep)
            drafts = [
                drafters[row].draft(min(config.draft_tokens, answers.room(row) - 1))
                if drafting and run
                else ([], 0)
                for row, run in zip(active, running)
            ]
            width = acceptance.width(
                [draft for draft, run in zip(drafts, running) if run], config.draft_tokens
            )
            # each row feeds its next token and ``width`` draft tokens (padded): (A, 1 + width)
            fed = [
                [token, *(draft[:width] + [decoder.pad_token_id] * width)[:width]]
                for token, (draft, _) in zip(tokens, drafts)
            ]
            fed_ids = torch.tensor(fed, dtype=torch.long, device=mask.device)
            mask = torch.cat([mask, mask.new_ones((len(active), 1 + width))], dim=1)
            step_positions = positions + torch.arange(1 + width, device=positions.device)
            # padding or rejected drafts in the mask: hand the decoder its grid, if it takes one
            holes = decoder.supports_tree_attention and not bool(mask.all())
            with adapters_gated(decoder, gate):
                out = decoder(
                    decoder.embed_tokens(fed_ids),  # (A, 1 + width, D)
                    _attention_grid(mask, 1 + width) if holes else mask,
                    step_positions,
                    past_key_values=past,
                    use_cache=True,
                    logits_to_keep=1 + width,
                )
            past = out.past_key_values
            if width == 0:
                choices = [[token] for token in answers.pick(out.logits[:, -1])]
            else:
                choices = out.logits.argmax(dim=-1).tolist()  # (A, 1 + width) greedy picks
            kept_counts = []
            # every guess is scored against what came, fed or not (evidence is free); rows
            # that guessed alike and got alike count once (identical rows are one coin)
            outcomes: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
            for i, row in enumerate(active):
                draft, kind = drafts[i]
                # the fed guess's longest prefix that the decoder itself picked
                accepted = common_prefix(fed[i][1 : 1 + len(draft)], choices[i])
                produced = [*fed[i][1 : 1 + accepted], choices[i][accepted]]
                outcomes.add((kind, tuple(draft), tuple(produced[: len(draft)])))
                new = answers.add(row, produced)
                if drafting:
                    drafters[row].extend(new)
                tokens[i] = choices[i][accepted]
                kept_counts.append(accepted)
            for kind, guess, came in outcomes:
                acceptance.record(kind, len(came), common_prefix(guess, came))
            kept = torch.tensor(kept_counts, device=mask.device)[:, None]  # (A, 1)
            # the guessed positions no row kept leave the cache when the decoder can drop
            # them (then a step with no holes in its mask goes on without a mask grid)
            unused = width - max(kept_counts)
            if unused > 0 and decoder.drop_cache_tail(past, unused):
                mask, width = mask[:, :-unused], width - unused
            if width > 0:
                # the other rejected guesses stay in the cache, masked out from now on
                offsets = torch.arange(1 + width, device=mask.device)[None]
                mask[:, -(1 + width) :] = (offsets <= kept).to(mask.dtype)
            positions = positions + kept + 1
    return answers.ids()


@torch.no_grad()
def generate_ids(
    model: ChatNTModel,
    batch: ModelBatch,
    config: GenerationConfig | None = None,
    cache: EncodingCache | None = None,
    on_prompt: Callable[[PromptState], None] | None = None,
    references: Sequence[Sequence[Sequence[int]]] | None = None,
) -> list[list[int]]:
    """New token ids per row, stop token excluded.

    ``on_prompt`` sees the decoder's state after the prompt, before any answer token
    changes it (to keep a copy of it, for instance). ``references``: per row, token lists
    the answer may copy, for drafting (see ``continue_from``)."""
    config = config or GenerationConfig()
    limit = generation_room(model, batch.input_ids.shape[1], config)
    embeds = model.embed_prompt(batch, cache)  # (B, T, D)
    if config.use_cache:
        state = run_prompt(model, batch, embeds)
        if on_prompt is not None:
            on_prompt(state)
        return continue_from(model, state, batch.input_ids, config, references)
    # the released ChatNT's way: the whole prompt and answer so far, again for every token
    decoder = model.decoder
    answers = _Answers(model, config, embeds.shape[0], limit, embeds.device)
    mask = batch.attention_mask  # (B, T)
    gate = placeholder_gate(batch.input_ids, decoder.placeholder_token_id)  # (B, T)
    new_gate = row_gate(batch.input_ids, decoder.placeholder_token_id)  # (B, 1)
    while True:
        with adapters_gated(decoder, gate):
            out = decoder(embeds, mask, position_ids_from_mask(mask), logits_to_keep=1)
        tokens = answers.pick(out.logits[:, -1])  # (B,)
        for row, token in enumerate(tokens):
            answers.add(row, [token])
        if answers.done:
            break
        token_ids = torch.tensor(tokens, device=embeds.device)[:, None]  # (B, 1)
        embeds = torch.cat([embeds, decoder.embed_tokens(token_ids).to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        gate = torch.cat([gate, new_gate], dim=1)
    return answers.ids()
