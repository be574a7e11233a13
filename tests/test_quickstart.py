"""`chatnt quickstart` end to end at toy sizes: every stage runs and leaves its files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from chatnt_core import model_store
from chatnt_core.api import ChatNT
from chatnt_core.cli import main
from chatnt_core.quickstart import (
    DECODER_STORE_NAME,
    FROM_SCRATCH,
    PRETRAINED,
    _results_table,
)


def test_quickstart_runs_every_stage_and_leaves_a_usable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qs"
    args = ["quickstart", "--from-scratch", "--out", str(out), "--steps", "4"]
    args += ["--warmup-steps", "3", "--train-size", "10"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--test-size", "10", "--eval-per-task", "10"])
    assert exit_info.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert " ".join(FROM_SCRATCH.note.split()) in printed
    assert "Example exchanges" in printed
    checkpoint = out / "run" / "checkpoint-000004"
    assert (checkpoint / "manifest.json").is_file()
    assert (checkpoint / "calibration.json").is_file()
    report = (out / "evaluation" / "metrics.md").read_text()
    for task in ("demo-ctcf-site", "demo-tf-site", "demo-gc-content", "demo-motif-count"):
        assert f"| {task} |" in report
    answer = ChatNT.from_pretrained(out / "run").ask(
        "Is there a CTCF binding site in @s.fna?", {"s.fna": "ACGT" * 30}, max_new_tokens=4
    )
    assert answer.task == "demo-ctcf-site" and answer.calibrated

    with pytest.raises(SystemExit) as exit_info:  # refuses to overwrite a finished run
        main([*args])
    assert exit_info.value.code == 1
    assert "already exists" in capsys.readouterr().err


def fake_report(unparseable: dict[str, float], pearson: float = 0.9) -> SimpleNamespace:
    tasks = {
        name: SimpleNamespace(
            card=SimpleNamespace(kind="regression"),
            summary={
                "score": pearson,
                "metric": "pearson",
                "metrics": {"pearson": pearson},
                "n": 200,
                "unparseable_pct": pct,
            },
        )
        for name, pct in unparseable.items()
    }
    return SimpleNamespace(tasks=tasks)


def test_the_parse_target_counts_all_answers_together() -> None:
    _, missed = _results_table(fake_report({"a": 9.0, "b": 0.0}), PRETRAINED)  # 95.5% parseable
    assert missed == []
    _, missed = _results_table(fake_report({"a": 12.0, "b": 0.0}), PRETRAINED)  # 94.0%
    assert missed == ["only 94.0% of answers parseable"]


def test_task_targets_come_from_the_recipe() -> None:
    report = fake_report({"demo-gc-content": 0.0}, pearson=0.75)
    _, missed = _results_table(report, PRETRAINED)  # target 0.8
    assert missed == ["demo-gc-content pearson 0.750 (target 0.8)"]
    _, missed = _results_table(report, FROM_SCRATCH)  # target 0.7
    assert missed == []


def test_quickstart_on_the_real_frozen_decoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A few updates and every check on SmolLM2 (`.ci/run` fetches it into the store)."""
    if model_store.store_status(DECODER_STORE_NAME).state != "fetched":
        pytest.skip(f"run `chatnt models fetch {DECODER_STORE_NAME}` first (.ci/run does)")
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--steps", "2", "--warmup-steps", "2"]
    args += ["--train-size", "10", "--test-size", "10", "--eval-per-task", "10"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert " ".join(PRETRAINED.note.split()) in printed
    # the English check ran and a tag-free message got the bare decoder's own answer
    assert "identical to the bare decoder's greedy answer" in printed
    for check in ("same label under 5 tag names", "turn 6 parses and agrees with turn 1"):
        assert check in printed
    assert (out / "run" / "checkpoint-000002" / "calibration.json").is_file()
