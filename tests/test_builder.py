"""Dataset builder: tables and FASTA in, instruction records out, bad rows never silent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from chatnt_core.cli import main
from chatnt_core.data.builder import BuildOptions, DataError, build_dataset
from chatnt_core.data.records import RECORD_COLUMNS, record_to_example
from chatnt_core.data.tasks import (
    TRAIN_TAG_NAMES,
    TaskCard,
    fill,
    get_task_card,
    tag_names,
    tag_stem,
)
from chatnt_core.modality import Modality, modality_from_tag
from chatnt_core.model import ChatNTModel
from chatnt_core.plugins import PluginRegistry

NO_PLUGINS = PluginRegistry()


def card(name: str) -> TaskCard:
    return get_task_card(name, NO_PLUGINS)


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "sequence,label") -> Path:
    path.write_text("\n".join([header, *(f"{s},{v}" for s, v in rows)]) + "\n")
    return path


def load(out: Path, split: str) -> list[dict[str, Any]]:
    return list(datasets.load_from_disk(str(out / split)))


def filled(questions: list[str], tag: str) -> set[str]:
    return {fill(q, {"seq": tag}) for q in questions}


def rows(n: int, offset: int = 0) -> list[tuple[str, str]]:
    return [("ACGT"[(i + offset) % 4] * 5 + "ACGTN"[i % 5], str(i % 2)) for i in range(n)]


def test_csv_build_keeps_splits_and_draws_questions_from_the_right_pool(tmp_path: Path) -> None:
    promoters = card("promoters")
    train = write_csv(tmp_path / "train.csv", rows(30))
    test = write_csv(tmp_path / "test.csv", rows(8, offset=1))
    report = build_dataset(promoters, train, test, tmp_path / "out", BuildOptions(seed=3))
    assert (report.splits["train"].records, report.splits["test"].records) == (30, 8)
    train_records, test_records = load(tmp_path / "out", "train"), load(tmp_path / "out", "test")
    assert [r["sequences"][0]["sequence"] for r in train_records] == [s for s, _ in rows(30)]
    for records, split in ((train_records, "train"), (test_records, "test")):
        pool = getattr(promoters.questions, split)
        for record in records:
            tag = record["sequences"][0]["name"]  # a file-like name from the split's pool
            assert tag_stem(tag) in tag_names(split) and modality_from_tag(tag) == Modality.DNA
            assert record["turns"][0]["user"] in filled(pool, tag)
    assert len({r["turns"][0]["user"] for r in train_records}) > 3  # questions actually vary
    for record in train_records + test_records:
        assert set(record) == set(RECORD_COLUMNS) and record["value"] is None
        assert record["sequences"][0]["modality"] == "dna"
        label = promoters.label(record["label"])
        tag = record["sequences"][0]["name"]
        assert record["turns"][0]["assistant"] in filled(label.answers, tag)
    assert [r["label"] for r in train_records[:2]] == ["non_promoter", "promoter"]  # 0/1 synonyms
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["task"] == "promoters" and manifest["seed"] == 3
    assert manifest["card_hash"] == promoters.content_hash()
    assert manifest["splits"]["test"]["records"] == 8


def test_same_seed_same_dataset_other_seed_other_questions(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", rows(40))
    test = write_csv(tmp_path / "test.csv", rows(4))
    users = []
    for i, seed in enumerate([5, 5, 6]):
        out = tmp_path / f"out{i}"
        build_dataset(card("promoters"), train, test, out, BuildOptions(seed=seed))
        users.append([r["turns"][0]["user"] for r in load(out, "train")])
    assert users[0] == users[1] != users[2]


def test_regression_values_are_rounded_in_answers_and_kept_exact(tmp_path: Path) -> None:
    tobacco = card("promoter-strength-tobacco")
    values = ["1.23456", "-0.125", "7", "0.595"]
    train = write_csv(tmp_path / "t.tsv", [("ACGT", v) for v in values], "sequence,strength")
    train.write_text(train.read_text().replace(",", "\t"))
    options = BuildOptions(label_column="strength")
    build_dataset(tobacco, train, train, tmp_path / "out", options)
    records = load(tmp_path / "out", "train")
    assert [r["value"] for r in records] == [1.23456, -0.125, 7.0, 0.595]
    for record, shown in zip(records, ["1.23", "-0.13", "7.00", "0.60"]):
        tag = record["sequences"][0]["name"]
        answers = {fill(a, {"seq": tag}, shown) for a in tobacco.answers or []}
        assert record["turns"][0]["assistant"] in answers and record["label"] is None


def test_multi_turn_and_multi_sequence_shapes(tmp_path: Path) -> None:
    promoters = card("promoters")
    train = write_csv(tmp_path / "train.csv", rows(200))
    test = write_csv(tmp_path / "test.csv", rows(20))
    options = BuildOptions(multi_turn=0.3, multi_sequence=0.4, seed=1)
    report = build_dataset(promoters, train, test, tmp_path / "out", options).splits
    records = load(tmp_path / "out", "train")
    two_turns = [r for r in records if len(r["turns"]) == 2]
    pairs = [r for r in records if len(r["sequences"]) == 2]
    assert len(two_turns) == report["train"].multi_turn and 30 < len(two_turns) < 90
    assert len(pairs) == report["train"].multi_sequence and 20 < len(pairs) < 60
    assert sum(len(r["sequences"]) for r in records) == 200  # every row used exactly once
    for record in two_turns:
        pool = filled(promoters.questions.train, record["sequences"][0]["name"])
        first, second = (t["user"] for t in record["turns"])
        assert first in pool and second in pool and first != second
    for record in pairs:
        names = [s["name"] for s in record["sequences"]]
        assert all(tag_stem(n) in TRAIN_TAG_NAMES for n in names) and record["label"] is None
        assert tag_stem(names[0]) != tag_stem(names[1])  # two sequences, two names
        assert all(f"@{n}" in record["turns"][0]["user"] for n in names)
        assert all(f"@{n}" in record["turns"][0]["assistant"] for n in names)
    assert all(len(r["turns"]) == len(r["sequences"]) == 1 for r in load(tmp_path / "out", "test"))
    model = ChatNTModel.from_config("tiny-random")
    sample = [two_turns[0], pairs[0], records[0]]
    batch = model.tokenize([record_to_example(r) for r in sample])
    assert batch.input_ids.shape[0] == 3
    assert batch.num_occurrences == 2 + 2 + len(records[0]["turns"])


def test_fasta_with_label_table_and_table_with_fasta(tmp_path: Path) -> None:
    fasta = tmp_path / "seqs.fa"
    fasta.write_text(">r1 first record\nACGT\nACGT\n>r2\nTTTT\n>r3\nGGCC\n")
    labels = tmp_path / "labels.tsv"
    labels.write_text("id\tlabel\nr1\tdonor\nr2\tnone\nr3\tacceptor\n")
    splice = card("splice-sites")
    options = BuildOptions(labels=labels)
    build_dataset(splice, fasta, fasta, tmp_path / "a", options)
    records = load(tmp_path / "a", "train")
    assert [(r["sequences"][0]["sequence"], r["label"]) for r in records] == [
        ("ACGTACGT", "donor"),
        ("TTTT", "none"),
        ("GGCC", "acceptor"),
    ]
    ids = tmp_path / "ids.csv"
    ids.write_text("id,label\nr3,acceptor\nr1,donor\n")
    build_dataset(splice, ids, ids, tmp_path / "b", BuildOptions(fasta=fasta))
    assert [r["sequences"][0]["sequence"] for r in load(tmp_path / "b", "test")] == [
        "GGCC",
        "ACGTACGT",
    ]


def test_parquet_input_and_rna_card_tags(tmp_path: Path) -> None:
    data = card("promoters").model_dump(mode="json") | {"name": "rna-toy", "modality": "rna"}
    card_file = tmp_path / "rna-toy.yaml"
    card_file.write_text(yaml.safe_dump(data))
    rna_card = get_task_card(str(card_file))
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"sequence": ["ACGU", "UUGA"], "label": [1, 0]}), path)
    build_dataset(rna_card, path, path, tmp_path / "out")
    records = load(tmp_path / "out", "train")
    assert [r["label"] for r in records] == ["promoter", "non_promoter"]
    for record in records:
        ((name, modality),) = {(s["name"], s["modality"]) for s in record["sequences"]}
        assert name.endswith(".frn") and modality == "rna" and tag_stem(name) in TRAIN_TAG_NAMES
        assert f"@{name}" in record["turns"][0]["user"]


BAD_ROWS = [("ACGT", "1"), ("", "0"), ("ACXT", "1"), ("ACGT", "maybe"), ("ACGT", "0")]


def test_bad_rows_fail_with_row_numbers(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", BAD_ROWS)
    with pytest.raises(DataError) as info:
        build_dataset(card("promoters"), train, train, tmp_path / "out")
    message = str(info.value)
    assert "3 bad row(s)" in message and "\n" not in message
    assert "row 2: empty sequence" in message
    assert "row 3: sequence has characters dna does not allow: 'X' at 3" in message
    assert "row 4: label 'maybe'" in message and "--skip-bad" in message
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_regression_bad_values_are_reported(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "r.csv", [("AC", "1"), ("AC", "x"), ("AC", "inf"), ("AC", "12")])
    expected = (
        r"3 bad row.*row 2: value 'x' is not a number.*"
        r"row 3: value 'inf' is not finite.*row 4: value 12 is outside"
    )
    with pytest.raises(DataError, match=expected):
        build_dataset(card("promoter-strength-tobacco"), train, train, tmp_path / "out")


def test_skip_bad_writes_the_reject_file(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", BAD_ROWS)
    test = write_csv(tmp_path / "test.csv", rows(3))
    rejects = tmp_path / "rejected.tsv"
    options = BuildOptions(skip_bad=True, reject_file=rejects)
    report = build_dataset(card("promoters"), train, test, tmp_path / "out", options)
    assert (report.splits["train"].records, report.splits["train"].rejected) == (2, 3)
    lines = rejects.read_text().splitlines()
    assert lines[0] == "split\trow\treason\tfields"
    parsed = [line.split("\t") for line in lines[1:]]
    assert [(p[0], p[1]) for p in parsed] == [("train", "2"), ("train", "3"), ("train", "4")]
    assert json.loads(parsed[2][3]) == {"sequence": "ACGT", "label": "maybe"}
    assert report.reject_file == str(rejects)


def test_cli_build_and_its_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write_csv(tmp_path / "train.csv", rows(6))
    out = tmp_path / "out"
    args = ["data", "build", "--task", "enhancers", "--train", str(train), "--test", str(train)]
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(out), "--multi-turn", "0.5"])
    assert info.value.code == 0
    assert (
        "train: 6 records from 6 rows" in capsys.readouterr().out
        and (out / "train" / "state.json").is_file()
    )
    for extra, expected in [
        (["--out", str(out)], "already holds a dataset"),
        (["--out", str(tmp_path / "x"), "--label-column", "class"], "no column 'class'"),
        (
            ["--out", str(tmp_path / "y"), "--multi-turn", "0.7", "--multi-sequence", "0.6"],
            "adding up to at most 1",
        ),
    ]:
        with pytest.raises(SystemExit) as info:
            main([*args, *extra])
        assert info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err
    bad = write_csv(tmp_path / "bad.csv", BAD_ROWS)
    with pytest.raises(SystemExit) as info:
        main(
            [
                "data",
                "build",
                "--task",
                "enhancers",
                "--train",
                str(bad),
                "--test",
                str(train),
                "--out",
                str(tmp_path / "z"),
            ]
        )
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "3 bad row(s)" in err and "row 2" in err
