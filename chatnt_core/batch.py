"""One question over every record of a FASTA file: batched, resumable, shardable.

A batch over a large FASTA runs for hours, so an interruption must cost at most the batch
in flight. Every finished batch is made durable before the next starts, and a rerun with
the same ``--out`` reads what is there and answers only the records still missing:

* TSV, one process: rows are appended to ``OUT`` and flushed + fsynced per batch. A row
  torn by a crash (no final newline) is ignored on reading and cut off before appending.
* Parquet, or several processes: rows go to part files in ``OUT.parts/`` (a parquet part
  per batch, written under a temporary name and renamed; or an append-only TSV per rank).
  When every record has a row, the main process merges ``OUT`` (if any) and the parts in
  record order into a temporary file, renames it over ``OUT`` and removes the parts.

Launched with ``torchrun``/``accelerate launch``, the records still missing are split
between processes with Accelerate's ``PartialState.split_between_processes``; each rank
writes only its own parts, and rank 0 merges after ``wait_for_everyone``. The process
count may change between runs: parts are read as a bag of rows keyed by record id.

In TSV cells, backslash, tab, newline and carriage return are written as ``\\\\``,
``\\t``, ``\\n``, ``\\r`` so that one row is always one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatnt_core.errors import ChatNTError, PromptError
from chatnt_core.fasta import FastaRecord
from chatnt_core.inference.precision import Precision, precision_of
from chatnt_core.modality import Modality
from chatnt_core.progress import PeriodicLines
from chatnt_core.prompt import SequenceInput, find_tags
from chatnt_core.training.state_io import write_json

if TYPE_CHECKING:
    from accelerate import PartialState

    from chatnt_core.api import Answer, ChatNT

COLUMNS = ("id", "answer", "task", "label", "value", "probability", "calibrated", "parseable")
BATCH_TAG = "seq"
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
Row = dict[str, Any]


@dataclass(frozen=True)
class BatchReport:
    """What a run did on this process; ``complete`` is only known on the main process."""

    out: Path
    total: int  # records in the FASTA
    skipped: int  # records that already had a row when the run started
    answered: int  # records this process answered
    complete: bool  # every record has a row in ``out`` (main process)
    seconds: float = 0.0  # spent answering on this process (model loading excluded)


def output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix in (".tsv", ".parquet"):
        return suffix[1:]
    raise ChatNTError(f"--out {out}: give a .tsv or .parquet file name")


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def check_question(question: str) -> None:
    """The question must name each record as @seq and nothing else."""
    tags = set(find_tags(question))
    if BATCH_TAG not in tags:
        raise PromptError(f"the question must contain @{BATCH_TAG}, which stands for each record")
    other = sorted(tags - {BATCH_TAG})
    if other:
        raise PromptError(
            f"@{other[0]} has no sequence: in a batch only @{BATCH_TAG} (each record) is bound"
        )


# ---- what a result file was written for ----------------------------------------------------

JOB_FORMAT = "chatnt-batch-job/1"


def job_path(out: Path) -> Path:
    return out.with_name(out.name + ".job.json")


def _digest(parts: Iterable[str]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8"))
        hasher.update(b"\0")
    return hasher.hexdigest()


def model_identity(chatnt: ChatNT) -> str:
    """The checkpoint's weights (and calibrators), by content where they are files."""
    named = getattr(chatnt, "source", None)
    source = Path(named) if named else None
    if source is None or not (source / "manifest.json").is_file():
        return f"source:{named}"
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    weights = manifest.get("files", {}).get("model.safetensors", {}).get("sha256", "")
    calibration = source / "calibration.json"
    calibrators = ""
    if calibration.is_file():
        calibrators = _digest([calibration.read_text(encoding="utf-8")])
    return f"weights:{weights} calibration:{calibrators}"


def job_record(
    chatnt: ChatNT,
    records: Sequence[FastaRecord],
    question: str,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """What decides every row: resuming is only exact when all of it is unchanged."""
    return {
        "format": JOB_FORMAT,
        "question": question,
        "model": model_identity(chatnt),
        "records": _digest(part for r in records for part in (r.id, r.sequence)),
        **{key: settings[key] for key in sorted(settings)},
    }


_JOB_FIELDS = {
    "question": "another question",
    "precision": "another --precision",
    "model": "another checkpoint (or its calibration changed)",
    "records": "another FASTA (or the records changed)",
}


# fields that files written before they existed hold implicitly
_ABSENT_MEANS = {"precision": "fp32"}


def check_job(out: Path, job: Mapping[str, Any], has_rows: bool) -> None:
    """Refuse to add rows to ``out`` when it was written for another job."""
    path = job_path(out)
    if not has_rows or not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ChatNTError(
            f"{path} cannot be read ({error}); give another --out or delete {out} and {path}"
        ) from None
    changed = [key for key in job if before.get(key, _ABSENT_MEANS.get(key)) != job[key]]
    if changed:
        key = changed[0]
        what = _JOB_FIELDS.get(key, f"another --{key.replace('_', '-')} ({before.get(key)!r})")
        raise ChatNTError(
            f"{out} holds answers written for {what}; rerun with the same settings to "
            f"resume, or give another --out (or delete {out} and {path.name})"
        )


# ---- TSV ----------------------------------------------------------------------------------


def _escape(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    for char, escaped in _ESCAPES.items():
        text = text.replace(char, escaped)
    return text


def _unescape_id(cell: str) -> str:
    """Record ids hold no white space, so only the backslash escape can occur in them."""
    return cell.replace("\\\\", "\\")


def tsv_line(row: Row) -> str:
    return "\t".join(_escape(row[c]) for c in COLUMNS) + "\n"


def read_tsv_lines(path: Path) -> dict[str, str]:
    """Record id -> its complete line; a torn last line (no newline) is left out."""
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]  # the last piece is "" or a torn row
    if not lines:
        return {}
    if lines[0].split("\t") != list(COLUMNS):
        raise ChatNTError(
            f"{path} is not a chatnt batch table (its header is not {' '.join(COLUMNS)}): "
            "give another --out or delete the file"
        )
    return {_unescape_id(line.split("\t", 1)[0]): line + "\n" for line in lines[1:] if line}


_UNESCAPES = {escaped[1]: char for char, escaped in _ESCAPES.items()}
_NUMBER_COLUMNS = ("value", "probability")


def _unescape(cell: str) -> str:
    out: list[str] = []
    chars = iter(cell)
    for char in chars:
        out.append(_UNESCAPES.get(next(chars, ""), "") if char == "\\" else char)
    return "".join(out)


def _typed(column: str, cell: str) -> Any:
    """A TSV cell back as the value it was written from (``_escape`` reversed)."""
    if column in _NUMBER_COLUMNS:
        return float(cell) if cell else None
    if column in ("calibrated", "parseable"):
        return cell == "true"
    text = _unescape(cell)
    return text if text or column in ("id", "answer") else None


def read_tsv_rows(path: Path) -> list[Row]:
    """The rows of a finished batch table, typed as ``run_batch`` wrote them (e.g. to turn
    a TSV into parquet or JSON without answering again)."""
    return [
        {c: _typed(c, cell) for c, cell in zip(COLUMNS, line.rstrip("\n").split("\t"))}
        for line in read_tsv_lines(path).values()
    ]


class _TsvAppender:
    """Appends rows to one file, durable per call; repairs a torn tail first."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with path.open("r+b") as handle:
                    handle.truncate(keep)
        self.handle = path.open("a", encoding="utf-8", newline="")
        if self.handle.tell() == 0:
            self.handle.write("\t".join(COLUMNS) + "\n")

    def write(self, rows: list[Row], first_index: int) -> None:
        self.handle.write("".join(tsv_line(row) for row in rows))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


# ---- parquet ------------------------------------------------------------------------------


def _schema() -> Any:
    import pyarrow as pa

    text, number, flag = pa.string(), pa.float64(), pa.bool_()
    types = [text, text, text, text, number, number, flag, flag]
    return pa.schema(list(zip(COLUMNS, types)))


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


class _ParquetParts:
    """One parquet file per batch, named by its first record index, renamed into place."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, rows: list[Row], first_index: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=_schema())
        final = self.directory / f"part-{first_index:09d}.parquet"
        tmp = self.directory / f".{final.name}.tmp-{os.getpid()}"
        pq.write_table(table, tmp)
        _fsync_file(tmp)
        os.replace(tmp, final)

    def close(self) -> None:
        pass


def write_parquet(rows: Sequence[Row], path: Path) -> None:
    """Rows as a parquet table with the batch schema (the columns ``chatnt batch`` writes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(rows), schema=_schema()), path)


def _read_parquet(paths: Sequence[Path]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p).select(list(COLUMNS)).cast(_schema()) for p in paths]
    return pa.concat_tables(tables) if tables else _schema().empty_table()


# ---- done rows and the merge ---------------------------------------------------------------


def _sources(out: Path, fmt: str) -> list[Path]:
    parts = parts_dir(out)
    pattern = "part-*.parquet" if fmt == "parquet" else "rank-*.tsv"
    found = sorted(parts.glob(pattern)) if parts.is_dir() else []
    return ([out] if out.is_file() else []) + found


def done_ids(out: Path, fmt: str) -> set[str]:
    """Ids of the records that already have a row in ``out`` or its parts."""
    sources = _sources(out, fmt)
    if fmt == "tsv":
        return {i for path in sources for i in read_tsv_lines(path)}
    return {str(i) for i in _read_parquet(sources).column("id").to_pylist()}


def merge(out: Path, fmt: str, records: Sequence[FastaRecord]) -> bool:
    """Write ``out`` from itself and its parts in record order, if every record has a row."""
    sources = _sources(out, fmt)
    order = {record.id: i for i, record in enumerate(records)}
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if fmt == "tsv":
        lines: dict[str, str] = {}
        for path in sources:
            for key, line in read_tsv_lines(path).items():
                lines.setdefault(key, line)
        if set(order) - set(lines):
            return False
        body = "".join(lines[r.id] for r in records)
        tmp.write_text("\t".join(COLUMNS) + "\n" + body, encoding="utf-8")
    else:
        import pyarrow.parquet as pq

        table = _read_parquet(sources)
        first: dict[str, int] = {}
        for position, key in enumerate(table.column("id").to_pylist()):
            first.setdefault(str(key), position)
        if set(order) - set(first):
            return False
        pq.write_table(table.take([first[r.id] for r in records]), tmp)
    _fsync_file(tmp)
    os.replace(tmp, out)
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    return True


# ---- the run ------------------------------------------------------------------------------


class RecordProgress:
    """A live bar on stderr when it is a terminal; otherwise ``PeriodicLines``, so
    redirected logs hold no bar drawings."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar: Any = None
        self.lines: PeriodicLines | None = None
        if enabled and not sys.stderr.isatty():
            self.lines = PeriodicLines("answered", total, "records")
        elif enabled:
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True))
            self.task = self.bar.add_task("answering", total=total)

    def __enter__(self) -> RecordProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.lines is not None:
            self.lines.finish()

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, count)
        if self.lines is not None:
            self.lines.advance(count)


def process_state() -> PartialState:
    """Accelerate's view of this launch. On a machine without CUDA a multi-process launch
    must ask for CPU (gloo) explicitly, or each process would think it runs alone."""
    import torch
    from accelerate import PartialState

    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=multi and not torch.cuda.is_available())


def _row(record: FastaRecord, answer: Answer) -> Row:
    fields = answer.to_dict()
    fields["answer"] = fields.pop("text")
    return {"id": record.id, **fields}


def run_batch(
    chatnt: ChatNT,
    records: Sequence[FastaRecord],
    question: str,
    out: str | Path,
    *,
    modality: Modality = Modality.DNA,
    batch_size: int = 32,
    task: str | None = None,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    state: PartialState | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> BatchReport:
    """Answer ``question`` (with ``@seq`` bound to each record) for every record.

    ``max_batches`` stops this process after that many batches (a test hook for an
    interruption); ``on_batch`` is called with the batch count after each durable write.
    """
    out = Path(out)
    fmt = output_format(out)
    check_question(question)
    if batch_size < 1:
        raise ChatNTError("--batch-size must be at least 1")
    state = state if state is not None else process_state()
    order = {record.id: i for i, record in enumerate(records)}
    done = done_ids(out, fmt)
    strangers = sorted(done - set(order))
    if strangers:
        raise ChatNTError(
            f"{out} holds a row for '{strangers[0]}', which is not in this FASTA: it was "
            "written for another input; give another --out"
        )
    todo = [i for i, record in enumerate(records) if record.id not in done]
    settings: dict[str, Any] = {
        "modality": modality.value,
        "task": task,
        "max_new_tokens": max_new_tokens,
    }
    settings.update({"temperature": temperature, "seed": seed})
    model = getattr(chatnt, "model", None)  # bfloat16 answers differ by rounding
    settings["precision"] = (precision_of(model) if model is not None else Precision.FP32).value
    written_for = job_record(chatnt, records, question, settings)
    check_job(out, written_for, bool(done))
    state.wait_for_everyone()  # every rank has read the done rows before any writes
    if state.is_main_process:
        write_json(job_path(out), written_for)
    distributed = state.num_processes > 1
    writer: _TsvAppender | _ParquetParts
    if fmt == "parquet":
        writer = _ParquetParts(parts_dir(out))
    elif distributed:
        writer = _TsvAppender(parts_dir(out) / f"rank-{state.process_index:05d}.tsv")
    else:
        writer = _TsvAppender(out)
    answered = batches = 0
    generation: dict[str, Any] = {
        "task": task,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    started = time.perf_counter()
    with state.split_between_processes(todo) as share:
        # similar lengths in one batch: less padding in the encoder and the decoder
        mine = sorted(share, key=lambda i: len(records[i].sequence))
        visible = progress and state.is_main_process
        with RecordProgress(visible, len(mine)) as bar:
            try:
                for start in range(0, len(mine), batch_size):
                    if max_batches is not None and batches >= max_batches:
                        break
                    chunk = [records[i] for i in mine[start : start + batch_size]]
                    bound = [
                        {BATCH_TAG: SequenceInput(BATCH_TAG, r.sequence, modality)} for r in chunk
                    ]
                    answers = chatnt.ask_batch([question] * len(chunk), bound, **generation)
                    writer.write([_row(r, a) for r, a in zip(chunk, answers)], order[chunk[0].id])
                    answered += len(chunk)
                    batches += 1
                    bar.advance(len(chunk))
                    if on_batch is not None:
                        on_batch(batches)
            finally:
                writer.close()
    seconds = time.perf_counter() - started
    state.wait_for_everyone()
    complete = False
    if state.is_main_process:
        # rows were written in length order; the finished file is in FASTA order
        complete = merge(out, fmt, records)
    state.wait_for_everyone()
    return BatchReport(out, len(records), len(done), answered, complete, seconds)
