"""Benchmark: ``chatnt batch`` and ``chatnt evaluate`` on one process and sharded over two.

Not a test: it prints one table. Each row is the command as a user runs it (a subprocess;
``torchrun --standalone --nproc_per_node 2`` for two processes), every process on one
thread (``OMP_NUM_THREADS=1``), so two processes use two cores where one uses one. The
model is the quickstart assembly untrained (frozen SmolLM2-135M-Instruct, motif CNN,
English-aware Perceiver K = 8; speed does not depend on training), or ``--checkpoint``.

* ``batch``: ``--records`` FASTA records of 200 bp, the demo's CTCF question, answers and
  P(yes) per record; records/s over the whole command (loading included) and over the
  answering alone (all records / the main process's answering time, which ``chatnt
  batch`` prints; the two shards are the same size).
* ``evaluate``: the demo test split, ``--per-task`` examples of each of the 4 tasks;
  generation for every example plus the P(yes) phrasings for the binary ones; records/s
  over the whole command (loading included).

Two processes must write the same rows as one (the tests check it; here the row counts
are printed). Run: ``python bench/sharded_inference.py`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inference import _dna, untrained_checkpoint  # bench/inference.py, beside this file

from chatnt_core.data.demo import write_demo

TORCHRUN = Path(sys.executable).with_name("torchrun")
QUESTION = "Is a CTCF site hidden in @seq?"


def launch(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "chatnt_core.cli"]
    torchrun = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes)]
    return [*torchrun, "-m", "chatnt_core.cli"]


def timed(command: list[str]) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def batch_row(checkpoint: Path, fasta: Path, records: int, processes: int, tmp: Path) -> str:
    out = tmp / f"batch-{processes}.tsv"
    args = ["batch", str(checkpoint), "--fasta", str(fasta), "--question", QUESTION]
    args += ["--out", str(out), "--batch-size", "8", "--max-new-tokens", "8", "--no-progress"]
    seconds, stdout = timed([*launch(processes), *args])
    match = re.search(r"answered here in ([0-9.]+) s", stdout)
    answering = records / float(match.group(1)) if match else float("nan")
    rows = len(out.read_text().splitlines()) - 1
    return (
        f"| batch | {processes} | {records} | {rows} | {seconds:.1f} | "
        f"{records / seconds:.2f} | {answering:.2f} |"
    )


def evaluate_row(checkpoint: Path, data: Path, per_task: int, processes: int, tmp: Path) -> str:
    out = tmp / f"evaluate-{processes}"
    args = ["evaluate", str(checkpoint), "--data", str(data), "--out", str(out)]
    args += ["--max-per-task", str(per_task), "--batch-size", "8", "--max-new-tokens", "8"]
    seconds, _ = timed([*launch(processes), *args])
    rows = len((out / "predictions.jsonl").read_text().splitlines())
    records = 4 * per_task
    rate = records / seconds
    return f"| evaluate | {processes} | {records} | {rows} | {seconds:.1f} | {rate:.2f} | - |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a chatnt checkpoint (default: untrained)")
    parser.add_argument("--records", type=int, default=64, help="FASTA records for batch")
    parser.add_argument("--per-task", type=int, default=16, help="test examples per demo task")
    args = parser.parse_args()
    rng = random.Random(0)
    print(
        "| command | processes | records | rows written | wall s | records/s (wall) | "
        "records/s (answering) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        checkpoint = args.checkpoint or untrained_checkpoint(tmp / "model")
        fasta = tmp / "in.fa"
        fasta.write_text("".join(f">rec{i}\n{_dna(200, rng)}\n" for i in range(args.records)))
        write_demo(tmp / "demo", train_size=4, test_size=args.per_task, seed=0)
        for processes in (1, 2):
            print(batch_row(checkpoint, fasta, args.records, processes, tmp), flush=True)
        for processes in (1, 2):
            print(evaluate_row(checkpoint, tmp / "demo", args.per_task, processes, tmp), flush=True)


if __name__ == "__main__":
    main()
