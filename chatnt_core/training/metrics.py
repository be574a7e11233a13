"""Where training metrics go: ``metrics.csv``, TensorBoard and a rich progress bar.

Only the main process logs. On resume, rows past the checkpoint's step (written by the
interrupted run after its last save) are dropped, so the CSV always reads as one run.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from chatnt_core.progress import clock

COLUMNS = (
    "step",
    "loss",
    "lr",
    "grad_norm",
    "samples",
    "tokens",
    "answer_tokens",
    "padding_fraction",
    "samples_per_s",
    "tokens_per_s",
    "elapsed_s",
)


def _format(value: Any) -> str:
    """Floats as repr (shortest exact form), so equal losses compare equal as text."""
    return repr(float(value)) if isinstance(value, float) else str(value)


class MetricsLogger:
    def __init__(self, output_dir: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = output_dir / "metrics.csv"
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            self._truncate(resume_step)
        elif self.path.exists():
            self.path.unlink()
        new = not self.path.exists()
        self.handle = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self.writer = csv.writer(self.handle)
        if new:
            self.writer.writerow(COLUMNS)
            self.handle.flush()
        self.tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge)

    def _truncate(self, step: int) -> None:
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= step]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(kept)
        os.replace(tmp, self.path)

    def log(self, row: dict[str, Any]) -> None:
        self.writer.writerow([_format(row[c]) for c in COLUMNS])
        self.handle.flush()
        if self.tb is not None:
            for name in COLUMNS[1:]:
                self.tb.add_scalar(f"train/{name}", float(row[name]), int(row["step"]))
            self.tb.flush()

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


class ProgressBar:
    """Loss, tokens/s and ETA: a live bar on a terminal, one plain line per logged row when
    stderr is a file or pipe (so a redirected run is never silent); nothing when disabled
    (tests, ranks > 0)."""

    def __init__(
        self, enabled: bool, total: int, completed: int, unit: str, label: str = "train"
    ) -> None:
        self.progress: Progress | None = None
        self.plain = enabled and not sys.stderr.isatty()
        self.total, self.unit, self.label = total, unit, label
        self.started = time.perf_counter()
        self.start_completed = completed
        if not (enabled and sys.stderr.isatty()):
            return
        self.progress = Progress(
            TextColumn(f"[bold]{label}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task("train", total=total, completed=completed, loss="-")
        self.progress.update(self.task, speed="-")

    def __enter__(self) -> ProgressBar:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, completed: int, loss: float | None, tokens_per_s: float | None) -> None:
        if self.plain and loss is not None:
            self._print_line(completed, loss, tokens_per_s)
        if self.progress is None:
            return
        fields: dict[str, Any] = {"completed": completed}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if tokens_per_s is not None:
            fields["speed"] = f"{tokens_per_s:,.0f}"
        self.progress.update(self.task, **fields)

    def _print_line(self, completed: int, loss: float, tokens_per_s: float | None) -> None:
        elapsed = time.perf_counter() - self.started
        done = completed - self.start_completed
        eta = elapsed / done * (self.total - completed) if done > 0 else float("nan")
        speed = f", {tokens_per_s:,.0f} tok/s" if tokens_per_s is not None else ""
        print(
            f"{self.label} {completed}/{self.total} {self.unit}, loss {loss:.4f}{speed}, "
            f"elapsed {clock(elapsed)}, ETA {clock(eta)}",
            file=sys.stderr,
            flush=True,
        )
