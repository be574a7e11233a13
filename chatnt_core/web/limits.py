"""What a public server refuses, and the one-at-a-time gate in front of the model.

A web page invites input no CLI user would type: a chromosome pasted into a text box, a
FASTA of a million records, fifty tags in one question, a hundred browsers pressing
"send" at once. Each limit here turns one of those into a one-line message that names the
limit, the value that broke it and what to do, instead of an out-of-memory crash or a
page that spins for ever. The same checks serve the page and the HTTP API, whose status
codes come from ``LimitError.status``.

The model is one set of weights on one device: ``ModelGate`` lets one request at a time
use it, keeps at most ``max_queue`` waiting, and gives up on a request that has waited
``timeout`` seconds. Work already running cannot be stopped half-way through a decoder
pass, so the batch runner checks the request's deadline between its batches
(``Deadline.check``) and answers are bounded by ``max_new_tokens``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from chatnt_core.errors import ChatNTError


class LimitError(ChatNTError):
    """A request broke one of the server's limits; ``status`` is its HTTP status code."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """The server's limits (``chatnt serve --help`` names the option for each)."""

    max_sequence_length: int = 12_000  # letters in one sequence (NT-v2 reads ~12 kb)
    max_upload_bytes: int = 10_000_000  # one uploaded FASTA, or one HTTP request body
    max_batch_records: int = 1000  # records in one batch FASTA
    max_tags: int = 8  # distinct @tags in one question
    max_queue: int = 64  # requests waiting for the model
    timeout: float = 300.0  # seconds a request may wait for the model, and a batch may run
    max_new_tokens: int = 128  # longest answer in tokens (the CLI's default)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                option = "max-upload-mb" if name == "max_upload_bytes" else name.replace("_", "-")
                raise ChatNTError(f"--{option} must be positive, not {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- the checks ------------------------------------------------------------------------

    def check_sequence(self, name: str, length: int) -> None:
        if length > self.max_sequence_length:
            raise LimitError(
                f"@{name} is {length:,} letters long; this server takes sequences of up to "
                f"{self.max_sequence_length:,} letters: send a shorter piece (or run "
                "chatnt on your own machine)"
            )

    def check_upload(self, name: str, size: int) -> None:
        if size > self.max_upload_bytes:
            raise LimitError(
                f"{name} is {_megabytes(size)}; this server takes uploads of up to "
                f"{_megabytes(self.max_upload_bytes)}: split the file"
            )

    def check_records(self, name: str, count: int) -> None:
        if count > self.max_batch_records:
            raise LimitError(
                f"{name} holds {count:,} records; this server answers up to "
                f"{self.max_batch_records:,} per batch: split the file (or run chatnt batch "
                "on your own machine)"
            )

    def check_tags(self, count: int) -> None:
        if count > self.max_tags:
            raise LimitError(
                f"the question names {count} sequences; this server takes up to "
                f"{self.max_tags} @tags per question: ask about fewer at a time",
                status=400,
            )

    def check_new_tokens(self, count: int) -> None:
        if count < 1 or count > self.max_new_tokens:
            raise LimitError(
                f"max_new_tokens is {count}; this server allows 1 to {self.max_new_tokens}",
                status=400,
            )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


@dataclass(frozen=True)
class Deadline:
    """When a request must be finished; ``check`` raises once that time has passed."""

    at: float
    timeout: float

    def check(self, progress: str = "") -> None:
        if time.monotonic() > self.at:
            done = f" ({progress})" if progress else ""
            raise LimitError(
                f"the request took longer than this server's timeout of {self.timeout:g} s"
                f"{done}: send less at a time",
                status=504,
            )


class ModelGate:
    """One request at a time on the model, a bounded queue, and a wait timeout.

    A request that finds ``max_queue`` others waiting is refused at once (503) rather than
    queued behind work it would time out waiting for; one that waits ``timeout`` seconds
    without getting the model is refused with 503 too. Both say to retry later.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._model = threading.Lock()
        self._count = threading.Lock()
        self.waiting = 0

    @contextmanager
    def hold(self) -> Iterator[Deadline]:
        """Wait for the model; inside, the caller has it alone until its deadline."""
        started = time.monotonic()
        with self._count:
            if self.waiting >= self.limits.max_queue:
                raise LimitError(
                    f"the server is busy ({self.waiting} requests are waiting for the model, "
                    f"the most it queues is {self.limits.max_queue}): retry in a minute",
                    status=503,
                )
            self.waiting += 1
        try:
            acquired = self._model.acquire(timeout=self.limits.timeout)
        finally:
            with self._count:
                self.waiting -= 1
        if not acquired:
            raise LimitError(
                f"waited {self.limits.timeout:g} s for the model, which is busy with other "
                "requests: retry later",
                status=503,
            )
        try:
            yield Deadline(started + self.limits.timeout, self.limits.timeout)
        finally:
            self._model.release()
