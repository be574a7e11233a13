"""Turn labelled sequences plus a task card into an instruction dataset on disk.

Input is a table (CSV, TSV, Parquet) with a sequence and a label column, or FASTA records
whose labels come from a table keyed by record id. Each split is streamed in chunks and
written with ``datasets.Dataset.from_generator``, so memory stays flat however large the
file: only the current chunk and Arrow's write buffer are ever held.

Train and test stay exactly as the user split them, and their questions come from the
card's disjoint train and test pools, so a test score also measures robustness to unseen
phrasings. Optional augmentations (train split only, so every test record stays scorable
on its own): a second turn asking about the same sequence again, and pairs of sequences
asked about in one message with a combined answer. Bad rows are never silently dropped:
they fail the build with their row numbers, or with ``skip_bad`` go to a reject file.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import random
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import datasets
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from chatnt_core.data.records import InstructionRecord
from chatnt_core.data.tasks import Checked, RecordMaker, TaskCard, clip_cell
from chatnt_core.errors import ChatNTError
from chatnt_core.modality import ALPHABETS

FASTA_SUFFIXES = {".fa", ".fasta", ".fna", ".ffn", ".frn", ".faa", ".fas"}
_TEXT = datasets.Value("string")
# The Arrow schema of chatnt_core.data.records.InstructionRecord.
RECORD_FEATURES = datasets.Features(
    {
        "task": _TEXT,
        "turns": [{"user": _TEXT, "assistant": _TEXT}],
        "sequences": [{"name": _TEXT, "sequence": _TEXT, "modality": _TEXT}],
        "label": _TEXT,
        "value": datasets.Value("float64"),
    }
)
SHOWN_BAD_ROWS = 5
MANIFEST_FORMAT = "chatnt-instructions/1"
Progress = Callable[[int], None]  # receives "work done so far" (bytes or rows)


class DataError(ChatNTError):
    """Input data cannot be turned into instructions: bad rows, missing columns, bad files."""


@dataclass
class BuildOptions:
    sequence_column: str = "sequence"  # comma-separated names for multi-sequence cards
    label_column: str = "label"  # holds the number for regression cards
    id_column: str = "id"  # key into FASTA records / the labels table
    labels: Path | None = None  # label table for FASTA train/test files
    fasta: Path | None = None  # FASTA holding the sequences of table train/test files
    multi_turn: float = 0.0
    multi_sequence: float = 0.0
    seed: int = 0
    skip_bad: bool = False
    reject_file: Path | None = None
    overwrite: bool = False
    chunk_rows: int = 50_000


@dataclass
class SplitReport:
    source: str
    rows_read: int = 0
    rows_used: int = 0
    records: int = 0
    multi_turn: int = 0
    multi_sequence: int = 0
    rejected: int = 0
    first_bad: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class BuildReport:
    task: str
    card_hash: str
    seed: int
    out: str
    splits: dict[str, SplitReport]
    reject_file: str | None = None


@dataclass(frozen=True)
class SourceRow:
    number: int  # 1-based data row (table) or record (FASTA)
    fields: dict[str, Any]  # the original fields, for the reject file
    sequences: list[str]
    target: str | None
    problem: str | None = None  # a reason found while joining FASTA and label table


# ---- readers ---------------------------------------------------------------------------


def is_fasta(path: Path) -> bool:
    return path.suffix.lower() in FASTA_SUFFIXES


def _table_batches(path: Path, chunk_rows: int, progress: Progress) -> Iterator[pa.RecordBatch]:
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        parquet = pq.ParquetFile(path)
        done = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            done += batch.num_rows
            yield batch
            progress(done)
        return
    delimiter = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}.get(suffix)
    if delimiter is None:
        raise DataError(f"{path}: unknown table type '{suffix}'; use .csv, .tsv or .parquet")
    with open(path, encoding="utf-8-sig", newline="") as text:
        header = next(csv.reader(text, delimiter=delimiter), None)
    if not header:
        raise DataError(f"{path}: the file is empty; the first line must name the columns")
    if len(set(header)) != len(header):
        raise DataError(f"{path}: column names repeat in the header: {', '.join(header)}")
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header}, strings_can_be_null=False
    )
    with open(path, "rb") as handle:
        reader = pacsv.open_csv(
            handle,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=convert,
        )
        try:
            for batch in reader:
                yield batch
                progress(handle.tell())
        except pa.ArrowInvalid as exc:
            raise DataError(f"{path}: cannot parse the table ({exc})") from None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def iter_table(path: Path, chunk_rows: int, progress: Progress) -> Iterator[dict[str, str]]:
    """Rows as {column: text}, read a chunk at a time."""
    for batch in _table_batches(path, chunk_rows, progress):
        names = batch.schema.names
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for values in zip(*columns):
            yield {name: _text(v) for name, v in zip(names, values)}


def iter_fasta(path: Path, progress: Progress) -> Iterator[tuple[str, str, str]]:
    """(id, header, sequence) per record; the id is the header's first word."""
    header: str | None = None
    parts: list[str] = []
    done = 0
    with open(path, "rb") as handle:
        for raw in handle:
            done += len(raw)
            line = raw.decode("utf-8").strip()
            if line.startswith(">"):
                if header is not None:
                    yield header.split(maxsplit=1)[0] if header else "", header, "".join(parts)
                    progress(done)
                header, parts = line[1:].strip(), []
            elif line:
                if header is None:
                    raise DataError(f"{path}: not FASTA (the first record line must start '>')")
                parts.append(line)
    if header is not None:
        yield header.split(maxsplit=1)[0] if header else "", header, "".join(parts)
    progress(done)


def _require(path: Path, names: Iterable[str], columns: Iterable[str], flag: str) -> None:
    names = list(names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(
            f"{path} has no column '{missing[0]}' (columns: {', '.join(names)}); "
            f"name the right one with {flag}"
        )


def _label_table(path: Path, options: BuildOptions) -> dict[str, str]:
    """id -> label for FASTA input; labels are small next to sequences, so held in memory."""
    mapping: dict[str, str] = {}
    for i, row in enumerate(iter_table(path, options.chunk_rows, lambda _: None)):
        if i == 0:
            _require(
                path, row, [options.id_column, options.label_column], "--id-column/--label-column"
            )
        mapping[row[options.id_column]] = row[options.label_column]
    return mapping


def read_rows(
    path: Path, card: TaskCard, options: BuildOptions, progress: Progress
) -> Iterator[SourceRow]:
    """The split's rows in file order, whichever of the three input layouts is used."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    seq_columns = [c.strip() for c in options.sequence_column.split(",") if c.strip()]
    if len(seq_columns) != card.num_sequences:
        raise DataError(
            f"task '{card.name}' takes {card.num_sequences} sequence(s) per example but "
            f"--sequence-column names {len(seq_columns)}: {options.sequence_column}"
        )
    if is_fasta(path):  # FASTA records + label table keyed by record id
        if options.labels is None or card.num_sequences != 1:
            raise DataError(f"{path} is FASTA: give the labels with --labels TABLE (id, label)")
        labels = _label_table(options.labels, options)
        for number, (rid, header, seq) in enumerate(iter_fasta(path, progress), start=1):
            label = labels.get(rid)
            problem = None if label is not None else f"record {clip_cell(rid)} has no label"
            fields = {"id": rid, "header": header, "sequence": seq}
            yield SourceRow(number, fields, [seq], label, problem)
        return
    lookup: dict[str, str] | None = None
    if options.fasta is not None:  # id + label table, sequences from one FASTA file
        lookup = {rid: seq for rid, _, seq in iter_fasta(options.fasta, lambda _: None)}
        seq_columns = [options.id_column]
    for number, row in enumerate(iter_table(path, options.chunk_rows, progress), start=1):
        if number == 1:
            _require(
                path,
                row,
                [*seq_columns, options.label_column],
                "--sequence-column/--label-column/--id-column",
            )
        target = row[options.label_column]
        if lookup is None:
            yield SourceRow(number, row, [row[c] for c in seq_columns], target)
            continue
        rid = row[options.id_column]
        found = lookup.get(rid)
        problem = None if found is not None else f"no FASTA record {clip_cell(rid)}"
        yield SourceRow(number, row, [found or ""], target, problem)


# ---- checking --------------------------------------------------------------------------


class RowChecker:
    """Validates a row against the card: alphabet, label vocabulary, finite value in range."""

    def __init__(self, card: TaskCard) -> None:
        self.card = card
        letters = "".join(sorted(ALPHABETS[card.modality]))
        self.bad_letter = re.compile(f"[^{re.escape(letters + letters.lower())}]")

    def check(self, row: SourceRow) -> Checked | str:
        """(sequences, label, value) or the reason the row is bad."""
        if row.problem is not None:
            return row.problem
        sequences = ["".join(s.split()) for s in row.sequences]
        for i, seq in enumerate(sequences):
            which = f"sequence {i + 1}" if len(sequences) > 1 else "sequence"
            if not seq:
                return f"empty {which}"
            bad = [
                (m.start(), m.group()) for m in itertools.islice(self.bad_letter.finditer(seq), 3)
            ]
            if bad:
                shown = ", ".join(f"{ch!r} at {pos + 1}" for pos, ch in bad)
                return f"{which} has characters {self.card.modality.value} does not allow: {shown}"
        target = self.card.parse_target(row.target or "")
        return target if isinstance(target, str) else (sequences, *target)


# ---- writing ---------------------------------------------------------------------------


def write_records(
    records: Iterable[InstructionRecord],
    path: Path,
    split: str,
    batch_rows: int = 10_000,
    shard_rows: int = 500_000,
) -> int:
    """Stream records into a ``datasets`` folder at ``path`` (the ``save_to_disk`` layout).

    Batches go straight into Arrow stream shards with the fixed schema, then the two small
    JSON files ``load_from_disk`` reads are written next to them. Neither the per-example
    encoding of ``Dataset.from_generator`` (20x slower here) nor a ``save_to_disk`` pass
    (which re-reads the whole file through a memory map, so resident memory grows with
    the output) is needed: memory holds one batch of Python dicts at a time.
    """
    schema = RECORD_FEATURES.arrow_schema
    path.mkdir(parents=True)
    shards: list[Path] = []
    count = 0
    iterator = iter(records)
    batch = list(itertools.islice(iterator, batch_rows))
    while batch:
        shards.append(path / f"part-{len(shards)}.arrow")
        with pa.OSFile(str(shards[-1]), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            in_shard = 0
            while batch and in_shard < shard_rows:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                in_shard += len(batch)
                batch = list(itertools.islice(iterator, batch_rows))
        count += in_shard
    if not shards:
        raise DataError(f"no records to write for {split}: the input has no usable rows")
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for shard, name in zip(shards, names):
        shard.rename(path / name)
    datasets.DatasetInfo(features=RECORD_FEATURES).write_to_directory(str(path))
    state: dict[str, Any] = {
        "_data_files": [{"filename": name} for name in names],
        "_fingerprint": uuid.uuid4().hex,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": split,
    }
    (path / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), "utf-8")
    return count


def _split_records(
    card: TaskCard,
    split: str,
    path: Path,
    options: BuildOptions,
    report: SplitReport,
    rejects: IO[str] | None,
    progress: Progress,
) -> Iterator[InstructionRecord]:
    checker = RowChecker(card)
    augment = split == "train"
    maker = RecordMaker(
        card,
        split,
        random.Random(f"{options.seed}:{split}:{card.name}"),
        options.multi_turn if augment else 0.0,
        options.multi_sequence if augment else 0.0,
    )
    for row in read_rows(path, card, options, progress):
        report.rows_read += 1
        result = checker.check(row)
        if isinstance(result, str):
            report.rejected += 1
            if len(report.first_bad) < SHOWN_BAD_ROWS:
                report.first_bad.append((row.number, result))
            if rejects is not None:
                fields = json.dumps(row.fields, ensure_ascii=False)
                rejects.write(f"{split}\t{row.number}\t{result}\t{fields}\n")
            continue
        if report.rejected and not options.skip_bad:
            continue  # keep scanning to count every bad row, but write nothing more
        report.rows_used += 1
        yield from _counted(maker.feed(result), report, card.num_sequences)
    if report.rejected and not options.skip_bad:
        shown = "; ".join(f"row {n}: {reason}" for n, reason in report.first_bad)
        more = " (first 5 shown)" if report.rejected > SHOWN_BAD_ROWS else ""
        raise DataError(
            f"{path}: {report.rejected} bad row(s){more}: {shown}; fix them or pass "
            "--skip-bad to skip them into a reject file"
        )
    yield from _counted(maker.flush(), report, card.num_sequences)


def _counted(
    records: list[InstructionRecord], report: SplitReport, per_record: int
) -> list[InstructionRecord]:
    for record in records:
        report.records += 1
        report.multi_turn += len(record["turns"]) > 1
        report.multi_sequence += len(record["sequences"]) > per_record
    return records


def prepare_output(out: Path, overwrite: bool) -> Path:
    """Check ``out`` may be written and return a scratch folder inside it for the build."""
    if not overwrite and any((out / name).exists() for name in ("train", "test")):
        raise DataError(f"{out} already holds a dataset; pass --overwrite or pick another --out")
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / f".building-{uuid.uuid4().hex[:8]}"
    workdir.mkdir()
    return workdir


def publish(workdir: Path, out: Path) -> None:
    """Move finished splits from the scratch folder into place (only after all succeeded)."""
    for split in sorted(p.name for p in workdir.iterdir() if p.is_dir()):
        shutil.rmtree(out / split, ignore_errors=True)
        (workdir / split).rename(out / split)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def build_dataset(
    card: TaskCard,
    train: Path,
    test: Path,
    out: Path,
    options: BuildOptions | None = None,
    progress: Callable[[str, Path], Progress] | None = None,
) -> BuildReport:
    """Build ``out/train``, ``out/test`` and ``out/manifest.json`` from the user's split."""
    options = options or BuildOptions()
    fractions = (options.multi_turn, options.multi_sequence)
    if min(fractions) < 0 or sum(fractions) > 1:
        raise DataError("--multi-turn and --multi-sequence are fractions adding up to at most 1")
    created = not out.exists()
    workdir = prepare_output(out, options.overwrite)
    reject_path = options.reject_file or out / "rejects.tsv"
    reports = {"train": SplitReport(str(train)), "test": SplitReport(str(test))}
    with contextlib.ExitStack() as stack:
        if created:  # a failed build leaves no empty folder behind
            stack.callback(_remove_if_empty, out)
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        rejects = None
        if options.skip_bad:
            reject_path.parent.mkdir(parents=True, exist_ok=True)
            rejects = stack.enter_context(open(reject_path, "w", encoding="utf-8"))
            rejects.write("split\trow\treason\tfields\n")
        for split, path in (("train", train), ("test", test)):
            tick = progress(split, path) if progress is not None else (lambda _: None)
            records = _split_records(card, split, path, options, reports[split], rejects, tick)
            write_records(records, workdir / split, split)
        publish(workdir, out)
    rejected = sum(r.rejected for r in reports.values())
    if options.skip_bad and not rejected:
        reject_path.unlink()
    report = BuildReport(
        card.name,
        card.content_hash(),
        options.seed,
        str(out),
        reports,
        str(reject_path) if rejected else None,
    )
    manifest = {
        "format": MANIFEST_FORMAT,
        **asdict(report),
        "options": {
            "multi_turn": options.multi_turn,
            "multi_sequence": options.multi_sequence,
            "skip_bad": options.skip_bad,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return report
