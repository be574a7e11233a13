"""Answer parsing per task card: labels, negations, synonyms, numbers, junk, task matching."""

from __future__ import annotations

import re

import pytest

from chatnt_core.data.tasks import TaskCard, fill, load_task_cards
from chatnt_core.evaluation.parsing import ParsedAnswer, match_task, parse_answer


@pytest.fixture(scope="module")
def cards() -> dict[str, TaskCard]:
    return load_task_cards()


LABELS = [
    # demo binary card
    ("demo-ctcf-site", "Yes, @seq.fna contains a CTCF binding site.", "ctcf_site"),
    ("demo-ctcf-site", "No, there is no CTCF binding site in @seq.fna.", "no_ctcf_site"),
    ("demo-ctcf-site", "no, CTCF has NO site in @seq.fna", "no_ctcf_site"),
    ("demo-ctcf-site", "Yes.", "ctcf_site"),
    ("demo-ctcf-site", "No", "no_ctcf_site"),
    ("demo-ctcf-site", "Yes, I found one near the start of @seq.fna.", "ctcf_site"),
    ("demo-ctcf-site", "@seq.fna contains a CTCF binding site.", "ctcf_site"),  # no "Yes,"
    ("demo-ctcf-site", "I think @seq.fna does not contain a CTCF motif.", "no_ctcf_site"),
    ("demo-ctcf-site", "The sequence @seq.fna has no CTCF site.", "no_ctcf_site"),
    ("demo-ctcf-site", "CTCF doesn't bind @seq.fna.", "no_ctcf_site"),
    ("demo-ctcf-site", "There is a CTCF motif in @other.fna.", "ctcf_site"),
    ("demo-ctcf-site", "negative", "no_ctcf_site"),  # a synonym as the whole answer
    ("demo-ctcf-site", "1", "ctcf_site"),
    # demo multi-label card
    ("demo-tf-site", "@seq.fna contains a TBP binding site.", "TBP"),
    ("demo-tf-site", "The site planted in @seq.fna is bound by GATA-1.", "GATA1"),
    ("demo-tf-site", "It is not CTCF but REST.", "REST"),
    ("demo-tf-site", "A TATA box, so TBP.", "TBP"),  # synonym and name of one label
    ("demo-tf-site", "nrsf", "REST"),
    # paper multi-label cards
    ("enhancer-types", "No, @seq.fna is not an enhancer.", "non_enhancer"),
    ("enhancer-types", "@seq.fna is not an enhancer.", "non_enhancer"),
    ("enhancer-types", "It is not a strong enhancer, but a weak one.", "weak_enhancer"),
    ("enhancer-types", "Yes, a strong enhancer is present within @seq.fna.", "strong_enhancer"),
    ("enhancer-types", "No, it is a weak enhancer.", "weak_enhancer"),
    ("enhancer-types", "No.", "non_enhancer"),  # the one label whose answers say "No"
    ("nt-splice-sites-all", "@s.fna contains neither a donor nor an acceptor splice site.", "none"),
    ("nt-splice-sites-all", "It has neither a donor nor an acceptor.", "none"),
    ("nt-splice-sites-all", "Yes, there is an acceptor splice site located in @s.fna.", "acceptor"),
    ("nt-splice-sites-all", "A 3' splice site.", "acceptor"),
    ("nt-splice-sites-all", "No splice site here.", "none"),
    # paper binary card
    ("chromatin-accessibility-hepg2", "The region is not accessible in HepG2.", "not_accessible"),
    ("chromatin-accessibility-hepg2", "It is open chromatin in HepG2 cells.", "accessible"),
    ("chromatin-accessibility-hepg2", "closed", "not_accessible"),
    ("plant-lncrnas-sorghum", "It seems @seq.fna is a lncRNA rather than an mRNA.", "lncrna"),
]

UNPARSEABLE = [
    ("demo-ctcf-site", "I am not sure.", "hedged"),
    ("demo-ctcf-site", "Maybe there is a CTCF site.", "hedged"),
    ("demo-ctcf-site", "I don't know whether @seq.fna has one.", "hedged"),
    ("demo-ctcf-site", "#@$ 12 ;;", "no yes/no"),
    ("demo-ctcf-site", "", "empty"),
    ("demo-ctcf-site", "There is a CTCF site, but no other site.", "ambiguous"),
    (
        "demo-ctcf-site",
        "Yes, CTCF has a binding site in @a.fna. No, there is no CTCF binding site in @a.fna.",
        "ambiguous",
    ),
    ("demo-tf-site", "It carries CTCF and TBP sites.", "ambiguous"),
    ("demo-tf-site", "No.", "names no label"),  # no label of this card answers "No"
    ("demo-tf-site", "The planted site is bound by a factor.", "names no label"),
    ("enhancer-types", "cannot tell from @seq.fna", "hedged"),
    ("nt-splice-sites-all", "It is both a donor and an acceptor.", "ambiguous"),
]

# (card, answer, value, out_of_range)
NUMBERS = [
    ("demo-gc-content", "The GC content of @seq.fna is 0.45.", 0.45, False),
    ("demo-gc-content", "The GC content of @seq1.fna is 0.45.", 0.45, False),  # digit in tag
    ("demo-gc-content", "The GC content of @chr2_1000.fna is .5", 0.5, False),
    ("demo-gc-content", "G and C make up 4.5e-1 of @seq.fna.", 0.45, False),
    ("demo-gc-content", "The GC content of @seq3.fna is 1.2 x 10^-1", 0.12, False),
    ("demo-gc-content", "@seq2.fna has a GC fraction of -0.2.", 0.0, True),  # clipped
    ("demo-gc-content", "The GC content of @seq.fna is 3.", 1.0, True),
    ("demo-gc-content", "0.62", 0.62, False),
    ("demo-gc-content", "About 45% of it.", 0.45, False),  # percent on a 0-1 card
    ("demo-gc-content", "In 2 words: the GC content of @s.fna is 0.3", 0.3, False),  # phrase first
    ("demo-motif-count", "The number of REST binding sites in @seq.fna is 2.", 2.0, False),
    ("demo-motif-count", "The REST motif count of @seq9.fna is two.", 2.0, False),
    ("demo-motif-count", "@seq.fna has a REST site count of 7.", 3.0, True),
    (
        "dev-enhancer-activity",
        "That sequence @seq.fna has a developmental enhancer activity score of -3.25.",
        -3.25,
        False,
    ),
    ("dev-enhancer-activity", "In HEK293 cells it is \u22121.5", -1.5, False),  # unicode minus
    ("dev-enhancer-activity", "+2.5E+0", 2.5, False),
    (
        "protein-melting-point",
        "The melting point of the protein from @p.fna is 80.81.",
        80.81,
        False,
    ),
    ("protein-melting-point", "@p.fna encodes a protein that melts at 120.", 100.0, True),
]

NOT_NUMBERS = [
    ("demo-gc-content", "The GC content of @seq7.fna is unknown."),  # only a digit in the tag
    ("demo-gc-content", "I'm not sure, perhaps 0.5."),
    ("demo-gc-content", "HEK293 and H3K27ac"),  # digits inside words
    ("demo-gc-content", "1e999"),  # not finite
    ("protein-melting-point", "   "),
]


@pytest.mark.parametrize(("task", "text", "label"), LABELS)
def test_labels(cards: dict[str, TaskCard], task: str, text: str, label: str) -> None:
    parsed = parse_answer(cards[task], text)
    assert (parsed.label, parsed.parseable, parsed.value) == (label, True, None), parsed.reason


@pytest.mark.parametrize(("task", "text", "why"), UNPARSEABLE)
def test_unparseable_labels(cards: dict[str, TaskCard], task: str, text: str, why: str) -> None:
    parsed = parse_answer(cards[task], text)
    assert parsed == ParsedAnswer(None, None, False, False, parsed.reason)
    assert why in parsed.reason


@pytest.mark.parametrize(("task", "text", "value", "clipped"), NUMBERS)
def test_numbers(
    cards: dict[str, TaskCard], task: str, text: str, value: float, clipped: bool
) -> None:
    parsed = parse_answer(cards[task], text)
    assert parsed.parseable and parsed.label is None, parsed.reason
    assert parsed.value == pytest.approx(value)
    assert parsed.out_of_range is clipped
    assert ("clipped" in parsed.reason) is clipped


@pytest.mark.parametrize(("task", "text"), NOT_NUMBERS)
def test_no_number_is_unparseable(cards: dict[str, TaskCard], task: str, text: str) -> None:
    parsed = parse_answer(cards[task], text)
    assert not parsed.parseable and parsed.value is None and parsed.reason


def test_every_shipped_answer_template_parses_back(cards: dict[str, TaskCard]) -> None:
    """Each card's own answers, with a digit-bearing tag, with or without "Yes,"/"No,"."""
    for card in cards.values():
        tags = {p: f"{p}42.fna" for p in card.seq_placeholders}
        if card.kind == "regression":
            assert card.value is not None and card.value.min is not None
            low, high = card.value.min, card.value.max or card.value.min + 1
            for target in (low, high, (low + high) / 2 + 0.37):
                expected = float(card.format_value(target))
                for template in card.answers or []:
                    parsed = parse_answer(card, fill(template, tags, card.format_value(target)))
                    assert parsed.value == pytest.approx(expected), (card.name, template)
                    assert not parsed.out_of_range
            continue
        for label in card.labels or []:
            for template in label.answers:
                text = fill(template, tags)
                bare = "It seems that " + re.sub(r"^(yes|no),\s*", "", text, flags=re.I)
                for variant in (text, text.upper(), text.rstrip("."), bare):
                    assert parse_answer(card, variant).label == label.name, (card.name, variant)


def test_match_task_by_question_pool(cards: dict[str, TaskCard]) -> None:
    found = match_task("Is a CTCF site hidden in @promoter.fna?", cards.values())
    assert found is not None and found.name == "demo-ctcf-site"
    # train pool too; tag name, case and spacing do not matter
    found = match_task("  was a ctcf  site planted in @x1.fna? ", cards.values())
    assert found is not None and found.name == "demo-ctcf-site"
    found = match_task("What is the G+C content of the sequence @s.fna?", cards.values())
    assert found is not None and found.name == "demo-gc-content"
    # a question close to, not in, a pool matches too (see tests/test_task_matching.py)
    found = match_task("Is a CTCF site hidden somewhere in @p.fna?", cards.values())
    assert found is not None and found.name == "demo-ctcf-site"
    assert match_task("Write a short poem about @p.fna.", cards.values()) is None
    assert match_task("Is a CTCF site hidden in @promoter.fna?", []) is None
    # a question two cards share is ambiguous
    card = cards["demo-ctcf-site"]
    twin = card.model_copy(update={"name": "twin"})
    assert match_task("Is a CTCF site hidden in @p.fna?", [card, twin]) is None
