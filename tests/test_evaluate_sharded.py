"""``chatnt evaluate`` over two processes (torchrun, gloo) writes exactly the report of one
process, and each process answers only its own batches."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from test_distributed import TORCHRUN
from training_helpers import one_thread

from chatnt_core.cli import main
from chatnt_core.data.demo import write_demo
from chatnt_core.evaluation.data import generate_answers, open_split, read_records
from chatnt_core.evaluation.shard import Shard
from chatnt_core.model import ChatNTModel
from chatnt_core.training.checkpoint import save_model

T = TypeVar("T")


def tiny_model() -> ChatNTModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ChatNTModel.from_config("tiny-random").eval()


@dataclass(frozen=True)
class LoneShard(Shard):
    """Rank ``rank`` of ``world`` without a process group: ``combine`` keeps what this
    process computed, so the test sees which records it answered."""

    mine: list[int] = field(default_factory=list)

    def combine(
        self, values: Sequence[T], mine: Sequence[int], advance: Callable[[int], None]
    ) -> list[T]:
        self.mine.extend(mine)
        return list(values)


def test_each_process_answers_whole_batches_dealt_round_robin(tmp_path: Path) -> None:
    write_demo(tmp_path / "demo", train_size=2, test_size=7, seed=0)
    dataset = open_split(tmp_path / "demo", "test")
    records = read_records(dataset, list(range(7)))
    model = tiny_model()
    with one_thread():
        full = generate_answers(model, records, 2, 2)
        parts: list[list[str]] = []
        owned: list[list[int]] = []
        for rank in range(2):
            shard = LoneShard(rank, 2)
            parts.append(generate_answers(model, records, 2, 2, shard=shard))
            owned.append(shard.mine)
    assert sorted(owned[0] + owned[1]) == list(range(7))  # every record once
    assert len(owned[0]) == 4 and len(owned[1]) == 3  # batches 0, 2 | 1, 3 of 2, 2, 2, 1
    for rank in range(2):
        for i, answer in enumerate(parts[rank]):
            assert answer == (full[i] if i in owned[rank] else "")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside python")
def test_two_processes_write_the_report_of_one(tmp_path: Path) -> None:
    """Answers, P(yes), calibrators fitted on the fly and every metric: the same files."""
    write_demo(tmp_path / "demo", train_size=6, test_size=7, seed=0)
    checkpoint = save_model(tiny_model(), tmp_path / "model")
    args = ["evaluate", str(checkpoint), "--data", str(tmp_path / "demo")]
    args += ["--batch-size", "2", "--max-new-tokens", "3", "--calibrate-on", "train"]
    with one_thread(), pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "one")])
    assert int(exit_info.value.code or 0) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "chatnt_core.cli"]
    done = subprocess.run(
        [*command, *args, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report: ") == 1  # only the main process reports
    one = (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()
    two = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    assert len(one) == 4 * 7 and two == one  # row for row, P(yes) to the last digit
    metrics: list[dict[str, Any]] = [
        json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two")
    ]
    assert metrics[1]["tasks"] == metrics[0]["tasks"]
