"""The batch runner: one row per record, resumable without duplicates or gaps, parquet
parts merged atomically, ranks merged into one file (threads here, torchrun at the end).

Most tests use a stub in place of the model: the runner's bookkeeping is what is under
test, and a stub whose answer is derived from the sequence shows that every row belongs
to its own record. ``tests/test_cli_ask.py`` runs the real tiny model through the CLI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from chatnt_core.api import Answer
from chatnt_core.batch import COLUMNS, merge, parts_dir, run_batch, tsv_line
from chatnt_core.errors import ChatNTError, PromptError
from chatnt_core.fasta import FastaRecord, parse_fasta

QUESTION = "Is there a CTCF binding site in @seq?"
TORCHRUN = Path(sys.executable).with_name("torchrun")


def make_records(n: int = 10) -> list[FastaRecord]:
    lines = [f">r{i}\n{'ACGT' * (i + 1)}\n" for i in range(n)]
    return parse_fasta("".join(lines).splitlines(keepends=True))


class EchoBot:
    """Answers with the sequence length (and characters TSV must escape)."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.fail_on_call = fail_on_call
        self.calls: list[list[int]] = []
        self.lock = threading.Lock()

    def ask_batch(
        self, questions: Sequence[str], sequences: Sequence[dict[str, Any]], **_: Any
    ) -> list[Answer]:
        assert all(q == QUESTION for q in questions)
        lengths = [len(s["seq"].sequence) for s in sequences]
        with self.lock:
            self.calls.append(lengths)
            if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
                raise RuntimeError("interrupted")
        return [
            Answer(f"length\t{n}\nok\\", "t", "lab", float(n), n / 100, False, True)
            for n in lengths
        ]


def tsv_ids(path: Path) -> list[str]:
    lines = path.read_text().split("\n")
    assert lines[0].split("\t") == list(COLUMNS) and lines[-1] == ""
    return [line.split("\t")[0] for line in lines[1:-1]]


def run(bot: EchoBot, out: Path, **kwargs: Any) -> Any:
    records = kwargs.pop("records", make_records())
    kwargs.setdefault("batch_size", 3)
    return run_batch(bot, records, QUESTION, out, progress=False, **kwargs)  # type: ignore[arg-type]


def test_tsv_resumes_after_an_interruption_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "res.tsv"
    with pytest.raises(RuntimeError, match="interrupted"):
        run(EchoBot(fail_on_call=3), out)
    assert tsv_ids(out) == [f"r{i}" for i in range(6)]  # two durable batches
    again = EchoBot()
    report = run(again, out)
    assert again.calls == [[28, 32, 36], [40]]  # only r6..r9 are answered
    assert report.complete and (report.skipped, report.answered) == (6, 4)
    assert tsv_ids(out) == [f"r{i}" for i in range(10)]
    row = out.read_text().splitlines()[8].split("\t")  # r7, sequence length 32
    assert row == ["r7", "length\\t32\\nok\\\\", "t", "lab", "32.0", "0.32", "false", "true"]
    assert run(EchoBot(), out).answered == 0  # a finished run is not redone


def test_max_batches_hook_and_a_torn_last_row(tmp_path: Path) -> None:
    out = tmp_path / "res.tsv"
    report = run(EchoBot(), out, max_batches=2)
    assert not report.complete and tsv_ids(out) == [f"r{i}" for i in range(6)]
    with out.open("a") as handle:  # a crash in the middle of writing r6
        handle.write("r6\tlength\t")
    report = run(EchoBot(), out)
    assert report.complete and report.skipped == 6
    assert tsv_ids(out) == [f"r{i}" for i in range(10)]


def test_parquet_writes_parts_then_merges_atomically(tmp_path: Path) -> None:
    out = tmp_path / "res.parquet"
    report = run(EchoBot(), out, max_batches=2)
    assert not report.complete and not out.exists()
    assert sorted(p.name for p in parts_dir(out).iterdir()) == [
        "part-000000000.parquet",
        "part-000000003.parquet",
    ]
    (parts_dir(out) / ".part-000000006.parquet.tmp-1").write_bytes(b"torn")  # ignored
    report = run(EchoBot(), out)
    assert report.complete and (report.skipped, report.answered) == (6, 4)
    assert not parts_dir(out).exists()
    table = pq.read_table(out)
    assert table.column_names == list(COLUMNS)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(10)]
    assert table.column("value").to_pylist() == [4.0 * (i + 1) for i in range(10)]
    assert table.column("answer").to_pylist()[0] == "length\t4\nok\\"
    assert str(table.schema.field("probability").type) == "double"


class ThreadState:
    """Accelerate's PartialState as two threads see it: a shared barrier, contiguous shards."""

    def __init__(self, rank: int, world: int, barrier: threading.Barrier) -> None:
        self.process_index, self.num_processes = rank, world
        self.is_main_process = rank == 0
        self.barrier = barrier

    def wait_for_everyone(self) -> None:
        self.barrier.wait(timeout=30)

    @contextmanager
    def split_between_processes(self, items: list[int]) -> Iterator[list[int]]:
        size, extra = divmod(len(items), self.num_processes)
        start = self.process_index * size + min(self.process_index, extra)
        yield items[start : start + size + (self.process_index < extra)]


def run_ranks(out: Path, max_batches: Sequence[int | None]) -> list[Any]:
    barrier = threading.Barrier(len(max_batches))
    bot = EchoBot()
    reports: list[Any] = [None] * len(max_batches)

    def work(rank: int) -> None:
        state = ThreadState(rank, len(max_batches), barrier)
        reports[rank] = run(bot, out, batch_size=2, state=state, max_batches=max_batches[rank])

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(max_batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r is not None for r in reports)
    return reports


@pytest.mark.parametrize("suffix", [".tsv", ".parquet"])
def test_ranks_write_parts_and_rank0_merges_in_order(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"res{suffix}"
    first = run_ranks(out, [None, 1])  # rank 1 is interrupted after one batch
    assert [r.answered for r in first] == [5, 2] and not first[0].complete
    assert not out.exists() and parts_dir(out).is_dir()
    second = run_ranks(out, [None, None, None])  # resumed with another process count
    assert second[0].complete and sum(r.answered for r in second) == 3
    assert not parts_dir(out).exists()
    ids = tsv_ids(out) if suffix == ".tsv" else pq.read_table(out).column("id").to_pylist()
    assert ids == [f"r{i}" for i in range(10)]


def test_foreign_rows_bad_headers_and_bad_questions_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "res.tsv"
    run(EchoBot(), out, records=make_records(3))
    with pytest.raises(ChatNTError, match="row for 'r2', which is not in this FASTA"):
        run(EchoBot(), out, records=make_records(2))
    other = tmp_path / "other.tsv"
    other.write_text("name\tscore\nx\t1\n")
    with pytest.raises(ChatNTError, match="not a chatnt batch table"):
        run(EchoBot(), other)
    with pytest.raises(ChatNTError, match=r"give a \.tsv or \.parquet"):
        run(EchoBot(), tmp_path / "res.csv")
    with pytest.raises(PromptError, match="must contain @seq"):
        run_batch(EchoBot(), make_records(), "Is it bound?", out)  # type: ignore[arg-type]
    with pytest.raises(PromptError, match="@other has no sequence"):
        run_batch(EchoBot(), make_records(), "Is @seq like @other?", out)  # type: ignore[arg-type]


def test_merge_waits_until_every_record_has_a_row(tmp_path: Path) -> None:
    out = tmp_path / "res.tsv"
    records = make_records(3)
    part = parts_dir(out) / "rank-00000.tsv"
    part.parent.mkdir()
    row = dict.fromkeys(COLUMNS, "x")
    part.write_text("\t".join(COLUMNS) + "\n" + tsv_line({**row, "id": "r1"}))
    assert not merge(out, "tsv", records) and not out.exists()
    out.write_text("\t".join(COLUMNS) + "\n" + tsv_line({**row, "id": "r2"}))
    header = "\t".join(COLUMNS) + "\n"
    (parts_dir(out) / "rank-00001.tsv").write_text(header + tsv_line({**row, "id": "r0"}))
    assert merge(out, "tsv", records) and tsv_ids(out) == ["r0", "r1", "r2"]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="no torchrun")
def test_torchrun_two_processes_merge_one_file(tmp_path: Path) -> None:
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">rec{i}\n{'ACGGT' * (i + 2)}\n" for i in range(10)))
    out = tmp_path / "merged.tsv"
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "chatnt_core.cli"]
    args = ["batch", "tiny-random", "--fasta", str(fasta), "--question", QUESTION]
    args += ["--out", str(out), "--batch-size", "2", "--max-new-tokens", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("complete") == 1  # only rank 0 reports
    assert tsv_ids(out) == [f"rec{i}" for i in range(10)]
    assert not parts_dir(out).exists()
    probabilities = [float(line.split("\t")[5]) for line in out.read_text().splitlines()[1:]]
    assert all(0.0 < p < 1.0 for p in probabilities)


def test_batches_hold_similar_lengths_and_the_file_keeps_fasta_order(tmp_path: Path) -> None:
    lengths = [40, 4, 36, 8, 32, 12, 28]
    text = "".join(f">r{i}\n{'A' * n}\n" for i, n in enumerate(lengths))
    records = parse_fasta(text.splitlines(keepends=True))
    bot = EchoBot()
    report = run(bot, tmp_path / "res.tsv", records=records)
    assert bot.calls == [[4, 8, 12], [28, 32, 36], [40]]
    assert report.complete and tsv_ids(tmp_path / "res.tsv") == [f"r{i}" for i in range(7)]


def test_resuming_with_another_question_fasta_or_setting_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "res.tsv"
    with pytest.raises(RuntimeError, match="interrupted"):
        run(EchoBot(fail_on_call=2), out)
    job = json.loads((tmp_path / "res.tsv.job.json").read_text())
    assert job["question"] == QUESTION and job["max_new_tokens"] == 40
    other_fasta = make_records(12)
    cases = [
        ({"question": "Is @seq GC-rich?"}, "another question"),
        ({"records": other_fasta}, "another FASTA"),
        ({"max_new_tokens": 8}, "another --max-new-tokens (40)"),
    ]
    for change, message in cases:
        records = change.get("records", make_records())
        question = change.get("question", QUESTION)
        kwargs = {k: v for k, v in change.items() if k not in ("records", "question")}
        with pytest.raises(ChatNTError, match=re.escape(message)) as caught:
            run_batch(EchoBot(), records, question, out, progress=False, batch_size=3, **kwargs)  # type: ignore[arg-type]
        assert "give another --out" in str(caught.value)
    report = run(EchoBot(), out)  # the same job resumes
    assert report.complete and report.skipped == 3


def test_resuming_in_another_precision_is_refused(tmp_path: Path) -> None:
    """bfloat16 answers differ from float32's by rounding: one file holds one precision
    (a job file from before the field existed counts as float32)."""
    out = tmp_path / "res.tsv"
    with pytest.raises(RuntimeError, match="interrupted"):
        run(EchoBot(fail_on_call=2), out)
    job_file = tmp_path / "res.tsv.job.json"
    job = json.loads(job_file.read_text())
    assert job.pop("precision") == "fp32"
    job_file.write_text(json.dumps(job))  # as an older version wrote it
    low = EchoBot()
    low.model = SimpleNamespace(decoder=nn.Linear(2, 2).to(torch.bfloat16))  # type: ignore[attr-defined]
    with pytest.raises(ChatNTError, match=re.escape("another --precision")):
        run_batch(low, make_records(), QUESTION, out, progress=False, batch_size=3)  # type: ignore[arg-type]
    assert run(EchoBot(), out).complete  # float32 resumes the older file


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_batch(EchoBot(), make_records(), QUESTION, tmp_path / "r.tsv", batch_size=4)  # type: ignore[arg-type]
    captured = capsys.readouterr()
    assert captured.err.startswith("answered 10/10 records, ") and "ETA" in captured.err
    assert "━" not in captured.err + captured.out  # no bar drawing in a redirected log


def test_a_written_table_reads_back_as_the_rows_it_was_written_from(tmp_path: Path) -> None:
    """``read_tsv_rows`` undoes ``tsv_line`` (escapes, empty cells, numbers, flags), and
    ``write_parquet`` keeps the same rows: the web app serves both from one batch."""
    from chatnt_core.batch import read_tsv_rows, write_parquet

    rows = [
        {"id": "a\\b", "answer": "x\ty\nz\\w\r", "task": None, "label": "l", "value": None,
         "probability": 0.1234567891234567, "calibrated": True, "parseable": False},
        {"id": "b", "answer": "", "task": "t", "label": None, "value": -3.5,
         "probability": None, "calibrated": False, "parseable": True},
    ]  # fmt: skip
    path = tmp_path / "t.tsv"
    path.write_text("\t".join(COLUMNS) + "\n" + "".join(tsv_line(r) for r in rows))
    assert read_tsv_rows(path) == rows
    write_parquet(rows, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").to_pylist() == rows
