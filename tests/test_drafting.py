"""Draft-and-verify decoding: the n-gram drafter, the width rule, and the promise that
drafts change how many decoder calls an answer takes, never its tokens."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from training_helpers import lora_tiny_model

from chatnt_core import ChatNTModel
from chatnt_core.api import ChatNT
from chatnt_core.data.tasks import get_task_card
from chatnt_core.inference.drafting import (
    REFERENCE,
    Acceptance,
    NgramDrafter,
    ReferenceIndex,
    batch_references,
    card_references,
)
from chatnt_core.inference.generation import GenerationConfig, generate_ids

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"

# -- the drafter ----------------------------------------------------------------------


def test_drafter_proposes_what_followed_the_latest_match() -> None:
    drafter = NgramDrafter([1, 2, 3, 4, 9, 2, 3, 5, 6])
    drafter.extend([7, 2, 3])  # ... 2 3 was followed by 4, then (later) by 5 6
    assert drafter.draft(2) == ([5, 6], 2)  # the latest occurrence of the 2-gram
    assert drafter.draft(1) == ([5], 2)
    assert drafter.draft(0) == ([], 0)


def test_drafter_prefers_longer_matches_and_stops_at_the_context_end() -> None:
    drafter = NgramDrafter([8, 3, 10, 11, 12, 5, 3, 20])
    drafter.extend([8, 3])  # 3-gram "? 8 3" absent; 2-gram "8 3" -> 10 11 12
    assert drafter.draft(3) == ([10, 11, 12], 2)
    drafter.extend([10, 11, 12, 5])  # now "12 5" -> 3 20, the context's last tokens
    assert drafter.draft(5)[0][:2] == [3, 20]
    assert NgramDrafter([1, 2, 3]).draft(2) == ([], 0)  # 3 never came before


def test_references_come_first_among_matches_of_one_length() -> None:
    drafter = NgramDrafter([4, 5, 6, 4, 5], ReferenceIndex([[9, 4, 5, 7, 8]]))
    assert drafter.draft(3) == ([7, 8], REFERENCE)  # "4 5" in the reference beats the prompt
    assert NgramDrafter([4, 5, 6, 4, 5]).draft(3) == ([6, 4, 5], 2)
    longer_in_prompt = NgramDrafter([4, 5, 6, 4, 5], ReferenceIndex([[0, 5, 7, 8]]))
    assert longer_in_prompt.draft(3) == ([6, 4, 5], 2)  # a 2-gram beats a 1-gram


def test_references_predict_only_up_to_where_they_disagree() -> None:
    # "1 2 3" is followed by 7 8 9 in one phrasing and 7 5 in another: only 7 is predicted
    index = ReferenceIndex([[1, 2, 3, 7, 8, 9], [1, 2, 3, 7, 5], [6, 7, 8]])
    drafter = NgramDrafter([0, 1, 2, 3], index)
    assert drafter.draft(4) == ([7], REFERENCE)
    drafter.extend([7, 5])  # "7 5" ends a phrasing; "5" alone: nothing known to follow
    assert drafter.draft(4) == ([], 0)
    drafter.extend([6])  # "6" -> 7 8 in the third phrasing
    assert drafter.draft(4) == ([7, 8], REFERENCE)


def test_card_references_fill_tags_and_split_at_values() -> None:
    tokenize = lambda text: [ord(c) for c in text]  # noqa: E731 - one id per character
    gc = get_task_card("demo-gc-content")
    parts = ["".join(map(chr, ids)) for ids in card_references(gc, ["seq1"], tokenize)]
    assert "The GC content of @seq1 is " in parts and " of @seq1." in parts
    assert all("{" not in part for part in parts)
    ctcf = get_task_card("demo-ctcf-site")
    texts = ["".join(map(chr, ids)) for ids in card_references(ctcf, ["a"], tokenize)]
    assert "No, @a does not contain a CTCF motif." in texts and len(texts) == 6
    assert card_references(ctcf, [], tokenize) == []  # no tag to fill in


# -- how many tokens a step guesses ----------------------------------------------------


def test_width_grows_with_acceptance_and_shrinks_with_batch_size() -> None:
    acceptance = Acceptance()
    one_good_row = [([1, 2, 3, 4], REFERENCE)]
    assert acceptance.width(one_good_row, 4) >= 2  # at batch 1 a guess costs little
    assert acceptance.width([([], 0)] * 8, 4) == 0  # nothing to guess
    assert acceptance.width([([1], 1)] * 32, 4) == 0  # poor guesses, costly rows
    for _ in range(20):  # single-token matches keep failing
        acceptance.record(1, 1, 0)
    assert acceptance.rate(1) < 0.02
    assert acceptance.width([([1, 2], 1)], 4) == 0
    for _ in range(20):  # reference drafts keep being right
        acceptance.record(REFERENCE, 4, 4)
    assert acceptance.rate(REFERENCE) > 0.9
    assert acceptance.width([([1, 2, 3, 4], REFERENCE)] * 32, 4) >= 2


# -- decoding with drafts: the same tokens, fewer decoder calls --------------------------


def _count_calls(model: ChatNTModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count decoder calls (prompt included) made through ``model.decoder``."""
    calls = [0]
    forward = model.decoder.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.decoder, "forward", counted)
    return calls


def _batch(model: ChatNTModel) -> Any:
    """Four rows of different lengths (left padding): one sequence, two, none."""
    questions = [
        "Is there a TATA box in @p.fna?",
        "Compare @p.fna with @q.fna, please.",
        "What does @p.fna contain, tell me?",
        "Hi",
    ]
    sequences = [{"p.fna": DNA}, {"p.fna": DNA, "q.fna": DNA[::-1]}, {"p.fna": DNA[::-1]}, {}]
    return model.prompt_batch(questions, sequences)


@pytest.mark.parametrize("lora", [False, True])
def test_drafted_answers_equal_plain_greedy_ones(
    lora: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = lora_tiny_model("first_sequence" if lora else None)
    batch = _batch(model)
    config = GenerationConfig(max_new_tokens=16, ignore_eos=True)
    plain = generate_ids(model, batch, replace(config, draft_tokens=0))
    recomputed = generate_ids(model, batch, replace(config, use_cache=False))
    assert plain == recomputed
    # references: each row's own answer with a wrong token in the middle, and a decoy
    references = [[[*row[:6], row[6] + 1, *row[7:]], [5, 6, 7, 8]] for row in plain]
    calls = _count_calls(model, monkeypatch)  # the shared prefix is cached by now
    drafted = generate_ids(model, batch, config, references=references)
    assert drafted == plain
    assert calls[0] < 1 + 15  # the prompt, then fewer calls than one per token
    calls[0] = 0
    assert generate_ids(model, batch, config) == plain  # prompt and answer n-grams only
    assert calls[0] <= 1 + 15


def test_drafts_stop_at_a_stop_token_and_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    model = lora_tiny_model(None)
    batch = _batch(model)
    plain = generate_ids(model, batch, GenerationConfig(12, ignore_eos=True, draft_tokens=0))
    references = [[row] for row in plain]  # perfect guesses
    stop = plain[0][4]  # a token the first row writes mid-answer
    for config in (
        GenerationConfig(12, ignore_eos=True, stop_token_ids=(stop,)),
        GenerationConfig(5, ignore_eos=True),
        GenerationConfig(1, ignore_eos=True),
    ):
        expected = generate_ids(model, batch, replace(config, draft_tokens=0))
        drafted = generate_ids(model, batch, config, references=references)
        assert drafted == expected
    assert len(expected[0]) == 1 and all(stop not in row for row in drafted)


def test_without_a_grid_the_decoder_builds_its_own_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rejected drafts leave holes in the padding mask; a decoder that takes an attention
    grid gets one, any other the padding mask, with the same answers."""
    model = lora_tiny_model(None)
    batch = _batch(model)
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    plain = generate_ids(model, batch, replace(config, draft_tokens=0))
    references = [[[*row[:3], row[3] + 1, *row[4:]]] for row in plain]
    with_grid = generate_ids(model, batch, config, references=references)
    monkeypatch.setattr(model.decoder, "supports_tree_attention", False)
    without = generate_ids(model, batch, config, references=references)
    assert with_grid == without == plain


def test_sampling_does_not_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    model = lora_tiny_model(None)
    batch = _batch(model)
    config = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=3, ignore_eos=True)
    undrafted = generate_ids(model, batch, replace(config, draft_tokens=0))  # prefix cached
    calls = _count_calls(model, monkeypatch)
    assert generate_ids(model, batch, config, references=[[[1, 2, 3]]] * 4) == undrafted
    per_token = calls[0]
    calls[0] = 0
    generate_ids(model, batch, replace(config, draft_tokens=0))
    assert per_token == calls[0] == 1 + 7  # the prompt, then one call per token


def test_chatnt_generate_drafts_from_the_matched_card() -> None:
    chat = ChatNT(lora_tiny_model(None))
    question = "Is there a CTCF binding site in @a.fna?"
    batch = chat.model.prompt_batch([question], [{"a.fna": DNA}])
    card = chat.find_task(question).card
    assert card is not None and card.name == "demo-ctcf-site"
    (references,) = batch_references(batch, [question], [card], chat.model.decoder.tokenize)
    texts = [chat.model.decoder.detokenize(ids) for ids in references]
    shown = "@" + next(iter(batch.user_names[0])) if batch.user_names[0] else "@a.fna"
    assert any(shown in text and "CTCF" in text for text in texts)
    plain = chat.generate([question], [{"a.fna": DNA}], max_new_tokens=8)
    assert plain == [
        t.strip()
        for t in chat.model.answer_texts(
            batch, generate_ids(chat.model, batch, GenerationConfig(8, draft_tokens=0))
        )
    ]


def test_drafting_keeps_the_prompt_state_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Multi-token steps write into the reserved copy, never into the prompt's cache."""
    from chatnt_core.inference.generation import continue_from, run_prompt

    model = lora_tiny_model(None)
    batch = _batch(model)
    state = run_prompt(model, batch, model.embed_prompt(batch))
    before = [layer.keys.clone() for layer in state.past.layers]
    config = GenerationConfig(max_new_tokens=10, ignore_eos=True)
    plain = generate_ids(model, batch, replace(config, draft_tokens=0))
    drafted = continue_from(model, state, batch.input_ids, config, [[row] for row in plain])
    assert drafted == plain
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, state.past.layers))


def test_guesses_no_row_kept_leave_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guess rejected by every row is dropped from the cache (``drop_cache_tail``), so a
    batch without padding never needs a mask with holes; a decoder that cannot drop keeps
    it masked out instead, with the same answers."""
    model = lora_tiny_model(None)
    batch = model.prompt_batch(["Is there a TATA box in @p.fna?"], [{"p.fna": DNA}])
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    (plain,) = generate_ids(model, batch, replace(config, draft_tokens=0))
    references = [[[*plain[:3], plain[3] + 1, plain[4] + 1, *plain[5:]]]]  # wrong from 4th
    masks: list[torch.Tensor] = []
    forward = model.decoder.forward

    def recorded(embeds: torch.Tensor, mask: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        masks.append(mask)
        return forward(embeds, mask, *args, **kwargs)

    monkeypatch.setattr(model.decoder, "forward", recorded)
    assert generate_ids(model, batch, config, references=references) == [plain]
    fed = [mask.shape[-1] for mask in masks]
    assert all(mask.dim() == 2 and bool(mask.all()) for mask in masks)
    assert fed[-1] == batch.input_ids.shape[1] + len(plain) - 1  # no rejected guess left
    masks.clear()
    monkeypatch.setattr(model.decoder, "drop_cache_tail", lambda past, tokens: False)
    assert generate_ids(model, batch, config, references=references) == [plain]
    assert not all(bool(mask.all()) for mask in masks)  # the rejected guess, masked out


def test_chat_turns_draft_from_the_card_they_ask_about(monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation passes the matched card's phrasings (with the tag as the prompt
    shows it) to decoding; the answers are those of decoding without guesses."""
    import chatnt_core.inference.conversation as conversation

    seen: list[Any] = []
    generate = conversation.generate_ids

    def recorded(*args: Any, references: Any = None, **kwargs: Any) -> Any:
        seen.append(references)
        return generate(*args, references=references, **kwargs)

    monkeypatch.setattr(conversation, "generate_ids", recorded)
    chat = ChatNT(lora_tiny_model(None))
    question = "Is there a CTCF binding site in @a.fna?"
    guessed = chat.chat(max_new_tokens=8)
    first = guessed.ask(question, {"a.fna": DNA}).text
    second = guessed.ask("Hi there").text  # no card: no references
    (references,), (none,) = seen
    texts = [chat.model.decoder.detokenize(ids) for ids in references]
    assert any("CTCF" in text and "@" in text for text in texts) and none == []
    plain = chat.chat()
    plain.session.generation = GenerationConfig(8, draft_tokens=0)
    assert [plain.ask(question, {"a.fna": DNA}).text, plain.ask("Hi there").text] == [
        first,
        second,
    ]
