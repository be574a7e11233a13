"""The quickstart's behaviour checks on tiny random models (numbers, not quality)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from chatnt_core import ChatNTModel
from chatnt_core.api import ChatNT
from chatnt_core.evaluation.behaviour import (
    english_kept,
    long_chat,
    probability_agreement,
    tag_invariance,
)
from chatnt_core.evaluation.parsing import ParsedAnswer

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"


@pytest.fixture(scope="module")
def bot() -> ChatNT:
    torch.manual_seed(0)
    return ChatNT(ChatNTModel.from_config("tiny-random"))


def test_probability_agreement_counts_parseable_answers_only() -> None:
    parsed = [
        ParsedAnswer("site", None, True),  # p 0.9: agrees
        ParsedAnswer("none", None, True),  # p 0.8: disagrees
        ParsedAnswer(None, None, False),  # unparseable: not counted
        ParsedAnswer("none", None, True),  # p 0.1: agrees
    ]
    evaluation = SimpleNamespace(
        probabilities=np.array([0.9, 0.8, 0.7, 0.1]), positive="site", parsed=parsed
    )
    assert probability_agreement(evaluation) == pytest.approx(2 / 3)  # type: ignore[arg-type]
    evaluation.probabilities = None
    assert probability_agreement(evaluation) is None  # type: ignore[arg-type]


def test_tag_invariance_asks_every_name(bot: ChatNT) -> None:
    names = ("a.fna", "b1.fa", "c_2.dna")
    result = tag_invariance(
        bot,
        ["Is there a CTCF binding site in @seq.fna?"] * 2,
        [DNA, DNA[::-1]],
        names,
        task="demo-ctcf-site",
        max_new_tokens=3,
    )
    assert result.sequences == 2 and result.names == names
    for share in (result.same_label, result.probability_within, result.names_own_tag):
        assert 0.0 <= share <= 1.0
    assert result.max_spread >= 0.0


def test_english_kept_compares_with_the_bare_decoder(bot: ChatNT) -> None:
    kept = english_kept(bot, "What is DNA?", max_new_tokens=5)
    # a tag-free message goes through the same frozen decoder: the same greedy tokens
    assert kept.identical, (kept.ours, kept.bare)


def test_long_chat_runs_the_script_per_pair(bot: ChatNT) -> None:
    script = (
        ("Is there a CTCF binding site in {a}?", "demo-ctcf-site"),
        ("What is the GC content of {b}?", "demo-gc-content"),
        ("Is there a CTCF binding site in {a}?", "demo-ctcf-site"),
    )
    result = long_chat(bot, [(DNA, DNA[::-1])] * 2, script, ("x.fna", "y.fna"), 3)
    assert result.conversations == 2
    assert [m for m, _ in result.transcript] == [
        "Is there a CTCF binding site in @x.fna?",
        "What is the GC content of @y.fna?",
        "Is there a CTCF binding site in @x.fna?",
    ]
    assert 0.0 <= result.last_agrees <= result.last_parseable <= 1.0
