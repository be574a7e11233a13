"""Built records name their sequences with file-like tags from per-split pools, and demo
training records sometimes go on with a general question that names no sequence."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from chatnt_core.data.demo import (
    GENERAL_QUESTIONS,
    GENERAL_TURN_RATE,
    demo_cards,
    demo_records,
)
from chatnt_core.data.tasks import (
    TAG_SUFFIX_CHOICES,
    TEST_TAG_NAMES,
    TRAIN_TAG_NAMES,
    RecordMaker,
    draw_tag_name,
    fill,
    get_task_card,
    tag_names,
    tag_stem,
)
from chatnt_core.evaluation.parsing import parse_answer
from chatnt_core.modality import Modality, modality_from_tag
from chatnt_core.plugins import PluginRegistry
from chatnt_core.prompt import find_tags


def test_pools_are_disjoint_realistic_and_parse_as_tags() -> None:
    assert len(set(TRAIN_TAG_NAMES)) == len(TRAIN_TAG_NAMES) >= 35
    assert len(set(TEST_TAG_NAMES)) == len(TEST_TAG_NAMES) >= 10
    assert not set(TRAIN_TAG_NAMES) & set(TEST_TAG_NAMES)
    assert not {n.lower() for n in TRAIN_TAG_NAMES} & {n.lower() for n in TEST_TAG_NAMES}
    assert tag_names("train") == TRAIN_TAG_NAMES and tag_names("test") == TEST_TAG_NAMES
    for name in TRAIN_TAG_NAMES + TEST_TAG_NAMES:
        assert "." not in name
        for modality, suffixes in TAG_SUFFIX_CHOICES.items():
            for suffix in suffixes:
                tag = name + suffix
                # the tag survives a sentence around it and says its modality
                assert find_tags(f"Is there a site in @{tag}?") == [tag]
                assert modality_from_tag(tag) == modality and tag_stem(tag) == name
    assert set(TAG_SUFFIX_CHOICES[Modality.DNA]) == {".fna", ".fa", ".dna"}


def test_draw_tag_name_is_seeded_per_split_and_avoids_taken_names() -> None:
    draws = [draw_tag_name(random.Random(4), Modality.DNA, "train") for _ in range(2)]
    assert draws[0] == draws[1] and tag_stem(draws[0]) in TRAIN_TAG_NAMES
    rng = random.Random(0)
    test_tags = [draw_tag_name(rng, Modality.DNA, "test") for _ in range(200)]
    assert {tag_stem(t) for t in test_tags} == set(TEST_TAG_NAMES)
    assert {"." + t.split(".", 1)[1] for t in test_tags} == {".fna", ".fa", ".dna"}
    protein = draw_tag_name(rng, Modality.PROTEIN, "train")
    assert protein.endswith(".faa") and modality_from_tag(protein) == Modality.PROTEIN
    taken = [name + ".fa" for name in TEST_TAG_NAMES[1:]]
    assert all(
        tag_stem(draw_tag_name(rng, Modality.DNA, "test", taken)) == TEST_TAG_NAMES[0]
        for _ in range(20)
    )
    with pytest.raises(ValueError, match="all 12 test tag names are already taken"):
        draw_tag_name(rng, Modality.DNA, "test", [n + ".fna" for n in TEST_TAG_NAMES])


def test_record_maker_pairs_get_two_names_and_answers_name_each() -> None:
    card = get_task_card("promoters", PluginRegistry())
    maker = RecordMaker(card, "test", random.Random(1), multi_sequence=1.0)
    records = []
    for i in range(40):
        records += maker.feed((["ACGT" * (i + 1)], "promoter" if i % 2 else "non_promoter", None))
    assert len(records) == 20
    for record in records:
        first, second = (s["name"] for s in record["sequences"])
        assert tag_stem(first) != tag_stem(second)
        assert {tag_stem(first), tag_stem(second)} <= set(TEST_TAG_NAMES)
        (turn,) = record["turns"]
        assert find_tags(turn["user"]) == [first, second]
        assert find_tags(turn["assistant"]) == [first, second]


def test_demo_tags_vary_and_test_tags_are_never_training_tags() -> None:
    train, test = demo_records("train", 100, seed=5), demo_records("test", 50, seed=5)
    train_tags = Counter(s["name"] for r in train for s in r["sequences"])
    test_tags = Counter(s["name"] for r in test for s in r["sequences"])
    assert {tag_stem(t) for t in train_tags} <= set(TRAIN_TAG_NAMES)
    assert {tag_stem(t) for t in test_tags} <= set(TEST_TAG_NAMES)
    assert len({tag_stem(t) for t in train_tags}) >= 30  # every record draws its own
    assert max(train_tags.values()) < 0.05 * len(train)
    assert {t.rsplit(".", 1)[1] for t in train_tags} == {"fna", "fa", "dna"}
    for record in train + test:
        tags = {s["name"] for s in record["sequences"]}
        for turn in record["turns"]:
            assert set(find_tags(turn["user"])) <= tags
            assert set(find_tags(turn["assistant"])) <= tags


def test_general_questions_are_short_answers_without_tags() -> None:
    questions = [q for q, _ in GENERAL_QUESTIONS]
    assert 18 <= len(GENERAL_QUESTIONS) <= 25 and len(set(questions)) == len(questions)
    for question, answer in GENERAL_QUESTIONS:
        assert question.endswith("?") and not find_tags(question) and not find_tags(answer)
        assert answer.endswith(".") and len(answer) < 250


def test_a_few_training_records_go_on_with_a_general_question() -> None:
    records = demo_records("train", 100, seed=3)
    general = [r for r in records if len(r["turns"]) == 2 and not find_tags(r["turns"][1]["user"])]
    assert 0.4 * GENERAL_TURN_RATE < len(general) / len(records) < 2 * GENERAL_TURN_RATE
    answers = dict(GENERAL_QUESTIONS)
    cards = demo_cards()
    for record in general:
        first, second = record["turns"]
        question = next(q for q in answers if second["user"].endswith(q))
        assert second["assistant"] == answers[question]
        assert not find_tags(second["assistant"])
        # the record keeps the task and target of its sequence turn
        card = cards[record["task"]]
        tag = record["sequences"][0]["name"]
        assert first["user"] in {fill(q, {"seq": tag}) for q in card.questions.train}
        parsed = parse_answer(card, first["assistant"])
        if card.kind == "regression":
            assert record["label"] is None and record["value"] is not None
            assert parsed.value == pytest.approx(record["value"], abs=0.006)
        else:
            assert parsed.label == record["label"] is not None and record["value"] is None
    assert any(r["turns"][1]["user"] not in answers for r in general)  # some open with thanks
    assert all(len(r["turns"]) == 1 for r in demo_records("test", 50, seed=3))
