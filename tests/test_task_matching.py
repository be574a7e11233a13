"""Which task card a question belongs to: exact pool questions, close wordings, no match;
and how ``ask`` (API and CLI) reports the match or its absence."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from training_helpers import one_thread

from chatnt_core.api import ChatNT
from chatnt_core.cli import main
from chatnt_core.data.demo import demo_cards
from chatnt_core.data.tasks import TaskCard, load_task_cards
from chatnt_core.evaluation.parsing import MATCH_THRESHOLD, match_question, match_words
from chatnt_core.plugins import PluginRegistry

SEQ = "ACGTTGCAAC" * 4
# Wordings found in no card's pools, and the demo card each asks about.
VARIANTS = {
    "Is there a CTCF site in @s.fna?": "demo-ctcf-site",  # what the quickstart suggests
    "Does @x.fa have a CTCF motif?": "demo-ctcf-site",
    "Could @x.dna be bound by CTCF?": "demo-ctcf-site",
    "What's the GC content of @y.fna?": "demo-gc-content",
    "Is @y.fna GC-rich?": "demo-gc-content",
    "How many REST sites are in @z.fna?": "demo-motif-count",
    "How often does REST bind @z.fna?": "demo-motif-count",
    "Which transcription factor binds @q.fna?": "demo-tf-site",
    "Which TF binds @q?": "demo-tf-site",
}
UNRELATED = [
    "What is a promoter?",  # no sequence at all
    "Is @s.fna a promoter?",  # no demo card asks this
    "Describe @s.fna.",
    "What is the length of @s.fna?",
    "Is @s.fna bound?",  # one shared word is not enough
    "How many CTCF sites are in @s.fna?",  # the count card counts REST
    "Where is the CTCF site in @s.fna?",
]


@pytest.fixture(scope="module")
def demo() -> list[TaskCard]:
    return list(demo_cards().values())


@pytest.fixture(scope="module")
def shipped() -> list[TaskCard]:
    return list(load_task_cards(PluginRegistry()).values())


@pytest.mark.parametrize("question", sorted(VARIANTS))
def test_close_wordings_match_the_right_demo_card(
    question: str, demo: list[TaskCard], shipped: list[TaskCard]
) -> None:
    for cards in (demo, shipped):
        match = match_question(question, cards)
        assert match.card is not None and match.card.name == VARIANTS[question], match.reason
        assert match.how == "similar" and match.score is not None
        assert MATCH_THRESHOLD <= match.score <= 1.0


@pytest.mark.parametrize("question", UNRELATED)
def test_unrelated_questions_match_no_demo_card(question: str, demo: list[TaskCard]) -> None:
    match = match_question(question, demo)
    assert match.card is None and match.how == "none" and match.reason


def test_reasons_say_why_nothing_matched(demo: list[TaskCard]) -> None:
    assert "names no sequence" in match_question("What is a promoter?", demo).reason
    assert "no content words" in match_question("What is @s.fna?", demo).reason
    low = match_question("Is @s.fna a promoter?", demo)
    assert low.score is not None and low.score < MATCH_THRESHOLD and "below" in low.reason
    thin = match_question("Is @s.fna bound?", demo)
    assert "shares only 1 content word" in thin.reason
    # a protein tag rules out the DNA cards, two tags the single-sequence cards
    assert match_question("Is there a CTCF site in @s.faa?", demo).card is None
    pair = match_question("Is there a CTCF site in @a.fna or @b.fna?", demo)
    assert pair.card is None and "2 such sequence(s)" in pair.reason


def test_exact_pool_questions_still_win_and_ties_match_nothing(demo: list[TaskCard]) -> None:
    exact = match_question("Is a CTCF site hidden in @anything.fa?", demo)
    assert exact.card is not None and exact.card.name == "demo-ctcf-site"
    assert (exact.how, exact.score) == ("exact", 1.0)
    ctcf = demo_cards()["demo-ctcf-site"]
    twin = ctcf.model_copy(update={"name": "twin"})
    tie = match_question("Is there a CTCF site in @s.fna?", [ctcf, twin, *demo[1:]])
    assert tie.card is None and "demo-ctcf-site, twin match equally well" in tie.reason
    shared = match_question("Is a CTCF site hidden in @p.fna?", [ctcf, twin])
    assert shared.card is None and "pools of demo-ctcf-site, twin" in shared.reason


def test_content_words_drop_tags_stopwords_and_plurals() -> None:
    assert match_words("What's the GC content of @chr3_10450.fna?") == {"gc", "content"}
    assert match_words("How many REST sites does {seq} have?", is_template=True) == {
        "how",
        "many",
        "rest",
        "site",
    }
    assert match_words("Is CTCF binding @x1.fna?") == match_words("Does CTCF bind {seq}", True)


# ---- ask: the API and the CLI ---------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def bot() -> ChatNT:
    return ChatNT.from_config("tiny-random")


def test_api_answers_say_how_their_card_was_found(bot: ChatNT) -> None:
    close = bot.ask("Is there a CTCF site in @s.fna?", {"s.fna": SEQ}, max_new_tokens=2)
    assert (close.task, close.task_match) == ("demo-ctcf-site", "similar")
    assert close.probability is not None and close.match_score is not None
    exact = bot.ask("Is a CTCF site hidden in @s.fna?", {"s.fna": SEQ}, max_new_tokens=2)
    assert (exact.task_match, exact.match_score) == ("exact", 1.0)
    given = bot.ask("Describe @s.fna.", {"s.fna": SEQ}, task="demo-gc-content", max_new_tokens=2)
    assert (given.task, given.task_match) == ("demo-gc-content", "given")
    general = bot.ask("What is a promoter?", max_new_tokens=2)
    assert general.text == general.text.strip()  # the answer still comes back
    assert general.task is None and general.task_match == "none"
    assert general.probability is None and general.label is None and not general.parseable
    assert "names no sequence" in general.match_note
    chat = bot.chat(max_new_tokens=2)
    chat.ask("Is there a CTCF site in @s.fna?", {"s.fna": SEQ})
    assert chat.ask("What does CTCF do?").task_match == "none"
    assert chat.ask("How many REST sites are in @s.fna?").task == "demo-motif-count"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0), capsys.readouterr().out.rstrip("\n").split("\n")


def test_cli_ask_says_which_card_matched_or_that_none_did(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["ask", "tiny-random", "--seq", f"s.fna={SEQ}", "--max-new-tokens", "2"]
    code, lines = run_cli([*base, "Is there a CTCF site in @s.fna?"], capsys)
    assert code == 0 and lines[-1].startswith("task: demo-ctcf-site (closest match, score ")
    assert "probability: 0." in lines[-1]
    code, lines = run_cli([*base, "Describe @s.fna."], capsys)
    assert code == 0 and lines[-1].startswith("no task card matched this question (")
    assert lines[-1].endswith("): no label or probability; pass --task NAME")
    code, lines = run_cli([*base, "Describe @s.fna.", "--task", "demo-ctcf-site"], capsys)
    assert code == 0 and lines[-1].startswith("task: demo-ctcf-site, ")
    code, lines = run_cli([*base, "Describe @s.fna.", "--json"], capsys)
    answer = json.loads(lines[-1])
    assert code == 0 and answer["task"] is None and answer["task_match"] == "none"
    assert answer["match_note"]
