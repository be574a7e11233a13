"""All answer phrasings of a prompt in one decoder row (tree attention), and the greedy
answers that scoring decodes on the way: both must equal the one-row-per-phrasing path
and step-by-step generation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import sharp_tiny_model

from chatnt_core import ChatNT, ChatNTModel, Example, SequenceInput, Turn
from chatnt_core.inference.candidate_tree import attention_grid, build_tree, node_count
from chatnt_core.inference.generation import GenerationConfig, generate_ids
from chatnt_core.inference.scoring import score_answer_ids, score_candidates

SEQ = "ACGTTGCA" * 6


@pytest.fixture(scope="module")
def model() -> ChatNTModel:
    return sharp_tiny_model()


def test_shared_prefixes_become_one_node_each() -> None:
    # phrasings: [5, 6, 7, 2], [5, 6, 8, 2], [9, 2]: fed nodes 5, 56, 567, 568, 9
    tree = build_tree([[[5, 6, 7, 2], [5, 6, 8, 2], [9, 2]]], pad_id=0, device=torch.device("cpu"))
    assert tree.token_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert tree.depth.tolist() == [[0, 1, 2, 2, 0]]
    assert tree.predictor == [[[0, 1, 2], [0, 1, 3], [4]]]
    grid = tree.grid[0].int().tolist()
    assert grid[2] == [1, 1, 1, 0, 0]  # 7 sees 5, 6 and itself, not its sibling 8
    assert grid[3] == [1, 1, 0, 1, 0]
    assert grid[4] == [0, 0, 0, 0, 1]
    assert node_count([[[5, 6, 7, 2], [5, 6, 8, 2], [9, 2]]]) == 5


def test_padded_nodes_attend_only_themselves_and_the_prompt() -> None:
    tree = build_tree([[[1, 2, 3]], [[4, 2]]], pad_id=0, device=torch.device("cpu"))
    assert tree.token_ids.tolist() == [[1, 2], [4, 0]]
    prompt_mask = torch.tensor([[False, True, True], [True, True, True]])
    grid = attention_grid(prompt_mask, tree.grid)  # (2, 1, 2, 5)
    assert grid.shape == (2, 1, 2, 5)
    assert grid[0, 0, 1].tolist() == [False, True, True, True, True]
    assert grid[1, 0, 1].tolist() == [True, True, True, False, True]


def prompts() -> list[Example]:
    return [
        Example([Turn("Is there a CTCF site in @a.fna?")], {"a.fna": SequenceInput("a.fna", SEQ)}),
        Example([Turn("Hi")]),
        Example(
            [Turn("Compare @a.fna and @b.fna.", "Fine."), Turn("Is @b.fna GC-rich?")],
            {
                "a.fna": SequenceInput("a.fna", SEQ[:20]),
                "b.fna": SequenceInput("b.fna", SEQ[3:]),
            },
        ),
    ]


CANDIDATES = [
    ["Yes, it is.", "Yes, it has one.", "No, it is not.", "No."],
    ["yes", "no"],
    ["Yes, @b.fna is GC-rich.", "No, @b.fna is GC-poor.", "Yes"],
]


def test_tree_and_one_row_per_phrasing_give_the_same_scores(
    model: ChatNTModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert model.decoder.supports_tree_attention
    tree = score_candidates(model, prompts(), CANDIDATES)
    small = score_candidates(model, prompts(), CANDIDATES, max_rows=2)  # several tree calls
    monkeypatch.setattr(model.decoder, "supports_tree_attention", False)
    rows = score_candidates(model, prompts(), CANDIDATES)
    assert torch.equal(tree.token_mask, rows.token_mask)
    assert torch.allclose(tree.token_log_probs, rows.token_log_probs, atol=1e-4)
    assert torch.allclose(small.token_log_probs, rows.token_log_probs, atol=1e-4)
    assert torch.equal(tree.greedy_tokens, rows.greedy_tokens)
    assert float(tree.token_log_probs.abs().sum()) > 1.0


def _common_start(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_greedy_tokens_count_what_generation_reproduces(model: ChatNTModel) -> None:
    """For each candidate, the number of leading tokens that are the model's argmax is
    where step-by-step greedy generation parts from it."""
    batch = model.tokenize(prompts())
    generated = generate_ids(model, batch, GenerationConfig(max_new_tokens=6, ignore_eos=True))
    candidates = [
        [[*row[:4], 7], [*row[:2], (row[2] + 1) % 256, 9], [(row[0] + 1) % 256, row[1]], row[:6]]
        for row in generated
    ]
    scores = score_answer_ids(model, batch, candidates)
    for r, (b, c) in enumerate((b, c) for b in range(3) for c in range(4)):
        assert int(scores.greedy_tokens[r]) == _common_start(generated[b], candidates[b][c])
    # a candidate that is the greedy answer up to a stop token is decoded by scoring
    stop = generated[0][4]
    end = generated[0].index(stop)  # greedy generation stops at its first stop token
    assert scores.greedy_answers(stop_ids=[stop], max_new_tokens=6)[0] == generated[0][:end]
    # ... unless it would run out of new tokens first
    assert scores.greedy_answers(stop_ids=[stop], max_new_tokens=end)[0] is None


def test_ask_batch_answers_equal_plain_generation(model: ChatNTModel) -> None:
    bot = ChatNT(model)
    questions = [
        "Is there a CTCF binding site in @a.fna?",
        "What is the GC content of @b.fna?",
        "Does @a.fna contain a CTCF motif, would you say?",
    ]
    sequences = [{"a.fna": SEQ}, {"b.fna": SEQ[:20]}, {"a.fna": SEQ[:30]}]
    answers = bot.ask_batch(questions, sequences, max_new_tokens=12)
    plain = bot.generate(questions, sequences, max_new_tokens=12)
    assert [a.text for a in answers] == plain
    assert answers[0].probability is not None and answers[1].probability is None


def test_ask_batch_runs_the_model_without_autograd(
    model: ChatNTModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projection's weights require grad; an answer must not keep their graph (it
    doubled ``chatnt batch``'s peak memory once)."""
    seen: list[bool] = []
    forward = model.decoder.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    embed = model.embed_prompt

    def spy_embed(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = embed(*args, **kwargs)
        seen.append(out.requires_grad)
        return out

    monkeypatch.setattr(model.decoder, "forward", spy)
    monkeypatch.setattr(model, "embed_prompt", spy_embed)
    assert any(p.requires_grad for p in model.parameters())
    ChatNT(model).ask_batch(["Is there a CTCF binding site in @a.fna?"], [{"a.fna": SEQ}])
    assert len(seen) > 1 and not any(seen)
