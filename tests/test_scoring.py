"""Shared-prefix candidate scoring agrees with one full forward per candidate."""

from __future__ import annotations

import pytest
import torch
from tiny_models import sharp_tiny_model

from chatnt_core import ChatNTModel, Example, SequenceInput, Turn
from chatnt_core.batching import position_ids_from_mask
from chatnt_core.errors import PromptError
from chatnt_core.inference.scoring import (
    answer_token_ids,
    score_candidates,
    score_candidates_naive,
    select_cache_rows,
)

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"
PROTEIN = "MKVLAAGIVGLLLA"


@pytest.fixture(scope="module")
def model() -> ChatNTModel:
    torch.manual_seed(0)
    return ChatNTModel.from_config("tiny-random").eval()


def prompts() -> list[Example]:
    """Prompts of very different lengths: left padding differs from row to row."""
    return [
        Example([Turn("Is @a.fna a promoter?")], {"a.fna": SequenceInput("a.fna", DNA)}),
        Example([Turn("Hi")]),
        Example(
            [
                Turn("Compare @a.fna with @p.faa, please.", "They differ."),
                Turn("And is @a.fna GC-rich? Answer in one word, however long it takes."),
            ],
            {"a.fna": SequenceInput("a.fna", DNA[:20]), "p.faa": SequenceInput("p.faa", PROTEIN)},
        ),
    ]


CANDIDATES = [
    ["yes", "no", "Yes, this sequence is a promoter."],
    ["a"],
    ["no", "It is rather GC-poor.", "yes!", "definitely not GC-rich"],
]


def test_shared_prefix_scores_match_naive_scores(model: ChatNTModel) -> None:
    shared = score_candidates(model, prompts(), CANDIDATES)
    naive = score_candidates_naive(model, prompts(), CANDIDATES)
    assert shared.counts == naive.counts == [3, 1, 4]
    assert torch.equal(shared.token_mask, naive.token_mask)
    assert len(set(shared.num_tokens.tolist())) > 3  # candidates of many token lengths
    assert torch.allclose(shared.token_log_probs, naive.token_log_probs, atol=1e-4)
    assert torch.allclose(shared.log_likelihood, naive.log_likelihood, atol=1e-4)
    assert torch.allclose(shared.mean_nll, naive.mean_nll, atol=1e-4)
    assert bool((shared.log_likelihood < 0).all())


def test_chunked_rows_and_batched_naive_give_the_same_scores(model: ChatNTModel) -> None:
    whole = score_candidates(model, prompts(), CANDIDATES)
    chunked = score_candidates(model, prompts(), CANDIDATES, max_rows=3)
    assert torch.allclose(whole.token_log_probs, chunked.token_log_probs, atol=1e-5)
    batched = score_candidates_naive(model, prompts(), CANDIDATES, batch_size=5)
    assert torch.allclose(whole.token_log_probs, batched.token_log_probs, atol=1e-4)


def test_a_model_batch_scores_like_its_examples(model: ChatNTModel) -> None:
    examples = prompts()[:2]
    candidates = [["yes", "no"], ["maybe", "no"]]
    from_examples = score_candidates(model, examples, candidates)
    from_batch = score_candidates(model, model.tokenize(examples), candidates)
    assert torch.allclose(from_examples.token_log_probs, from_batch.token_log_probs, atol=1e-6)


def test_candidate_tokens_are_the_trained_answer_tokens(model: ChatNTModel) -> None:
    ids = answer_token_ids(model, "yes", prompts()[0])
    assert ids[-1] == model.decoder.eos_token_id
    assert ids[:-1] == model.decoder.tokenize(" yes")
    assert answer_token_ids(model, "yes") == ids  # vicuna answers do not depend on the prompt
    scores = score_candidates(model, prompts()[:1], [["yes"]])
    assert scores.num_tokens.tolist() == [len(ids)]
    assert torch.allclose(scores.perplexity, torch.exp(-scores.log_likelihood / len(ids)))


def test_the_shared_prompt_cache_is_left_untouched(model: ChatNTModel) -> None:
    batch = model.tokenize(prompts())
    embeds = model.embed_prompt(batch)
    with torch.no_grad():
        mask = batch.attention_mask
        out = model.decoder(embeds, mask, position_ids_from_mask(mask), None, True)
    past = out.past_key_values
    keys = [layer.keys.clone() for layer in past.layers]
    copy = select_cache_rows(past, torch.tensor([2, 2, 0]))
    assert copy.layers[0].keys.shape[0] == 3
    assert torch.equal(copy.layers[0].keys[1], keys[0][2])
    copy.layers[0].update(copy.layers[0].keys[:, :, :1], copy.layers[0].values[:, :, :1])
    assert all(torch.equal(layer.keys, k) for layer, k in zip(past.layers, keys))
    assert past.get_seq_length() == batch.input_ids.shape[1]


def test_per_prompt_split_and_grid(model: ChatNTModel) -> None:
    scores = score_candidates(model, prompts()[:2], [["yes", "no"], ["a", "b"]])
    assert [t.shape[0] for t in scores.per_prompt(scores.log_likelihood)] == [2, 2]
    assert scores.grid(scores.log_likelihood).shape == (2, 2)
    uneven = score_candidates(model, prompts()[:2], [["yes"], ["a", "b"]])
    with pytest.raises(ValueError, match="different candidate counts"):
        uneven.grid(uneven.log_likelihood)
    empty = score_candidates(model, prompts()[:2], [[], []])
    assert empty.log_likelihood.shape == (0,)


def test_bad_inputs_are_refused(model: ChatNTModel) -> None:
    answered = Example([Turn("Is it?", "yes")])
    with pytest.raises(PromptError, match="must end with a user message"):
        score_candidates(model, [answered], [["yes"]])
    with pytest.raises(ValueError, match="2 prompts but 1 candidate lists"):
        score_candidates(model, prompts()[:2], [["yes"]])
    with pytest.raises(TypeError, match="cannot copy rows"):
        select_cache_rows(object(), torch.tensor([0]))


def test_prefix_cache_and_logit_budget_keep_scores_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder whose outputs depend on content and positions (large weights): the shared
    prefix cache and budget-sized row chunks change nothing in the scores."""
    from chatnt_core.inference import scoring

    sharp = sharp_tiny_model()
    same_start = [
        Example([Turn(f"Is there a site in @a.fna{tail}")], {"a.fna": SequenceInput("a.fna", s)})
        for tail, s in [("?", DNA), (", or is there none at all?", DNA[:15]), ("!", DNA[5:])]
    ]
    naive = score_candidates_naive(sharp, same_start, CANDIDATES)
    sharp.prefix_cache.clear()
    shared = score_candidates(sharp, same_start, CANDIDATES)
    assert sharp.prefix_cache._entry is not None  # the common start was cached
    assert torch.allclose(shared.token_log_probs, naive.token_log_probs, atol=1e-4)
    assert naive.log_likelihood.std() > 1.0  # scores differ a lot: the check has teeth
    # a budget of one candidate row per call
    monkeypatch.setattr(scoring, "SCORING_BUDGET_BYTES", 1)
    assert scoring.rows_within_budget(8, 5, 100) == 1
    chunked = score_candidates(sharp, same_start, CANDIDATES)
    assert torch.allclose(chunked.token_log_probs, naive.token_log_probs, atol=1e-4)


def test_the_scoring_budget_counts_cache_copies_and_logits() -> None:
    from chatnt_core.inference import scoring

    model = ChatNTModel.from_config("tiny-random").eval()
    batch = model.tokenize(prompts())
    out = model.decoder(
        model.embed_prompt(batch), batch.attention_mask,
        position_ids_from_mask(batch.attention_mask), use_cache=True,
    )  # fmt: skip
    per_row = scoring.cache_bytes_per_row(out.past_key_values)
    # 2 layers x (keys + values) x 2 KV heads x T positions x 8 dims x 4 bytes
    assert per_row == 2 * 2 * 2 * batch.input_ids.shape[1] * 8 * 4
    budget = scoring.SCORING_BUDGET_BYTES
    assert scoring.rows_within_budget(10**6, 11, 1000, 0) == budget // (10 * 1000 * 8)
    assert scoring.rows_within_budget(10**6, 11, 1000, 2**20) == budget // (2**20 + 80_000)
    assert scoring.rows_within_budget(3, 11, 1000, 2**20) == 3
