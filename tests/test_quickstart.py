"""`chatnt quickstart` end to end at toy sizes: every stage runs and leaves its files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from chatnt_core.api import ChatNT
from chatnt_core.cli import main
from chatnt_core.quickstart import FROM_SCRATCH_NOTE, _results_table


def test_quickstart_runs_every_stage_and_leaves_a_usable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "qs"
    args = ["quickstart", "--out", str(out), "--steps", "4", "--warmup-steps", "3"]
    args += ["--train-size", "10"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--test-size", "10", "--eval-per-task", "10"])
    assert exit_info.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert " ".join(FROM_SCRATCH_NOTE.split()) in printed
    assert "Three example conversations" in printed
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


def fake_report(unparseable: dict[str, float]) -> SimpleNamespace:
    tasks = {
        name: SimpleNamespace(
            card=SimpleNamespace(kind="regression"),
            summary={
                "score": 0.9,
                "metric": "pearson",
                "metrics": {"pearson": 0.9},
                "n": 200,
                "unparseable_pct": pct,
            },
        )
        for name, pct in unparseable.items()
    }
    return SimpleNamespace(tasks=tasks)


def test_the_parse_target_counts_all_answers_together() -> None:
    _, missed = _results_table(fake_report({"a": 9.0, "b": 0.0}))  # 95.5% parseable
    assert missed == []
    _, missed = _results_table(fake_report({"a": 12.0, "b": 0.0}))  # 94.0% parseable
    assert missed == ["only 94.0% of answers parseable"]
