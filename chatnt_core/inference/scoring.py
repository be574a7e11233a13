"""Score candidate answers by their likelihood under the model, prompt run once.

The perplexity-based classifier (paper, Methods §3) needs, for every question, the
log-probability of 2N fixed answer phrasings. Running ``prompt + answer`` through the
decoder once per phrasing repeats the ~512-token prompt (and the encoder) 2N times;
here the prompt runs once with ``use_cache=True`` and all candidates of all prompts are
scored in one decoder call against row copies of that KV cache.

Which tokens are scored: exactly the tokens training puts the loss on for that answer.
The conversation with the candidate as the final answer is tokenized by
``batching.tokenize_example`` (the training path) and the candidate's tokens are the tail
past the prompt: for the vicuna template ``" {answer}"`` followed by EOS. EOS is
included because it is what says "the answer ends here": without it "yes" would also get
the mass of "yes, but..." continuations.

Shapes: B prompts, R = sum of candidates over prompts (rows, prompt-major), L the
longest candidate in tokens, T the padded prompt length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from chatnt_core.adapter_gate import adapters_gated, placeholder_gate, row_gate
from chatnt_core.batching import Example, ModelBatch, position_ids_from_mask, tokenize_example
from chatnt_core.errors import PromptError
from chatnt_core.inference.candidate_tree import attention_grid, build_tree, node_count
from chatnt_core.inference.generation import PromptState, run_prompt, select_cache_rows
from chatnt_core.prompt import Turn

if TYPE_CHECKING:
    from chatnt_core.inference.encoding_cache import EncodingCache
    from chatnt_core.model import ChatNTModel


@dataclass
class CandidateScores:
    """Per-token log-probabilities of every (prompt, candidate) pair, rows prompt-major."""

    token_log_probs: torch.Tensor  # (R, L) float32, 0 at padding
    token_mask: torch.Tensor  # (R, L) bool, True at the candidate's tokens
    prompt_index: torch.Tensor  # (R,) long, the prompt each row belongs to
    counts: list[int]  # (B,) candidates per prompt
    token_ids: torch.Tensor | None = None  # (R, L) long, the candidates' tokens
    # (R,) long: how many leading tokens of the candidate are each the argmax of the
    # position before them, i.e. how far greedy decoding would follow it
    greedy_tokens: torch.Tensor | None = None

    def greedy_answers(
        self, stop_ids: Sequence[int], max_new_tokens: int
    ) -> list[list[int] | None]:
        """Per prompt, the answer greedy decoding gives when it is one of the candidates
        up to a stop token (every token the argmax, the stop included, within
        ``max_new_tokens``): its ids before the stop. None where no candidate is.

        The answer phrasings are what a trained model says, so for most questions the
        greedy answer is one of them, and scoring it has already decoded it."""
        out: list[list[int] | None] = [None] * len(self.counts)
        if self.greedy_tokens is None or self.token_ids is None:
            return out
        stops = set(stop_ids)
        followed = self.greedy_tokens.tolist()
        lengths = self.num_tokens.tolist()
        for r, prompt in enumerate(self.prompt_index.tolist()):
            ids = self.token_ids[r, : lengths[r]].tolist()
            end = next((k for k, token in enumerate(ids) if token in stops), None)
            if out[prompt] is None and end is not None and end < min(followed[r], max_new_tokens):
                out[prompt] = ids[:end]
        return out
        whole = (self.greedy_tokens == self.num_tokens).tolist()
        for r, (prompt, complete) in enumerate(zip(self.prompt_index.tolist(), whole)):
            if complete and out[prompt] is None:
                length = int(self.num_tokens[r])
                out[prompt] = [int(t) for t in self.token_ids[r, :length]]
        return out

    @property
    def num_tokens(self) -> torch.Tensor:
        return self.token_mask.sum(dim=-1)  # (R,)

    @property
    def log_likelihood(self) -> torch.Tensor:
        """Summed log p of the candidate's tokens (EOS included)."""
        return self.token_log_probs.sum(dim=-1)  # (R,)

    @property
    def mean_nll(self) -> torch.Tensor:
        return -self.log_likelihood / self.num_tokens.clamp(min=1)  # (R,)

    @property
    def perplexity(self) -> torch.Tensor:
        return torch.exp(self.mean_nll)  # (R,)

    def per_prompt(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Split a per-row tensor (R, ...) into one tensor per prompt."""
        return list(torch.split(values, self.counts))

    def grid(self, values: torch.Tensor) -> torch.Tensor:
        """(R,) -> (B, C) when every prompt has the same number C of candidates."""
        if len(set(self.counts)) > 1:
            raise ValueError(f"prompts have different candidate counts {self.counts}")
        return values.reshape(len(self.counts), -1)


def _prompt_turns(example: Example) -> list[Turn]:
    if not example.turns or example.turns[-1].assistant is not None:
        raise PromptError(
            "a prompt to score answers for must end with a user message that has no answer"
        )
    return list(example.turns)


def _with_answer(example: Example, answer: str) -> Example:
    turns = _prompt_turns(example)
    return Example([*turns[:-1], Turn(turns[-1].user, answer)], example.sequences)


def _tokenized_ids(model: ChatNTModel, example: Example) -> list[int]:
    tokenized = tokenize_example(
        example, model.decoder, model.config.prompt, model.num_latents, model.modalities
    )
    return tokenized.input_ids


def answer_token_ids(model: ChatNTModel, answer: str, prompt: Example | None = None) -> list[int]:
    """The ids training scores for ``answer`` as the reply to ``prompt``.

    Without a prompt a one-message dummy conversation is used; segments are tokenized
    independently, so for the vicuna template the result does not depend on the prompt.
    """
    prompt = prompt if prompt is not None else Example([Turn("")])
    head = _tokenized_ids(model, prompt)
    full = _tokenized_ids(model, _with_answer(prompt, answer))
    if full[: len(head)] != head:
        raise PromptError(
            "the template renders the prompt differently once an answer follows it, so the "
            "answer's tokens cannot be isolated; use the vicuna template"
        )
    return full[len(head) :]


def _check_counts(num_prompts: int, candidates: Sequence[Sequence[str]]) -> None:
    if len(candidates) != num_prompts:
        raise ValueError(f"got {num_prompts} prompts but {len(candidates)} candidate lists")


def _prepare(
    model: ChatNTModel, prompts: Sequence[Example] | ModelBatch, candidates: Sequence[Sequence[str]]
) -> tuple[ModelBatch, list[list[list[int]]]]:
    if isinstance(prompts, ModelBatch):
        _check_counts(prompts.input_ids.shape[0], candidates)
        shared: dict[str, list[int]] = {}
        for answer in {a for row in candidates for a in row}:
            shared[answer] = answer_token_ids(model, answer)
        return prompts, [[shared[a] for a in row] for row in candidates]
    _check_counts(len(prompts), candidates)
    for example in prompts:
        _prompt_turns(example)
    ids = [[answer_token_ids(model, a, p) for a in row] for p, row in zip(prompts, candidates)]
    return model.tokenize(prompts), ids


def _empty_scores(counts: list[int], device: torch.device) -> CandidateScores:
    return CandidateScores(
        torch.zeros((0, 0), device=device),
        torch.zeros((0, 0), dtype=torch.bool, device=device),
        torch.zeros(0, dtype=torch.long, device=device),
        counts,
    )


def _pack(
    rows: Sequence[Sequence[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into (R, L) ids and (R, L) mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
        mask[i, : len(row)] = True
    return ids, mask


def _gather(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(R, L, V) log-probs, (R, L) ids -> (R, L) log-prob of each id."""
    return log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


SCORING_BUDGET_BYTES = 96 * 2**20


def cache_bytes_per_row(past: Any) -> int:
    """Bytes one row of a KV cache holds (transformers ``Cache`` or tuples); 0 if unknown."""
    layers = getattr(past, "layers", None)
    pairs = [(layer.keys, layer.values) for layer in layers] if layers is not None else past or []
    total = 0
    for pair in pairs:
        for tensor in pair:
            if isinstance(tensor, torch.Tensor) and tensor.dim() > 0 and tensor.shape[0] > 0:
                total += tensor[0].numel() * tensor.element_size()
    return total


def rows_within_budget(rows: int, width: int, vocabulary: int, cache_row_bytes: int = 0) -> int:
    """Candidate rows per decoder call whose copies of their prompt's KV cache and float32
    logits and log-probabilities ((rows, width - 1, V) each) stay within
    ``SCORING_BUDGET_BYTES``. Unbounded, 32 prompts x 6 phrasings of a 135M decoder took
    0.5 GB of cache copies, and 512 rows of 10 tokens over a 49,152-word vocabulary 1.8 GB
    of logits, at once."""
    per_row = cache_row_bytes + max(width - 1, 1) * vocabulary * 4 * 2
    return max(1, min(rows, SCORING_BUDGET_BYTES // per_row))


@torch.no_grad()
def score_candidates(
    model: ChatNTModel,
    prompts: Sequence[Example] | ModelBatch,
    candidates: Sequence[Sequence[str]],
    *,
    cache: EncodingCache | None = None,
    max_rows: int | None = None,
    prompt_state: PromptState | None = None,
) -> CandidateScores:
    """Log-probabilities of ``candidates[b]`` as the answer to prompt b, prompt run once.

    ``prompt_state``: the decoder's state after exactly these prompts (e.g. kept from the
    generation of their answers); the prompt is then not run again.

    ``prompts`` are conversations ending on an unanswered user message, or the
    ``ModelBatch`` of such prompts (left-padded). Decoders that take an attention grid
    (``Decoder.supports_tree_attention``) score all candidates of a prompt in one row
    (``chatnt_core/inference/candidate_tree.py``); others get one row per candidate, each with a
    copy of its prompt's KV cache. ``max_rows`` caps the candidate rows of one decoder
    call; ``None`` sizes calls to a memory budget.
    """
    batch, answer_ids = _prepare(model, prompts, candidates)
    return score_answer_ids(
        model, batch, answer_ids, cache=cache, max_rows=max_rows, prompt_state=prompt_state
    )


@torch.no_grad()
def score_answer_ids(
    model: ChatNTModel,
    batch: ModelBatch,
    answer_ids: list[list[list[int]]],
    *,
    cache: EncodingCache | None = None,
    max_rows: int | None = None,
    prompt_state: PromptState | None = None,
) -> CandidateScores:
    """``score_candidates`` on token ids: ``answer_ids[b][c]`` are candidate c of prompt b."""
    counts = [len(row) for row in answer_ids]
    device = model.device
    if sum(counts) == 0:
        return _empty_scores(counts, device)
    batch = batch.to(device)
    decoder = model.decoder

    state = prompt_state
    if state is None:
        embeds = model.embed_prompt(batch, cache)  # (B, T, D)
        state = run_prompt(model, batch, embeds)  # shared prefix cached, last logits only
    answer_gate = row_gate(batch.input_ids, decoder.placeholder_token_id)  # (B, 1)
    flat = [ids for row in answer_ids for ids in row]
    owner = torch.tensor([b for b, n in enumerate(counts) for _ in range(n)], device=device)
    ids, mask = _pack(flat, decoder.pad_token_id, device)  # (R, L)
    # The last prompt position predicts every candidate's first token.
    first = F.log_softmax(state.logits.float(), dim=-1)  # (B, V)
    scores = torch.zeros(ids.shape, device=device)  # (R, L)
    scores[:, 0] = first[owner].gather(-1, ids[:, :1]).squeeze(-1)
    argmax = torch.zeros(ids.shape, dtype=torch.long, device=device)  # (R, L)
    argmax[:, 0] = first.argmax(dim=-1)[owner]
    if getattr(decoder, "supports_tree_attention", False):
        _score_tree(model, state, answer_gate, answer_ids, max_rows, scores, argmax)
    else:
        _score_rows(model, state, answer_gate, owner, ids, mask, max_rows, scores, argmax)
    scores = scores.masked_fill(~mask, 0.0)
    followed = ((argmax == ids) & mask).long().cumprod(dim=1).sum(dim=1)  # (R,)
    return CandidateScores(scores, mask, owner, counts, ids, followed)


def _score_rows(
    model: ChatNTModel,
    state: PromptState,
    answer_gate: torch.Tensor,  # (B, 1)
    owner: torch.Tensor,  # (R,)
    ids: torch.Tensor,  # (R, L)
    mask: torch.Tensor,  # (R, L)
    max_rows: int | None,
    scores: torch.Tensor,  # (R, L) filled from column 1 on
    argmax: torch.Tensor,  # (R, L) filled from column 1 on
) -> None:
    """One decoder row per candidate, each with a copy of its prompt's KV cache."""
    decoder, device = model.decoder, model.device
    past, prompt_mask = state.past, state.mask  # prompt_mask: (B, P + T')
    prompt_length = state.next_positions[:, 0]  # (B,) position of the first answer token
    step = max_rows or rows_within_budget(
        ids.shape[0], ids.shape[1], state.logits.shape[-1], cache_bytes_per_row(past)
    )
    for start in range(0, ids.shape[0], step):
        rows = slice(start, start + step)
        index = owner[rows]  # (r,)
        chunk_ids, chunk_mask = ids[rows], mask[rows]  # (r, L)
        width = int(chunk_mask.sum(dim=-1).max())
        if width < 2:
            continue
        # Feed tokens 0..w-2; the output at token j predicts token j + 1.
        fed = chunk_ids[:, : width - 1]  # (r, w-1)
        attention = torch.cat([prompt_mask[index], chunk_mask[:, : width - 1]], dim=1)
        offsets = torch.arange(width - 1, device=device)
        positions = prompt_length[index, None] + offsets  # (r, w-1)
        with adapters_gated(decoder, answer_gate[index]):
            step_out = decoder(
                decoder.embed_tokens(fed),  # (r, w-1, D)
                attention,  # (r, T + w-1)
                positions,
                past_key_values=select_cache_rows(past, index),
                use_cache=True,
            )
        logits = step_out.logits.float()  # (r, w-1, V)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (r, w-1, 1)
        scores[rows, 1:width] = _gather(logits, chunk_ids[:, 1:width]) - lse[..., 0]
        argmax[rows, 1:width] = logits.argmax(dim=-1)


def _score_tree(
    model: ChatNTModel,
    state: PromptState,
    answer_gate: torch.Tensor,  # (B, 1)
    answer_ids: list[list[list[int]]],
    max_rows: int | None,
    scores: torch.Tensor,  # (R, L) filled from column 1 on
    argmax: torch.Tensor,  # (R, L) filled from column 1 on
) -> None:
    """Every candidate of a prompt in one decoder row (a token tree, tree attention)."""
    decoder, device = model.decoder, model.device
    counts = [len(row) for row in answer_ids]
    offsets = [sum(counts[:b]) for b in range(len(counts))]  # first candidate row of prompt b
    width = node_count(answer_ids)
    if max_rows is not None:
        step = max(1, max_rows // max(max(counts), 1))
    else:
        per_prompt = cache_bytes_per_row(state.past) + width * state.logits.shape[-1] * 4 * 2
        step = max(1, SCORING_BUDGET_BYTES // per_prompt)
    for start in range(0, len(answer_ids), step):
        prompts = list(range(start, min(start + step, len(answer_ids))))
        tree = build_tree([answer_ids[b] for b in prompts], decoder.pad_token_id, device)
        if all(len(ids) < 2 for b in prompts for ids in answer_ids[b]):
            continue
        index = torch.tensor(prompts, device=device)  # (b,)
        grid = attention_grid(state.mask[index], tree.grid)  # (b, 1, N, T + N)
        positions = state.next_positions[index] + tree.depth  # (b, N)
        with adapters_gated(decoder, answer_gate[index]):
            out = decoder(
                decoder.embed_tokens(tree.token_ids),  # (b, N, D)
                grid,
                positions,
                past_key_values=select_cache_rows(state.past, index),
                use_cache=True,
            )
        logits = out.logits.float()  # (b, N, V)
        lse = torch.logsumexp(logits, dim=-1)  # (b, N)
        best = logits.argmax(dim=-1)  # (b, N)
        rows, columns, local, nodes, targets = [], [], [], [], []
        for k, b in enumerate(prompts):
            for c, ids in enumerate(answer_ids[b]):
                for j, node in enumerate(tree.predictor[k][c]):
                    rows.append(offsets[b] + c)
                    columns.append(j + 1)
                    local.append(k)
                    nodes.append(node)
                    targets.append(ids[j + 1])
        if not rows:
            continue
        at = (torch.tensor(local, device=device), torch.tensor(nodes, device=device))
        picked = logits[at[0], at[1], torch.tensor(targets, device=device)] - lse[at]
        where = (torch.tensor(rows, device=device), torch.tensor(columns, device=device))
        scores[where] = picked
        argmax[where] = best[at]


@torch.no_grad()
def score_candidates_naive(
    model: ChatNTModel,
    prompts: Sequence[Example],
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 1,
    cache: EncodingCache | None = None,
) -> CandidateScores:
    """Reference: one full teacher-forced pass per (prompt, candidate) conversation.

    Encoder, projection and the whole prompt run again for every candidate, which is
    what the shared-prefix path avoids. ``batch_size`` conversations share a padded
    forward; rows are left-padded, so each answer is the tail of its row.
    """
    _check_counts(len(prompts), candidates)
    pairs = [(p, a) for p, row in zip(prompts, candidates) for a in row]
    counts = [len(row) for row in candidates]
    device = model.device
    if not pairs:
        return _empty_scores(counts, device)
    rows: list[torch.Tensor] = []
    for start in range(0, len(pairs), batch_size):
        group = pairs[start : start + batch_size]
        full = [_with_answer(p, a) for p, a in group]
        lengths = [
            len(_tokenized_ids(model, e)) - len(_tokenized_ids(model, p))
            for e, (p, _) in zip(full, group)
        ]
        batch = model.tokenize(full).to(device)
        gate = placeholder_gate(batch.input_ids, model.decoder.placeholder_token_id)
        with adapters_gated(model.decoder, gate):
            logits = model.decoder(
                model.embed_prompt(batch, cache),
                batch.attention_mask,
                position_ids_from_mask(batch.attention_mask),
            ).logits  # (b, T, V)
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (b, T-1, V)
        # Placeholder ids may lie past the vocabulary; they are prompt tokens, dropped below.
        targets = batch.input_ids[:, 1:].clamp(max=log_probs.shape[-1] - 1)  # (b, T-1)
        token_lp = _gather(log_probs, targets)  # (b, T-1): log p of token t + 1
        rows += [token_lp[i, token_lp.shape[1] - n :] for i, n in enumerate(lengths)]
    width = max(r.shape[0] for r in rows)
    scores = torch.zeros((len(rows), width), device=device)  # (R, L)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        scores[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = True
    owner = torch.tensor([b for b, n in enumerate(counts) for _ in range(n)], device=device)
    return CandidateScores(scores, mask, owner, counts)
