"""Progress for logs: plain lines instead of a live bar when stderr is not a terminal.

A live bar redrawn into a file or a pipe fills the log with bar drawings (or, where the
bar is switched off, leaves minutes of silence). Long jobs whose stderr is not a terminal
(``chatnt batch``, ``evaluate``, ``calibrate``, the quickstart) print one line at most every
``every`` seconds and one at the end instead; the training loop does the same with its
own figures (``chatnt_core.training.metrics.ProgressBar``).
"""

from __future__ import annotations

import sys
import time


def clock(seconds: float) -> str:
    """``m:ss``; ``-`` while there is no rate yet."""
    if seconds != seconds or seconds == float("inf"):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class PeriodicLines:
    """``{label} {done}/{total} {unit} ({what}), {rate} {unit}/s, elapsed m:ss, ETA m:ss``."""

    def __init__(self, label: str, total: int, unit: str, every: float = 30.0) -> None:
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.done = 0
        self.what = ""
        self.started = self.shown = time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        if time.perf_counter() - self.shown >= self.every:
            self.line()

    def describe(self, text: str) -> None:
        self.what = text

    def line(self) -> None:
        self.shown = time.perf_counter()
        elapsed = self.shown - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        what = f" ({self.what})" if self.what else ""
        print(
            f"{self.label} {self.done}/{self.total} {self.unit}{what}, {rate:.2f} {self.unit}/s, "
            f"elapsed {clock(elapsed)}, ETA {clock(left)}",
            file=sys.stderr,
            flush=True,
        )

    def finish(self) -> None:
        if self.done:
            self.line()
