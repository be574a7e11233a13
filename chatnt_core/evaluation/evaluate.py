"""The evaluation run: answer every sampled test question, parse, score, report.

Paper, Methods §1.4: up to 5,000 sampled test examples per task, batches of 32, at most
40 new tokens, each task scored with the metric of its benchmark study (the card's
``metric``). Per task this module

1. samples the rows (``data.task_rows``: seeded, so runs are comparable);
2. for binary tasks, computes the perplexity-based P(positive) (``calibration``), which
   gives AUROC and, with a Platt calibrator, the before/after calibration figures; the
   scoring also yields the greedy answer of every record that answers with one of the
   scored phrasings (``scoring.CandidateScores.greedy_answers``);
3. generates the other greedy answers in length-sorted batches (``generation``);
4. parses them with the card (``parsing.parse_answer``); unparseable answers count as
   ``metrics`` says (wrong for classification, left out of Pearson but reported).

``evaluate_model`` is the core (a model in, a report out); ``chatnt evaluate`` loads a
checkpoint and calls it. ``score_task`` is pure (answers in, numbers out) so the scoring
rules can be tested without a model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatnt_core.calibration import expected_calibration_error
from chatnt_core.data.tasks import TaskCard, load_task_cards
from chatnt_core.errors import ChatNTError
from chatnt_core.evaluation.calibrate import TaskCalibration, fit_calibrators
from chatnt_core.evaluation.data import (
    generate_answers,
    open_split,
    positive_probabilities,
    progress_bar,
    read_records,
    task_rows,
)
from chatnt_core.evaluation.metrics import (
    UNPARSEABLE,
    auroc,
    binary_f1,
    confusion,
    macro_f1,
    mcc,
    pearson,
    scored_labels,
    threshold_mcc,
)
from chatnt_core.evaluation.parsing import ParsedAnswer, parse_answer

if TYPE_CHECKING:
    from chatnt_core.evaluation.shard import Shard
    from chatnt_core.model import ChatNTModel

PAPER_MAX_PER_TASK = 5_000
CALIBRATED_ON_THE_FLY = "train split (fitted by evaluate --calibrate-on train)"


@dataclass
class TaskEvaluation:
    """One task's examples, answers and scores; ``summary`` is what metrics.json holds."""

    card: TaskCard
    rows: list[int]  # row numbers in the test split
    answers: list[str]
    parsed: list[ParsedAnswer]
    true_labels: list[str]  # classification tasks
    true_values: list[float]  # regression tasks
    probabilities: np.ndarray | None = None  # binary tasks: uncalibrated P(positive), (n,)
    calibration: TaskCalibration | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def positive(self) -> str | None:
        return next((label.name for label in self.card.labels or [] if label.positive), None)

    @property
    def binary_targets(self) -> np.ndarray:
        return np.array([int(t == self.positive) for t in self.true_labels])

    @property
    def calibrated(self) -> np.ndarray | None:
        """Calibrated P(positive) (NaN where the uncalibrated one is NaN)."""
        if self.probabilities is None or self.calibration is None:
            return None
        out = np.full(self.probabilities.shape, np.nan)
        ok = np.isfinite(self.probabilities)
        out[ok] = self.calibration.calibrator.predict_proba(self.probabilities[ok])
        return out


@dataclass
class EvaluationReport:
    tasks: dict[str, TaskEvaluation]
    skipped: dict[str, str]
    settings: dict[str, Any]
    fitted_calibrations: dict[str, TaskCalibration] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # what write_report wrote


# ---- scoring ---------------------------------------------------------------------------------


def _probability_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    return {
        "auroc": auroc(labels, probs),
        "mcc": threshold_mcc(labels, probs, 0.5),
        "ece": expected_calibration_error(probs, labels) if labels.size else None,
    }


def _classification_summary(evaluation: TaskEvaluation, summary: dict[str, Any]) -> None:
    card = evaluation.card
    names = [label.name for label in card.labels or []]
    truth = evaluation.true_labels
    predicted = scored_labels(card, truth, evaluation.parsed)
    metrics: dict[str, Any] = {"mcc": mcc(truth, predicted)}
    if card.kind == "binary":
        metrics["f1"] = binary_f1(truth, predicted, evaluation.positive or "")
    else:
        metrics["f1"] = macro_f1(truth, predicted, names)
    summary["confusion"] = {
        "rows": names,
        "columns": [*names, UNPARSEABLE],
        "matrix": confusion(truth, evaluation.parsed, names),
    }
    probs = evaluation.probabilities
    if card.kind == "binary" and probs is not None:
        ok = np.isfinite(probs)
        labels = evaluation.binary_targets[ok]
        raw = _probability_metrics(labels, probs[ok])
        metrics["auroc"] = raw["auroc"]
        classifier: dict[str, Any] = {"n": int(ok.sum()), "uncalibrated": raw}
        calibrated = evaluation.calibrated
        if calibrated is not None and evaluation.calibration is not None:
            classifier["calibrated"] = _probability_metrics(labels, calibrated[ok])
            classifier["calibrator"] = evaluation.calibration.source
        summary["perplexity_classifier"] = classifier
    summary["metrics"] = metrics
    if card.metric == "auroc" and metrics.get("auroc") is None:
        summary["notes"].append("AUROC undefined: no probabilities or a single true class")


def _regression_summary(evaluation: TaskEvaluation, summary: dict[str, Any]) -> None:
    pairs = [
        (truth, answer.value)
        for truth, answer in zip(evaluation.true_values, evaluation.parsed)
        if answer.parseable and answer.value is not None
    ]
    r = pearson([t for t, _ in pairs], [v for _, v in pairs])
    summary["metrics"] = {"pearson": r, "n_pearson": len(pairs)}
    if r is None:
        summary["notes"].append(
            f"Pearson undefined on {len(pairs)} parsed answers (needs two and no constant side)"
        )


def score_task(
    card: TaskCard,
    rows: Sequence[int],
    records: Sequence[Mapping[str, Any]],
    answers: Sequence[str],
    probabilities: np.ndarray | None = None,
    calibration: TaskCalibration | None = None,
    calibration_note: str | None = None,
) -> TaskEvaluation:
    """Parse ``answers`` to ``records``' questions and compute the task's metrics."""
    regression = card.kind == "regression"
    if not regression:
        names = {label.name for label in card.labels or []}
        for row, record in zip(rows, records):
            if record["label"] not in names:
                raise ChatNTError(
                    f"test row {row} of task '{card.name}' has label {record['label']!r}, which "
                    f"the card does not define: rebuild the dataset with the current card"
                )
    parsed = [parse_answer(card, text) for text in answers]
    evaluation = TaskEvaluation(
        card=card,
        rows=list(rows),
        answers=list(answers),
        parsed=parsed,
        true_labels=[] if regression else [str(r["label"]) for r in records],
        true_values=[float(r["value"]) for r in records] if regression else [],
        probabilities=probabilities,
        calibration=calibration,
    )
    n = len(parsed)
    unparseable = [p.reason for p in parsed if not p.parseable]
    summary: dict[str, Any] = {
        "kind": card.kind,
        "metric": card.metric,
        "n": n,
        "n_unparseable": len(unparseable),
        "unparseable_pct": 100.0 * len(unparseable) / n if n else 0.0,
        "n_out_of_range": sum(p.out_of_range for p in parsed),
        "unparseable_reasons": dict(Counter(unparseable).most_common()),
        "paper": card.paper.model_dump(mode="json") if card.paper else None,
        "notes": [calibration_note] if calibration_note else [],
    }
    if regression:
        _regression_summary(evaluation, summary)
    else:
        _classification_summary(evaluation, summary)
    summary["score"] = summary["metrics"].get(card.metric)
    if card.paper is not None and card.paper.metric != card.metric:
        summary["notes"].append(
            f"the paper reports {card.paper.metric}, the card scores {card.metric}"
        )
    evaluation.summary = summary
    return evaluation


# ---- the run ---------------------------------------------------------------------------------


def _check_settings(max_per_task: int, batch_size: int, max_new_tokens: int) -> None:
    for name, value in (
        ("--max-per-task", max_per_task),
        ("--batch-size", batch_size),
        ("--max-new-tokens", max_new_tokens),
    ):
        if value < 1:
            raise ChatNTError(f"{name} must be at least 1, not {value}")


def evaluate_model(
    model: ChatNTModel,
    data_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    tasks: Sequence[str] | None = None,
    max_per_task: int = PAPER_MAX_PER_TASK,
    batch_size: int = 32,
    max_new_tokens: int = 40,
    seed: int = 0,
    calibrations: Mapping[str, TaskCalibration] | None = None,
    calibrate_on: str | None = None,
    calibration_size: int | None = None,
    cards: Mapping[str, TaskCard] | None = None,
    progress: bool = False,
    model_name: str | None = None,
    shard: Shard | None = None,
) -> EvaluationReport:
    """Evaluate ``model`` on ``data_dir/test``; write the report to ``out_dir`` if given.

    ``calibrations`` maps binary tasks to stored calibrators (``load_calibration``);
    ``calibrate_on="train"`` fits the missing ones from ``data_dir/train`` first, on
    ``calibration_size`` examples per task (default ``max_per_task``). With a ``shard``
    (one per process of a launch) each process answers its share of the batches and
    every process gets the whole report (``evaluation/shard.py``); give ``out_dir`` on
    one process only.
    """
    _check_settings(max_per_task, batch_size, max_new_tokens)
    if calibrate_on not in (None, "train"):
        raise ChatNTError(f"--calibrate-on takes 'train', not '{calibrate_on}'")
    cards = dict(cards) if cards is not None else load_task_cards()
    data_dir = Path(data_dir)
    dataset = open_split(data_dir, "test")
    rows, skipped = task_rows(dataset, cards, tasks, max_per_task, seed, f"{data_dir}/test")
    if not rows:
        raise ChatNTError(f"{data_dir}/test holds no task with a task card: nothing to evaluate")
    calibrations = dict(calibrations or {})
    fitted: dict[str, TaskCalibration] = {}
    failed: dict[str, str] = {}
    was_training = model.training
    model.eval()
    try:
        missing = [t for t in rows if cards[t].kind == "binary" and t not in calibrations]
        if calibrate_on == "train" and missing:
            size = calibration_size or max_per_task
            fitted, failed = fit_calibrators(
                model,
                data_dir,
                cards,
                tasks=missing,
                max_per_task=size,
                batch_size=batch_size,
                seed=seed,
                progress=progress,
                shard=shard,
            )
            for entry in fitted.values():
                entry.source = CALIBRATED_ON_THE_FLY
            calibrations.update(fitted)
        run = (batch_size, max_new_tokens, progress, shard)
        results = _run(model, dataset, rows, cards, calibrations, failed, *run)
    finally:
        model.train(was_training)
    settings = {
        "model": model_name,
        "data": str(data_dir),
        "split": "test",
        "max_per_task": max_per_task,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "calibrate_on": calibrate_on,
    }
    report = EvaluationReport(results, skipped, settings, fitted)
    if out_dir is not None:
        from chatnt_core.evaluation.report import write_report

        write_report(report, Path(out_dir))
    return report


def _run(
    model: ChatNTModel,
    dataset: Any,
    rows: Mapping[str, list[int]],
    cards: Mapping[str, TaskCard],
    calibrations: Mapping[str, TaskCalibration],
    failed: Mapping[str, str],
    batch_size: int,
    max_new_tokens: int,
    progress: bool,
    shard: Shard | None,
) -> dict[str, TaskEvaluation]:
    work = sum(len(r) * (2 if cards[t].kind == "binary" else 1) for t, r in rows.items())
    results: dict[str, TaskEvaluation] = {}
    with progress_bar(work, progress) as tracker:
        for name, indices in rows.items():
            card = cards[name]
            records = read_records(dataset, indices)
            probs, calibration, note = None, None, None
            decoded: dict[int, str] = {}
            if card.kind == "binary":
                tracker.describe(f"{name}: scoring answer phrasings")
                calibration = calibrations.get(name)
                note = calibration.mismatch(card) if calibration is not None else None
                if note is not None:
                    calibration = None
                elif name in failed:
                    note = f"no calibrator: {failed[name]}"
                # the raw P(positive) is computed the way the calibrator was fitted on
                formulation = calibration.formulation if calibration is not None else "paper"
                # scoring first: the greedy answers that are one of the phrasings come out
                # of it decoded, and only the other records are generated
                probs = positive_probabilities(
                    model,
                    card,
                    records,
                    batch_size,
                    tracker.advance,
                    formulation,
                    shard,
                    greedy_answers=decoded,
                    max_new_tokens=max_new_tokens,
                )
            tracker.describe(f"{name}: answering")
            answers = generate_answers(
                model, records, batch_size, max_new_tokens, tracker.advance, shard, decoded
            )
            results[name] = score_task(card, indices, records, answers, probs, calibration, note)
    return results
