"""The paper's metrics, and the one place that decides how unparseable answers count.

An answer the parser cannot read is the model's failure, so it must cost something;
but it must not invent a class or a number either. The rules:

* **binary** (MCC, F1): an unparseable answer is scored as the label that is *not* the
  true one, i.e. always wrong: a positive example becomes a false negative, a negative
  one a false positive. This keeps the standard 2x2 MCC/F1 and is the worst case: a
  task whose answers are all unparseable scores MCC -1 (the report shows the
  unparseable percentage next to it).
* **multi-label** (MCC, macro F1): an unparseable answer is its own predicted class,
  ``UNPARSEABLE``, which no example has as truth. It is a miss for the true class (a
  false negative in its F1, off the diagonal for MCC) and a false positive for no class;
  macro F1 averages over the card's labels that occur (as truth or as a parsed answer).
* **regression** (Pearson): unparseable answers are left out of the correlation (there
  is no number to correlate) and reported as a count and a percentage next to it.
* **AUROC** uses the perplexity-based P(positive), which exists for every example, so
  parsing plays no part in it.

Every function returns ``None`` when the metric is undefined (no examples, a single
class for AUROC, a constant input for Pearson) rather than a misleading 0 or NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from chatnt_core.data.tasks import TaskCard
from chatnt_core.evaluation.parsing import ParsedAnswer

UNPARSEABLE = "(unparseable)"


def scored_labels(
    card: TaskCard, true_labels: Sequence[str], parsed: Sequence[ParsedAnswer]
) -> list[str]:
    """Predicted labels with unparseable answers replaced as the module docstring says."""
    names = [label.name for label in card.labels or []]
    predicted = []
    for truth, answer in zip(true_labels, parsed):
        if answer.parseable and answer.label is not None:
            predicted.append(answer.label)
        elif card.kind == "binary":
            predicted.append(next(name for name in names if name != truth))
        else:
            predicted.append(UNPARSEABLE)
    return predicted


def mcc(y_true: Sequence[str], y_pred: Sequence[str]) -> float | None:
    """Matthews correlation (multi-class R_K when there are more than two labels)."""
    from sklearn.metrics import matthews_corrcoef

    if not y_true:
        return None
    return float(matthews_corrcoef(list(y_true), list(y_pred)))


def binary_f1(y_true: Sequence[str], y_pred: Sequence[str], positive: str) -> float | None:
    """F1 of the positive class."""
    from sklearn.metrics import f1_score

    if not y_true:
        return None
    truth = [t == positive for t in y_true]
    guess = [p == positive for p in y_pred]
    return float(f1_score(truth, guess, zero_division=0.0))


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> float | None:
    """Unweighted mean of the per-class F1 over the classes of ``labels`` (the card's) that
    occur as a true or a predicted label: a class absent from both has no F1 to average
    (sklearn's default label set), and ``UNPARSEABLE`` is never one of them."""
    from sklearn.metrics import f1_score

    if not y_true:
        return None
    seen = set(y_true) | set(y_pred)
    present = [label for label in labels if label in seen]
    score = f1_score(list(y_true), list(y_pred), labels=present, average="macro", zero_division=0.0)
    return float(score)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than two pairs or a constant side."""
    from scipy.stats import pearsonr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(pearsonr(a, b)[0])


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve of 0/1 ``labels`` by ``scores``; None with one class only."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=int)
    if y.size == 0 or len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def threshold_mcc(
    labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray, threshold: float = 0.5
) -> float | None:
    """MCC of ``P(positive) >= threshold`` against 0/1 labels."""
    y = [str(int(v)) for v in np.asarray(labels)]
    guess = [str(int(p >= threshold)) for p in np.asarray(probs, dtype=np.float64)]
    return mcc(y, guess)


def confusion(
    y_true: Sequence[str], parsed: Sequence[ParsedAnswer], labels: Sequence[str]
) -> list[list[int]]:
    """Counts, rows = true label, columns = ``labels`` then one column for unparseable."""
    column = {name: i for i, name in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for truth, answer in zip(y_true, parsed):
        index = column.get(answer.label or "", len(labels)) if answer.parseable else len(labels)
        matrix[column[truth]][index] += 1
    return matrix
