"""Evaluation over several processes that gives exactly the numbers of one process.

Why whole batches rather than records: a generated answer (or a P(yes)) can depend in
its last bits on the rows padded into the same batch, so splitting the *records* between
processes would form other batches than one process forms and could change a greedy
token. Instead every process builds the same length-sorted batches as one process would,
answers batch ``b`` only when ``b % world == rank`` (dealt round-robin, so the long and
the short batches spread evenly), and the answers are gathered to every process in the
original order. Each batch is computed exactly as a single process computes it, so the
report is the same row for row.

Launch ``chatnt evaluate`` with ``torchrun`` or ``accelerate launch``; the main process
writes the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in a launch: it answers the batches it ``owns``."""

    rank: int
    world: int

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.world == self.rank

    def combine(
        self, values: Sequence[T], mine: Sequence[int], advance: Callable[[int], None]
    ) -> list[T]:
        """``values`` with every process's own positions filled in (a collective call:
        every process makes it, with the positions it computed); ``advance`` is told how
        many positions the other processes computed, so the main progress bar ends full."""
        import torch.distributed as dist

        combined = list(values)
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, [(i, values[i]) for i in mine])
        others = 0
        for rank, pairs in enumerate(gathered):
            for i, value in pairs:
                combined[i] = value
            others += len(pairs) if rank != self.rank else 0
        advance(others)
        return combined


def launch_shard() -> tuple[Shard | None, Any]:
    """The shard of this process and Accelerate's process state, or ``(None, None)`` when
    the command runs alone (no ``WORLD_SIZE`` above 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, None
    from chatnt_core.batch import process_state

    state = process_state()
    return Shard(state.process_index, state.num_processes), state
