"""Built-in demo tasks: JASPAR motifs with attribution, planted sites, balance, determinism."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from chatnt_core.cli import main
from chatnt_core.data.demo import (
    DEMO_TASKS,
    FACTORS,
    DemoGenerator,
    demo_cards,
    demo_records,
    load_motifs,
    reverse_complement,
    write_demo,
)
from chatnt_core.data.records import record_to_example
from chatnt_core.data.tasks import TRAIN_TAG_NAMES, fill, tag_names, tag_stem
from chatnt_core.modality import Modality, modality_from_tag
from chatnt_core.prompt import find_tags

JASPAR_IDS = {
    "CTCF": "MA0139.2",
    "TBP": "MA0108.3",
    "GATA1": "MA0035.5",
    "SP1": "MA0079.5",
    "NRF1": "MA0506.3",
    "REST": "MA0138.3",
}


def test_motif_file_loads_with_ids_and_attribution() -> None:
    motifs = load_motifs()
    assert {name: m.matrix_id for name, m in motifs.motifs.items()} == JASPAR_IDS
    assert motifs.release == "JASPAR2024"
    assert "JASPAR 2024" in motifs.attribution and "CC BY 4.0" in motifs.notice
    assert "Creative Commons Attribution 4.0" in motifs.attribution
    ctcf = motifs.motifs["CTCF"]
    assert ctcf.counts.shape == (4, 15) and np.allclose(ctcf.probabilities.sum(axis=0), 1)
    assert set(FACTORS) == set(motifs.motifs)


def best_score(sequence: str, factor: str) -> float:
    motif = load_motifs().motifs[factor]
    windows = [sequence[i : i + motif.length] for i in range(len(sequence) - motif.length + 1)]
    both = windows + [reverse_complement(w) for w in windows]
    return max(motif.score(w) for w in both)


def test_planted_sites_are_where_the_labels_say() -> None:
    motifs = load_motifs().motifs
    generator = DemoGenerator(seed=11)
    examples = [generator.ctcf_site() for _ in range(300)]
    positives = [e for e in examples if e.label == "ctcf_site"]
    negatives = [e for e in examples if e.label == "no_ctcf_site"]
    scores = []
    for example in positives:
        (site,) = [s for s in example.sites if s.factor == "CTCF"]
        written = example.sequence[site.start : site.start + len(site.site)]
        assert written == site.site
        on_motif_strand = written if site.strand == "+" else reverse_complement(written)
        scores.append(motifs["CTCF"].score(on_motif_strand))
    # Sites drawn from the matrix score far above random 15-mers (mean about -29 bits, 99th
    # percentile about -4); a rare draw may include an unlikely base, so test the bulk.
    assert np.mean(np.array(scores) > 0) > 0.95 and np.median(scores) > 10
    assert all("CTCF" not in {s.factor for s in e.sites} for e in negatives)
    assert any(e.sites for e in negatives)  # decoys of other factors
    pos = np.mean([best_score(e.sequence, "CTCF") for e in positives[:60]])
    neg = np.mean([best_score(e.sequence, "CTCF") for e in negatives[:60]])
    assert pos > neg + 5
    rng = np.random.default_rng(1)
    random_kmers = ["".join(rng.choice(list("ACGT"), 15)) for _ in range(200)]
    assert np.mean([motifs["CTCF"].score(k) for k in random_kmers]) < -15

    for example in (generator.tf_site() for _ in range(60)):
        assert [s.factor for s in example.sites] == [example.label]
    for example in (generator.motif_count() for _ in range(60)):
        assert [s.factor for s in example.sites] == ["REST"] * int(example.value or 0)
        spans = sorted((s.start, s.start + len(s.site)) for s in example.sites)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlaps
    for example in (generator.gc_content() for _ in range(30)):
        seq = example.sequence
        assert example.value == (seq.count("G") + seq.count("C")) / len(seq)


def test_labels_are_balanced() -> None:
    generator = DemoGenerator(seed=2)
    binary = Counter(generator.ctcf_site().label for _ in range(1000))
    assert 0.42 < binary["ctcf_site"] / 1000 < 0.58
    factors = Counter(generator.tf_site().label for _ in range(1200))
    assert set(factors) == set(FACTORS) and all(140 < n < 260 for n in factors.values())
    counts = Counter(generator.motif_count().value for _ in range(800))
    assert set(counts) == {0.0, 1.0, 2.0, 3.0} and all(140 < n < 260 for n in counts.values())
    gc = [generator.gc_content().value or 0.0 for _ in range(300)]
    assert min(gc) < 0.4 and max(gc) > 0.6  # a spread worth regressing on


def test_records_are_deterministic_for_a_seed_and_use_the_right_pools() -> None:
    first, again, other = (demo_records("train", 25, s) for s in (3, 3, 4))
    assert first == again and first != other
    assert Counter(r["task"] for r in first) == {name: 25 for name in DEMO_TASKS}
    cards = demo_cards()
    test = demo_records("test", 10, 3)
    validation = demo_records("validation", 10, 3)
    train_sequences = {r["sequences"][0]["sequence"] for r in first}
    assert not train_sequences & {r["sequences"][0]["sequence"] for r in validation}
    assert all(len(r["turns"]) == 1 for r in validation)  # one question, as in calibration
    for records, split in ((first, "train"), (test, "test"), (validation, "train")):
        for record in records:
            card = cards[record["task"]]
            pool = getattr(card.questions, split)
            (sequence,) = record["sequences"]
            tag = sequence["name"]  # drawn from the split's pool of file-like names
            assert tag_stem(tag) in tag_names(split) and modality_from_tag(tag) == Modality.DNA
            assert record["turns"][0]["user"] in {fill(q, {"seq": tag}) for q in pool}
            assert f"@{tag}" in record["turns"][0]["assistant"]
    for record in (r for r in first if r["task"] == "demo-gc-content"):
        shown = cards["demo-gc-content"].format_value(record["value"])
        assert shown in record["turns"][0]["assistant"] and len(shown) == 4


def test_write_demo_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = write_demo(tmp_path / "demo", train_size=20, test_size=5, seed=7)
    train = datasets.load_from_disk(str(tmp_path / "demo" / "train"))
    test = datasets.load_from_disk(str(tmp_path / "demo" / "test"))
    validation = datasets.load_from_disk(str(tmp_path / "demo" / "validation"))
    assert (len(train), len(test), len(validation)) == (80, 20, 20)
    assert manifest["splits"]["validation"] == {"records": 20}
    assert set(manifest["tasks"]) == set(DEMO_TASKS)
    saved = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert (
        saved["motifs"]["matrix_ids"] == JASPAR_IDS and "JASPAR" in saved["motifs"]["attribution"]
    )
    example = record_to_example(train[0])
    (tag,) = example.sequences
    assert tag_stem(tag) in TRAIN_TAG_NAMES and f"@{tag}" in example.turns[0].user
    with pytest.raises(SystemExit) as info:
        main(["data", "demo", "--out", str(tmp_path / "cli"), "--train-size", "8", "--seed", "7"])
    assert info.value.code == 0
    assert "32 train and 800 test records" in capsys.readouterr().out
    cli_train = datasets.load_from_disk(str(tmp_path / "cli" / "train"))
    assert list(cli_train) == demo_records("train", 8, 7)  # the CLI writes what the seed gives
    with pytest.raises(SystemExit) as info:
        main(["data", "demo", "--out", str(tmp_path / "cli")])
    assert info.value.code == 1
    assert "already holds a dataset" in capsys.readouterr().err


def test_a_quarter_of_training_records_ask_a_correct_follow_up() -> None:
    from chatnt_core.data.demo import demo_records

    records = demo_records("train", 100, seed=3)
    follow_ups = [r for r in records if len(r["turns"]) == 2 and find_tags(r["turns"][1]["user"])]
    assert 0.15 < len(follow_ups) / len(records) < 0.3
    checked = 0
    for record in follow_ups:
        sequence = record["sequences"][0]["sequence"]
        tag = record["sequences"][0]["name"]
        # the follow-up is about the same sequence, under the tag of the first turn
        for turn in record["turns"]:
            assert set(find_tags(turn["user"])) == {tag}
            assert set(find_tags(turn["assistant"])) == {tag}
        second = record["turns"][1]["assistant"]
        if "GC" in second or "G and C" in second:
            gc = (sequence.count("G") + sequence.count("C")) / len(sequence)
            stated = float(re.findall(r"\d\.\d\d", second)[0])
            assert abs(stated - gc) <= 0.005 + 1e-9
            checked += 1
    assert checked > 0
    assert all(len(r["turns"]) == 1 for r in demo_records("test", 50, seed=3))
