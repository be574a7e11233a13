"""What evaluation and calibration share: reading a split, sampling rows, batched model calls.

Rows are chosen per task and deterministically (a seeded sample of the task's rows, kept
in data order), so two runs with the same seed score the same examples and a result can
be reproduced. Only rows with a target count: a pair record (two sequences answered in
one message) has neither ``label`` nor ``value`` and is skipped.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatnt_core.data.records import RECORD_COLUMNS, record_to_example
from chatnt_core.data.tasks import TaskCard, fill
from chatnt_core.errors import ChatNTError
from chatnt_core.progress import PeriodicLines

if TYPE_CHECKING:
    from chatnt_core.calibration import Formulation
    from chatnt_core.evaluation.shard import Shard
    from chatnt_core.model import ChatNTModel

Advance = Callable[[int], None]


def _nothing(_: int) -> None:
    return None


def open_split(data_dir: Path, split: str) -> Any:
    """``DATA_DIR/split`` as a memory-mapped ``datasets.Dataset``; one-line errors otherwise."""
    if not data_dir.is_dir():
        raise ChatNTError(
            f"data directory {data_dir} does not exist: build one with 'chatnt data build' "
            "or 'chatnt data demo --out DIR'"
        )
    target = data_dir / split
    if not target.is_dir():
        raise ChatNTError(
            f"{data_dir} has no '{split}' split ({target} is missing): give the folder that "
            "'chatnt data build' wrote"
        )
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(target))
    except (FileNotFoundError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ChatNTError(f"{target} is not a datasets folder ({first})") from None
    missing = [c for c in RECORD_COLUMNS if c not in getattr(dataset, "column_names", [])]
    if missing:
        raise ChatNTError(
            f"{target} lacks the record columns {', '.join(missing)}: see "
            "chatnt_core.data.records for the stored row format"
        )
    return dataset


def unknown_task_error(name: str, cards: Mapping[str, TaskCard]) -> ChatNTError:
    close = difflib.get_close_matches(name, list(cards), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ChatNTError(f"unknown task '{name}'{hint} (see registry/tasks/ for the task cards)")


def task_rows(
    dataset: Any,
    cards: Mapping[str, TaskCard],
    tasks: Sequence[str] | None,
    max_per_task: int,
    seed: int,
    where: str,
) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Rows to use per task (seeded sample, data order) and the tasks skipped, with why.

    Asked-for tasks must have a card and rows; otherwise the tasks are those in the data,
    and a task without a card is skipped (reported), since its answers cannot be parsed.
    """
    for name in tasks or []:
        if name not in cards:
            raise unknown_task_error(name, cards)
    names, labels, values = dataset["task"], dataset["label"], dataset["value"]
    rows: dict[str, list[int]] = {}
    for index, (name, label, value) in enumerate(zip(names, labels, values)):
        if label is not None or value is not None:
            rows.setdefault(str(name), []).append(index)
    skipped: dict[str, str] = {}
    if tasks:
        for name in tasks:
            if name not in rows:
                raise ChatNTError(f"task '{name}' has no rows with a target in {where}")
        chosen = list(dict.fromkeys(tasks))
    else:
        chosen = sorted(rows)
        for name in [n for n in chosen if n not in cards]:
            skipped[name] = "no task card with this name, so its answers cannot be parsed"
        chosen = [n for n in chosen if n in cards]
    picked = {}
    for name in chosen:
        candidates = rows[name]
        if len(candidates) > max_per_task:
            rng = random.Random(f"chatnt-eval:{seed}:{name}")
            candidates = sorted(rng.sample(candidates, max_per_task))
        picked[name] = candidates
    return picked, skipped


def read_records(dataset: Any, rows: Sequence[int]) -> list[dict[str, Any]]:
    if not rows:
        return []
    return [dict(record) for record in dataset.select(list(rows))]


def sequence_tags(card: TaskCard, record: Mapping[str, Any]) -> dict[str, str] | None:
    """Placeholder -> the record's tag name, or None when the counts differ."""
    names = [s["name"] for s in record["sequences"]]
    if len(names) != len(card.seq_placeholders):
        return None
    return dict(zip(card.seq_placeholders, names))


def binary_phrasings(card: TaskCard) -> tuple[list[str], list[str]]:
    """The positive label's answer templates, then the negative label's (paper Methods §3)."""
    labels = card.labels or []
    positive = [a for label in labels if label.positive for a in label.answers]
    negative = [a for label in labels if not label.positive for a in label.answers]
    return positive, negative


def _length(record: Mapping[str, Any]) -> int:
    text = sum(len(t["user"]) + len(t["assistant"]) for t in record["turns"])
    return text + sum(len(s["sequence"]) for s in record["sequences"])


def length_batches(records: Sequence[Mapping[str, Any]], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, so left padding wastes little compute."""
    order = sorted(range(len(records)), key=lambda i: _length(records[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def generate_answers(
    model: ChatNTModel,
    records: Sequence[Mapping[str, Any]],
    batch_size: int,
    max_new_tokens: int,
    advance: Advance = _nothing,
    shard: Shard | None = None,
    known: Mapping[int, str] | None = None,
) -> list[str]:
    """Greedy answers to each record's last question (earlier turns kept as history).

    ``known``: record index -> its greedy answer, already decoded (by answer scoring,
    ``positive_probabilities``); those records are not decoded again. With a ``shard``,
    this process answers its own batches and the others' answers are gathered
    (``evaluation/shard.py``); every process returns all answers."""
    from chatnt_core.inference.generation import GenerationConfig, generate_ids

    config = GenerationConfig(max_new_tokens=max_new_tokens)
    known = known or {}
    answers = [known.get(i, "") for i in range(len(records))]
    todo = [i for i in range(len(records)) if i not in known]
    advance(len(records) - len(todo))
    mine: list[int] = []
    for index, chunk in enumerate(length_batches([records[i] for i in todo], batch_size)):
        if shard is not None and not shard.owns(index):
            continue
        batch = [todo[j] for j in chunk]
        mine.extend(batch)
        examples = [record_to_example(records[i], with_answers=False) for i in batch]
        tokenized = model.tokenize(examples).to(model.device)
        texts = model.answer_texts(tokenized, generate_ids(model, tokenized, config))
        for i, text in zip(batch, texts):
            answers[i] = text.strip()
        advance(len(batch))
    return answers if shard is None else shard.combine(answers, mine, advance)


def positive_probabilities(
    model: ChatNTModel,
    card: TaskCard,
    records: Sequence[Mapping[str, Any]],
    batch_size: int,
    advance: Advance = _nothing,
    formulation: Formulation = "paper",
    shard: Shard | None = None,
    greedy_answers: dict[int, str] | None = None,
    max_new_tokens: int = 0,
) -> np.ndarray:
    """(n,) perplexity-based P(positive) per record; NaN where the tags do not fit the card.

    ``formulation``: how phrasing scores become P(positive) (``chatnt_core.calibration``).

    The answer phrasings are rendered with each record's own tags, and records sharing
    tags are scored together (one set of candidates per batch). At most ``batch_size``
    candidate rows go through the decoder at once, which bounds memory like a generation
    batch of the same size. With a ``shard``, batches are dealt out as in
    ``generate_answers``. ``greedy_answers`` receives, for the records whose greedy answer
    (within ``max_new_tokens``) is one of the phrasings, that answer: scoring has decoded
    it already (``CandidateScores.greedy_answers``); with a shard, every process's.
    """
    from chatnt_core.calibration import class_probabilities
    from chatnt_core.inference.generation import GenerationConfig, stop_token_ids

    stops = stop_token_ids(model, GenerationConfig(max_new_tokens=max_new_tokens))
    positive, negative = binary_phrasings(card)
    probs = np.full(len(records), np.nan)
    decoded: list[str | None] = [None] * len(records)
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for i, record in enumerate(records):
        tags = sequence_tags(card, record)
        if tags is None:
            advance(1)
            continue
        groups.setdefault(tuple(sorted(tags.items())), []).append(i)
    mine: list[int] = []
    index = -1  # batches are counted over all groups, in the same order on every process
    for key, members in groups.items():
        tags = dict(key)
        pos = [fill(a, tags) for a in positive]
        neg = [fill(a, tags) for a in negative]
        group = [records[i] for i in members]
        for batch in length_batches(group, batch_size):
            index += 1
            if shard is not None and not shard.owns(index):
                continue
            examples = [record_to_example(group[j], with_answers=False) for j in batch]
            p, scores = class_probabilities(
                model, examples, pos, neg, formulation, max_rows=batch_size
            )
            probs[[members[j] for j in batch]] = p[:, 0].detach().cpu().double().numpy()
            mine.extend(members[j] for j in batch)
            if greedy_answers is not None and max_new_tokens > 0:
                found = scores.greedy_answers(stops, max_new_tokens)
                texts = model.answer_texts(model.tokenize(examples), [ids or [] for ids in found])
                for j, ids, text in zip(batch, found, texts):
                    decoded[members[j]] = text.strip() if ids is not None else None
            advance(len(batch))
    if shard is not None:
        probs = np.array(shard.combine(probs.tolist(), mine, advance), dtype=float)
        decoded = shard.combine(decoded, mine, _nothing)
    if greedy_answers is not None:
        greedy_answers.update((i, text) for i, text in enumerate(decoded) if text is not None)
    return probs


class Tracker:
    """A progress bar handle: ``advance(n)`` and ``describe(text)``; no-ops when hidden."""

    def __init__(
        self, progress: Any = None, task: Any = None, lines: PeriodicLines | None = None
    ) -> None:
        self._progress, self._task, self._lines = progress, task, lines

    def advance(self, count: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, count)
        if self._lines is not None:
            self._lines.advance(count)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)
        if self._lines is not None:
            self._lines.describe(text)


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Tracker]:
    """A rich bar on stderr when ``enabled`` and stderr is a terminal; periodic plain lines
    when it is a file or pipe (``chatnt_core.progress``)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not enabled:
        yield Tracker()
        return
    if not console.is_terminal:
        lines = PeriodicLines("scored", total, "examples")
        yield Tracker(lines=lines)
        lines.finish()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield Tracker(progress, progress.add_task("evaluating", total=total))
