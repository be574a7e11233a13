"""Training data: instruction datasets on disk, grouped by task, tokenized on demand.

Datasets are opened memory-mapped and never concatenated (their optional ``label`` /
``value`` columns may have different inferred types), so a global row number maps to
(dataset, local row) through offsets. Examples are tokenized when the sampler draws
them; only the token counts matter to the sampler.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatnt_core.batching import IGNORE_INDEX, TokenizedExample, tokenize_example
from chatnt_core.data.records import RECORD_COLUMNS, record_to_example
from chatnt_core.errors import ChatNTError
from chatnt_core.training.config import DataConfig
from chatnt_core.training.sampling import TaskIndex, build_task_index


def _open_split(path: Path, split: str) -> Any:
    from datasets import DatasetDict, load_from_disk

    if not path.exists():
        raise ChatNTError(
            f"data path {path} does not exist: build the dataset first (a directory saved "
            "with datasets' save_to_disk, holding train/ and test/)"
        )
    target = path / split if (path / split).is_dir() else path
    try:
        loaded = load_from_disk(str(target))
    except (FileNotFoundError, ValueError) as exc:
        raise ChatNTError(
            f"{target} is not a datasets directory ({exc}): give the folder that save_to_disk wrote"
        ) from None
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise ChatNTError(
                f"{path} has splits {', '.join(loaded)} but no '{split}': set data.split"
            )
        loaded = loaded[split]
    missing = [c for c in RECORD_COLUMNS if c not in loaded.column_names]
    if missing:
        raise ChatNTError(
            f"{target} lacks the record columns {', '.join(missing)}: see "
            "chatnt_core.data.records for the stored row format"
        )
    return loaded


@dataclass
class TrainingData:
    datasets: list[Any]  # datasets.Dataset, one per path
    paths: list[Path]
    offsets: list[int]  # first global row of each dataset
    index: TaskIndex

    @classmethod
    def load(cls, config: DataConfig) -> TrainingData:
        paths = [Path(p) for p in config.paths]
        datasets = [_open_split(p, config.split) for p in paths]
        offsets, tasks, total = [], [], 0
        for dataset in datasets:
            offsets.append(total)
            tasks += [str(t) for t in dataset["task"]]
            total += len(dataset)
        return cls(datasets, paths, offsets, build_task_index(tasks, config.tasks))

    def __len__(self) -> int:
        return self.index.num_examples

    def record(self, row: int) -> tuple[dict[str, Any], str]:
        part = bisect.bisect_right(self.offsets, row) - 1
        local = row - self.offsets[part]
        return dict(self.datasets[part][local]), f"{self.paths[part]} row {local}"


def answer_tokens(example: TokenizedExample) -> int:
    """Positions the loss counts: labels after the first (the model shifts by one)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


class ExampleCache:
    """Tokenized examples of the current update, keyed by global row."""

    def __init__(self, data: TrainingData, model: Any) -> None:
        self.data = data
        self.model = model
        self.examples: dict[int, TokenizedExample] = {}

    def get(self, row: int) -> TokenizedExample:
        if row not in self.examples:
            record, where = self.data.record(row)
            try:
                self.examples[row] = tokenize_example(
                    record_to_example(record),
                    self.model.decoder,
                    self.model.config.prompt,
                    self.model.num_latents,
                    self.model.modalities,
                )
            except ChatNTError as exc:
                raise ChatNTError(f"training example {where}: {exc}") from None
            if answer_tokens(self.examples[row]) == 0:
                raise ChatNTError(
                    f"training example {where} has no answer tokens: every training "
                    "conversation must end with an assistant answer"
                )
        return self.examples[row]

    def num_tokens(self, row: int) -> int:
        return len(self.get(row).input_ids)

    def clear(self) -> None:
        self.examples.clear()
