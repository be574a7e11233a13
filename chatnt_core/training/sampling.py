"""Which examples go into each update, and how they are cut into micro-batches.

Uniform task sampling (Methods §1.2: "each batch has the same proportion of samples per
task"): the tasks of an update are drawn in blocks, each block a fresh random permutation
of all T tasks, so any update of n samples holds floor(n/T) or ceil(n/T) samples of every
task however unequal the task sizes are. Within a task, examples come from a shuffled
order of that task, reshuffled each time it is used up (so every example is seen once
before any is repeated).

Everything is a pure function of (seed, update step, per-task draw counters); the
counters are saved in checkpoints, so a resumed run draws exactly what the uninterrupted
run would have drawn.

Which tokens count towards ``tokens_per_update``: every decoder position of the example
before padding - system prompt, user turns, K placeholder positions per tag, answers and
their EOS. Padding and encoder tokens do not count. An update holds the fewest samples
whose token counts sum to at least the budget (and at least one sample per process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatnt_core.errors import ChatNTError

_TASK_STREAM = 0  # rng stream ids, so task order and within-task orders never collide
_EXAMPLE_STREAM = 1


@dataclass(frozen=True)
class TaskIndex:
    """Dataset rows grouped by task; tasks sorted by name so the order never depends on I/O."""

    names: list[str]
    rows: list[np.ndarray]  # rows[t]: int64 dataset row indices of task t

    @property
    def num_examples(self) -> int:
        return int(sum(len(r) for r in self.rows))


def build_task_index(task_column: Sequence[str], only: Sequence[str] | None = None) -> TaskIndex:
    """Group row indices by the ``task`` column; ``only`` keeps a subset of tasks."""
    groups: dict[str, list[int]] = {}
    for row, task in enumerate(task_column):
        groups.setdefault(str(task), []).append(row)
    if only is not None:
        missing = sorted(set(only) - set(groups))
        if missing:
            raise ChatNTError(
                f"data.tasks names {', '.join(missing)} but the datasets hold only "
                f"{', '.join(sorted(groups)) or 'no tasks'}: fix data.tasks"
            )
        groups = {name: groups[name] for name in only}
    if not groups:
        raise ChatNTError("the training data holds no examples: check data.paths and data.split")
    names = sorted(groups)
    return TaskIndex(names, [np.asarray(groups[n], dtype=np.int64) for n in names])


@dataclass
class SamplerState:
    """What a checkpoint must hold to continue the draws exactly."""

    task_names: list[str]
    draws: list[int]  # per task: examples drawn so far

    def to_json(self) -> dict[str, Any]:
        return {"task_names": list(self.task_names), "draws": list(self.draws)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SamplerState:
        return cls(list(data["task_names"]), [int(d) for d in data["draws"]])


@dataclass(frozen=True)
class Draw:
    row: int  # dataset row
    task: int  # index into TaskIndex.names
    num_tokens: int


@dataclass
class UniformTaskSampler:
    index: TaskIndex
    seed: int
    state: SamplerState = field(init=False)
    _orders: dict[int, tuple[int, np.ndarray]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.state = SamplerState(list(self.index.names), [0] * len(self.index.names))

    def load_state(self, state: SamplerState) -> None:
        if state.task_names != self.index.names:
            raise ChatNTError(
                "the checkpoint was trained on tasks "
                f"{', '.join(state.task_names)} but the data now holds "
                f"{', '.join(self.index.names)}: resume with the same data"
            )
        self.state = SamplerState(list(state.task_names), list(state.draws))

    def task_order(self, step: int) -> Iterator[int]:
        """Tasks of update ``step``: endless blocks, each a permutation of all tasks."""
        rng = np.random.default_rng([self.seed, _TASK_STREAM, step])
        while True:
            yield from (int(t) for t in rng.permutation(len(self.index.names)))

    def next_row(self, task: int) -> int:
        """The next example of ``task`` in its current shuffled pass."""
        rows = self.index.rows[task]
        drawn = self.state.draws[task]
        epoch, position = divmod(drawn, len(rows))
        cached = self._orders.get(task)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, _EXAMPLE_STREAM, task, epoch])
            cached = (epoch, rng.permutation(len(rows)))
            self._orders[task] = cached
        self.state.draws[task] = drawn + 1
        return int(rows[cached[1][position]])

    def draw_update(
        self,
        step: int,
        num_tokens: Callable[[int], int],
        tokens_per_update: int | None,
        samples_per_update: int | None,
        min_samples: int = 1,
    ) -> list[Draw]:
        """The samples of update ``step``; ``num_tokens(row)`` gives an example's length."""
        draws: list[Draw] = []
        total = 0
        tasks = self.task_order(step)

        def wants_more() -> bool:
            if len(draws) < min_samples:
                return True
            if samples_per_update is not None:
                return len(draws) < samples_per_update
            assert tokens_per_update is not None
            return total < tokens_per_update

        while wants_more():
            task = next(tasks)
            row = self.next_row(task)
            length = num_tokens(row)
            draws.append(Draw(row, task, length))
            total += length
        return draws


def plan_micro_batches(
    lengths: Sequence[int],
    micro_batch_size: int,
    bucket_by_length: bool,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """This process's micro-batches: lists of positions into the update's samples.

    With bucketing, the update is sorted longest first before it is dealt out to the
    processes and cut, so each micro-batch holds similar lengths (less padding) and the
    processes get similar loads. The gradient of an update does not depend on how its
    samples are grouped, so bucketing changes speed, not what is learned.
    """
    positions = list(range(len(lengths)))
    if bucket_by_length:
        positions.sort(key=lambda p: (-lengths[p], p))
    mine = positions[rank::world_size]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions over all micro-batches (each padded to its longest)."""
    padded = sum(max(lengths[p] for p in b) * len(b) for b in batches if b)
    real = sum(lengths[p] for b in batches for p in b)
    return 0.0 if padded == 0 else 1.0 - real / padded
