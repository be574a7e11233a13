"""Platt calibrators for binary tasks, fitted on training questions, stored with a checkpoint.

Paper, Methods §3: the perplexity-based P(positive) of each question is computed from the
positive and the negative answer phrasings, then a logistic regression (``C=0.1``,
lbfgs) fitted on 10,000 training examples maps it to a better-calibrated probability.
scikit-learn's ``C`` weighs the penalty against the *sum* of the examples' losses, so on
fewer examples the same ``C`` regularises more per example: on the quickstart's 200 it
held the slope near 1 and left P(yes) squeezed around 0.5 (CTCF ECE 0.37 after
calibration, with AUROC 0.95). ``C`` is therefore scaled to the paper's strength per
example (``paper_regularisation``: 0.1 x 10,000 / n). Here the
phrasings are the card's label answers (positive label's vs negative label's), rendered
with each question's tag; one calibrator per task.

Storage: ``CHECKPOINT/calibration.json``, one file mapping task -> calibrator plus the
phrasings it was fitted with. It is written atomically (temporary file, fsync, rename)
and is **outside** the checkpoint's ``manifest.json``: the checkpoint module has no public
way to extend its manifest, and checkpoint verification only checks the files the
manifest lists, so adding this file leaves the checkpoint valid. Fitting again merges:
tasks fitted now replace their entries, the others are kept.

Deviation from the paper, by necessity: the paper scores phrasings it held out of
training; a card has one answer pool per label, which training also draws from. A card
that wants held-out phrasings needs test-only answers, which the schema does not have yet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatnt_core.calibration import FORMULATIONS, Formulation, PlattCalibrator
from chatnt_core.data.tasks import TaskCard
from chatnt_core.errors import ChatNTError
from chatnt_core.evaluation.data import (
    binary_phrasings,
    open_split,
    positive_probabilities,
    progress_bar,
    read_records,
    task_rows,
)
from chatnt_core.training.state_io import write_text_atomic

if TYPE_CHECKING:
    from chatnt_core.evaluation.shard import Shard
    from chatnt_core.model import ChatNTModel

CALIBRATION_FILE = "calibration.json"
FORMAT = "chatnt-calibration/1"
PAPER_CALIBRATION_SIZE = 10_000  # training examples per task (Methods §3)


@dataclass
class TaskCalibration:
    """A fitted calibrator and what it was fitted on (to refuse it if the card changed)."""

    calibrator: PlattCalibrator
    positive_answers: list[str]
    negative_answers: list[str]
    n_examples: int
    n_positive: int
    formulation: Formulation = "paper"
    source: str = field(default="checkpoint", compare=False)  # not stored

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibrator": self.calibrator.to_dict(),
            "positive_answers": self.positive_answers,
            "negative_answers": self.negative_answers,
            "n_examples": self.n_examples,
            "n_positive": self.n_positive,
            "formulation": self.formulation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "checkpoint") -> TaskCalibration:
        return cls(
            PlattCalibrator.from_dict(dict(data["calibrator"])),
            [str(a) for a in data["positive_answers"]],
            [str(a) for a in data["negative_answers"]],
            int(data["n_examples"]),
            int(data["n_positive"]),
            _formulation(data.get("formulation", "paper")),
            source,
        )

    def mismatch(self, card: TaskCard) -> str | None:
        """Why this calibrator does not apply to ``card`` any more, or None."""
        if (self.positive_answers, self.negative_answers) != binary_phrasings(card):
            return "the card's answer phrasings changed since calibration; run calibrate again"
        return None


def _formulation(value: Any) -> Formulation:
    if value not in FORMULATIONS:
        raise ChatNTError(
            f"calibration.json names the formulation {value!r}; known: "
            f"{', '.join(FORMULATIONS)}. Run chatnt calibrate again"
        )
    return value


PAPER_C = 0.1
PAPER_CALIBRATION_SIZE = 10_000


def paper_regularisation(num_examples: int) -> float:
    """The paper's C = 0.1 on 10,000 examples, at the same strength per example for n."""
    return PAPER_C * PAPER_CALIBRATION_SIZE / max(num_examples, 1)


def fit_task(
    card: TaskCard, probs: np.ndarray, labels: np.ndarray, formulation: Formulation = "paper"
) -> TaskCalibration:
    """Fit on P(positive) (computed with ``formulation``) and 0/1 labels of one task."""
    positive, negative = binary_phrasings(card)
    calibrator = PlattCalibrator(feature="logit", C=paper_regularisation(int(labels.size)))
    calibrator.fit(probs, labels, tasks=[card.name])
    return TaskCalibration(
        calibrator,
        positive,
        negative,
        int(labels.size),
        int(labels.sum()),
        formulation=formulation,
        source="fitted",
    )


def fit_calibrators(
    model: ChatNTModel,
    data_dir: str | Path,
    cards: Mapping[str, TaskCard],
    *,
    tasks: Sequence[str] | None = None,
    max_per_task: int = PAPER_CALIBRATION_SIZE,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    split: str = "train",
    formulation: Formulation = "paper",
    shard: Shard | None = None,
) -> tuple[dict[str, TaskCalibration], dict[str, str]]:
    """One calibrator per binary task from ``split`` (the paper: ``train``), and the tasks
    skipped (why).

    A non-binary task is skipped only when asked for by name (otherwise it is simply
    not a calibration task); a sample holding a single class cannot be fitted. A split of
    sequences the model never trained on (the demo's ``validation``) shows the confidence
    it has on new sequences, which training sequences overstate.
    """
    data_dir = Path(data_dir)
    dataset = open_split(data_dir, split)
    rows, skipped = task_rows(dataset, cards, tasks, max_per_task, seed, f"{data_dir}/{split}")
    for name in list(rows):
        if cards[name].kind != "binary":
            if tasks:
                skipped[name] = f"a {cards[name].kind} task (calibration is for binary tasks)"
            del rows[name]
    fitted: dict[str, TaskCalibration] = {}
    with progress_bar(sum(len(r) for r in rows.values()), progress) as tracker:
        for name, indices in rows.items():
            card = cards[name]
            tracker.describe(f"calibrating {name}")
            records = read_records(dataset, indices)
            probs = positive_probabilities(
                model, card, records, batch_size, tracker.advance, formulation, shard
            )
            positive = next(label.name for label in card.labels or [] if label.positive)
            labels = np.array([float(r["label"] == positive) for r in records])
            usable = np.isfinite(probs)
            probs, labels = probs[usable], labels[usable]
            if len(np.unique(labels)) < 2:
                skipped[name] = "the training sample holds a single class; cannot fit"
                continue
            fitted[name] = fit_task(card, probs, labels, formulation)
    return fitted, skipped


def load_calibration(directory: str | Path) -> dict[str, TaskCalibration]:
    """The calibrators stored in ``directory/calibration.json``; {} when there is none."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        return {
            str(name): TaskCalibration.from_dict(entry) for name, entry in data["tasks"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ChatNTError(
            f"{path} is not a valid calibration file ({first}): delete it and run "
            "'chatnt calibrate' again"
        ) from None


def save_calibration(
    directory: str | Path, entries: Mapping[str, TaskCalibration], data_dir: str | Path
) -> Path:
    """Merge ``entries`` into ``directory/calibration.json`` (written atomically)."""
    directory = Path(directory)
    path = directory / CALIBRATION_FILE
    merged = {name: entry.to_dict() for name, entry in load_calibration(directory).items()}
    merged.update({name: entry.to_dict() for name, entry in entries.items()})
    payload = {
        "format": FORMAT,
        "note": "Platt calibrators per binary task (chatnt calibrate); not in manifest.json",
        "data": str(data_dir),
        "tasks": dict(sorted(merged.items())),
    }
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    return path
