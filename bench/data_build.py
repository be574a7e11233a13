"""Benchmark ``chatnt data build``: rows per second and peak memory on a large synthetic file.

Writes a CSV of random 200 bp DNA with 0/1 labels (1M train rows by default), builds it
with a shipped binary card, and reports the build's throughput and the process's peak
resident memory (``resource.getrusage`` maxrss). The point is to show that memory stays
bounded: the builder streams chunks, so peak RSS should not grow with the row count.

    python bench/data_build.py                 # 1,000,000 rows
    python bench/data_build.py --rows 200000 --format parquet
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from chatnt_core.data.builder import BuildOptions, build_dataset
from chatnt_core.data.tasks import get_task_card

CHUNK = 100_000


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def synthetic_table(path: Path, rows: int, length: int, seed: int) -> None:
    """Random sequences and labels, written chunk by chunk so generation stays small too."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    writer: pq.ParquetWriter | pacsv.CSVWriter | None = None
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        codes = letters[rng.integers(0, 4, size=(n, length), dtype=np.uint8)]
        sequences = [bytes(row).decode() for row in codes]
        labels = rng.integers(0, 2, size=n).astype(str)
        table = pa.table({"sequence": sequences, "label": labels})
        if writer is None:
            if path.suffix == ".parquet":
                writer = pq.ParquetWriter(path, table.schema)
            else:
                writer = pacsv.CSVWriter(path, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--test-rows", type=int, default=10_000)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    parser.add_argument("--task", default="promoters")
    parser.add_argument("--multi-turn", type=float, default=0.0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        train, test = root / f"train.{args.format}", root / f"test.{args.format}"
        synthetic_table(train, args.rows, args.length, seed=1)
        synthetic_table(test, args.test_rows, args.length, seed=2)
        before = peak_rss_mb()
        card = get_task_card(args.task)
        started = time.perf_counter()
        report = build_dataset(
            card, train, test, root / "out", BuildOptions(multi_turn=args.multi_turn)
        )
        seconds = time.perf_counter() - started
        rows = report.splits["train"].rows_read + report.splits["test"].rows_read
        size = sum(f.stat().st_size for f in (root / "out").rglob("*") if f.is_file())
        result = {
            "rows": rows,
            "format": args.format,
            "seconds": round(seconds, 1),
            "rows_per_s": round(rows / seconds),
            "peak_rss_mb": round(peak_rss_mb()),
            "peak_rss_mb_before_build": round(before),
            "input_mb": round((train.stat().st_size + test.stat().st_size) / 1e6),
            "output_mb": round(size / 1e6),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
