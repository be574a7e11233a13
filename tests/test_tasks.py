"""Task cards: every shipped card validates, the paper's 45 tasks are there, bad cards fail."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from conftest import InstallPlugin

from chatnt_core.data.tasks import (
    TaskCard,
    TaskCardError,
    get_task_card,
    load_task_cards,
    normalise,
    parse_card,
)
from chatnt_core.errors import DuplicateComponentError
from chatnt_core.plugins import PluginRegistry
from chatnt_core.presets import registry_root

T1, T2 = "Supplementary Table 1", "Supplementary Table 2"
# Supplementary Table 1: the 18 Nucleotide Transformer benchmark tasks (all scored by MCC).
TABLE_1 = [
    "H3 histone", "H4 histone", "H3K4me1", "H3K4me2", "H3K4me3", "H3K9ac", "H3K14ac",
    "H3K36me3", "H3K79me3", "H4ac", "Promoters", "TATA promoters", "Non-TATA promoters",
    "Splice sites", "Splice donors", "Splice acceptors", "Enhancers", "Enhancer types",
]  # fmt: skip
# Supplementary Table 2: name as printed (typos included), metric, baseline model and figure.
TABLE_2 = [
    ("H3 histone", "mcc", "NT", 0.79),
    ("H4 histone", "mcc", "NT", 0.81),
    ("H3K4me1 (K562)", "auroc", "DNABERT", 0.71),
    ("H3K4me3 (K562)", "auroc", "DNABERT", 0.90),
    ("H3K27ac (K562)", "auroc", "DNABERT", 0.76),
    ("DNA methylation (HUFS64)", "auroc", "DNABERT", 0.96),
    ("Chrom. Accessibility (HepG2)", "f1", "ChromTransfer", 0.79),
    ("Promoters", "mcc", "NT", 0.95),
    ("TATA promoters", "mcc", "NT", 0.94),
    ("Non-TATA promoters", "mcc", "NT", 0.96),
    ("Enhancers", "mcc", "NT", 0.55),
    ("Enhancer types", "mcc", "NT", 0.41),
    ("Enhancers (plants)", "mcc", "AgroNT", 0.60),
    ("Splice sites", "mcc", "NT", 0.98),
    ("Splice donors", "mcc", "NT", 0.97),
    ("Splice acceptors", "mcc", "NT", 0.96),
    ("lncRNAs", "mcc", "AgroNT", 0.60),
    ("Promoter strength (tobacco leaf)", "pearson", "AgroNT", 0.86),
    ("Promoter strength (maize protoplasts)", "pearson", "AgroNT", 0.84),
    ("Dev enhancers", "pearson", "DeepSTARR", 0.68),
    ("Hk enhancers", "pearson", "DeepSTARR", 0.74),
    ("RNA Polyadenylation", "pearson", "APARENT2", 0.90),
    ("RNA degradation (human)", "pearson", "Saluki", 0.74),
    ("RNA degradation (mouse)", "pearson", "Saluki", 0.71),
    ("Protein fluorescence", "pearson", "ESM2", 0.95),
    ("Protein stability", "pearson", "ESM2", 0.76),
    ("Protein meltonne", "pearson", "ESM2", 0.85),
]
# ChatNT figures the paper states in its text (the rest are only plotted).
CHATNT_IN_TEXT = {
    "RNA Polyadenylation": 0.91,
    "Protein meltonne": 0.89,
    "RNA degradation (human)": 0.62,
    "RNA degradation (mouse)": 0.63,
}


@pytest.fixture(scope="module")
def cards() -> dict[str, TaskCard]:
    return load_task_cards(PluginRegistry())  # shipped YAML only, no plugin discovery


def by_paper_task(cards: dict[str, TaskCard], table: str) -> dict[str, TaskCard]:
    found = {}
    for card in cards.values():
        if card.source.paper_table == table:
            assert card.source.paper_task not in found, f"two cards for {table} row {card.name}"
            found[card.source.paper_task] = card
    return found


def test_every_shipped_card_validates_and_matches_its_file(cards: dict[str, TaskCard]) -> None:
    files = sorted((registry_root() / "tasks").glob("*.yaml"))
    assert len(files) == len(cards) >= 49
    for path in files:
        card = TaskCard.model_validate(yaml.safe_load(path.read_text()))
        assert card.name == path.stem
        assert len(card.questions.train) >= 10 and len(card.questions.test) >= 5


def test_question_pools_are_disjoint_within_and_across_cards(cards: dict[str, TaskCard]) -> None:
    # All tasks are trained together, so a test phrasing must not be any card's train phrasing.
    train = {normalise(q) for card in cards.values() for q in card.questions.train}
    test = {normalise(q) for card in cards.values() for q in card.questions.test}
    assert train.isdisjoint(test)
    for card in cards.values():
        for question in [*card.questions.train, *card.questions.test]:
            assert question.count("{seq}") == 1, (card.name, question)


def test_all_45_paper_tasks_are_present_with_the_papers_metric(cards: dict[str, TaskCard]) -> None:
    table_1 = by_paper_task(cards, T1)
    table_2 = by_paper_task(cards, T2)
    assert sorted(table_1) == sorted(TABLE_1)
    assert sorted(table_2) == sorted(name for name, *_ in TABLE_2)
    for name in TABLE_1:
        card = table_1[name]
        assert (card.metric, card.paper and card.paper.metric) == ("mcc", "mcc"), name
    for name, metric, model, baseline in TABLE_2:
        card = table_2[name]
        assert card.paper is not None
        assert (card.metric, card.paper.metric) == (metric, metric), name
        assert (card.paper.baseline_model, card.paper.baseline) == (model, baseline), name
        assert card.paper.chatnt == CHATNT_IN_TEXT.get(name), name
        assert (card.kind == "regression") == (metric == "pearson"), name
    assert {table_2[n].kind for n in ("Enhancer types", "Splice sites")} == {"multi_label"}
    assert sum(c.kind == "regression" for c in table_2.values()) == 10  # Methods 2.2


VALID: dict[str, Any] = {
    "name": "toy-promoter",
    "description": "Toy binary task.",
    "source": {"study": "tests"},
    "modality": "dna",
    "kind": "binary",
    "metric": "mcc",
    "labels": [
        {"name": "yes", "positive": True, "answers": ["Yes, {seq} has one."]},
        {"name": "no", "answers": ["No, {seq} has none."]},
    ],
    "questions": {
        "train": [f"Train question {i} about {{seq}}?" for i in range(10)],
        "test": [f"Test question {i} about {{seq}}?" for i in range(5)],
    },
}


def variant(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    data.update(changes)
    return data


def test_the_valid_toy_card_passes() -> None:
    assert parse_card(VALID, "toy").name == "toy-promoter"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            variant(
                questions={
                    **VALID["questions"],
                    "test": [
                        " train  QUESTION 3 about {seq}? ",
                        *(f"T{i} {{seq}}?" for i in range(4)),
                    ],
                }
            ),
            "overlap",
        ),
        (
            variant(questions={**VALID["questions"], "train": ["No placeholder here?"] * 10}),
            r"\{seq\} exactly once",
        ),
        (
            variant(
                questions={
                    **VALID["questions"],
                    "test": [f"Q{i} {{seq}} and {{seq}}?" for i in range(5)],
                }
            ),
            r"\{seq\} exactly once",
        ),
        (
            variant(
                questions={**VALID["questions"], "test": [f"Q{i} {{sequence}}?" for i in range(5)]}
            ),
            "unknown placeholder",
        ),
        (
            variant(labels=[*VALID["labels"], {"name": "maybe", "answers": ["Maybe {seq}."]}]),
            "exactly 2 labels",
        ),
        (
            variant(labels=[{**VALID["labels"][0], "positive": False}, VALID["labels"][1]]),
            "exactly one label",
        ),
        (variant(kind="regression"), "regression card has no 'labels'"),
        (variant(extra_field=1), "extra"),
        (variant(paper={"metric": "mcc", "chatnt": None, "baseline": 0.5}), "note"),
        (
            variant(
                questions={
                    "train": VALID["questions"]["train"][:9],
                    "test": VALID["questions"]["test"],
                }
            ),
            "at least 10",
        ),
    ],
    ids=[
        "pools-overlap-after-normalising",
        "missing-seq",
        "seq-twice",
        "unknown-placeholder",
        "binary-with-3-labels",
        "binary-without-positive",
        "regression-with-labels",
        "extra-field",
        "null-figure-without-note",
        "too-few-train-questions",
    ],
)
def test_bad_cards_are_rejected_with_a_one_line_reason(data: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskCardError, match=message) as info:
        parse_card(data, "toy.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("toy.yaml: ")


def test_regression_answers_need_value_placeholder() -> None:
    regression = variant(
        kind="regression",
        metric="pearson",
        labels=None,
        value={"min": 0, "max": 1, "decimals": 2},
        answers=["{seq} scores {value}."],
    )
    card = parse_card(regression, "toy")
    assert card.format_value(0.125) == "0.13" and card.format_value(0.5) == "0.50"
    with pytest.raises(TaskCardError, match=r"\{value\} exactly once"):
        parse_card({**regression, "answers": ["{seq} scores high."]}, "toy")


PLUGIN_TEMPLATE = """
import copy
from pydantic import BaseModel
import chatnt_core

CARD = {card!r}

@chatnt_core.hookimpl
def register_tasks(register):
    register({name!r}, lambda: copy.deepcopy(CARD), BaseModel)
"""


def test_plugin_registered_card_is_merged(install_plugin: InstallPlugin) -> None:
    card = variant(name="lab-toy")
    source = PLUGIN_TEMPLATE.format(card=card, name="lab-toy")
    install_plugin("chatnt-labtasks", "lab-tasks", "lab_tasks_plugin", source)
    cards = load_task_cards()
    assert cards["lab-toy"].labels is not None and cards["lab-toy"].source.study == "tests"
    assert "promoters" in cards  # YAML cards are still there
    assert get_task_card("lab-toy").name == "lab-toy"


def test_chatnt_plugins_lists_every_card_with_its_origin(
    install_plugin: InstallPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    from chatnt_core.cli import main

    source = PLUGIN_TEMPLATE.format(card=variant(name="lab-toy"), name="lab-toy")
    install_plugin("chatnt-labtasks", "lab-tasks", "lab_tasks_plugin", source)
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins", "--json"])  # the card's params model is bare BaseModel: no crash
    assert exit_info.value.code == 0
    tasks = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert tasks["lab-toy"]["origin"] == "plugin 'lab-tasks'"
    assert tasks["promoters"]["origin"] == "registry/tasks/promoters.yaml"
    assert len(tasks) == len(load_task_cards())
    with pytest.raises(SystemExit):
        main(["plugins"])
    table = capsys.readouterr().out
    assert "lab-toy" in table and "registry/tasks/demo-ctcf-site.yaml" in table


def test_plugin_card_with_a_shipped_name_raises(install_plugin: InstallPlugin) -> None:
    source = PLUGIN_TEMPLATE.format(card=variant(name="promoters"), name="promoters")
    install_plugin("chatnt-dupetasks", "dupe-tasks", "dupe_tasks_plugin", source)
    with pytest.raises(DuplicateComponentError, match="promoters.*dupe-tasks"):
        load_task_cards()


def test_plugin_card_named_differently_from_its_registration_raises(
    install_plugin: InstallPlugin,
) -> None:
    source = PLUGIN_TEMPLATE.format(card=variant(name="inner-name"), name="outer-name")
    install_plugin("chatnt-oddtasks", "odd-tasks", "odd_tasks_plugin", source)
    with pytest.raises(TaskCardError, match="outer-name.*inner-name"):
        load_task_cards()


def test_get_task_card_suggests_close_names_and_reads_paths(tmp_path: Any) -> None:
    registry = PluginRegistry()
    with pytest.raises(TaskCardError, match="did you mean 'promoters'"):
        get_task_card("promotors", registry)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(variant(name="my-own")))
    assert get_task_card(str(path), registry).name == "my-own"
