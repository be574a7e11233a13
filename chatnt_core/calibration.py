"""Probabilities for binary questions from answer perplexities, and their calibration.

ChatNT answers in words, so it has no class probability to calibrate. The paper
(Methods §3) scores N held-out positive and N negative answer phrasings per question and
turns the two class perplexities into a probability; a Platt model fitted on training
questions then corrects its scale.

Formulation (``formulation="paper"``, the default). The printed formula,
``pp = 1/N sum_i exp(sum_j p_ij log p_ij)``, cannot be what was run: ``p log p`` is ~0
both for tokens the model is sure of and for tokens it rules out, so a confident "no"
would score like a confident "yes", and values in (0, 1] used as logits cap every
probability within [0.27, 0.73], against the paper's Fig. 6 (predictions of 0.9).
We read it as the standard perplexity the text names: per phrasing
``pp_i = exp(-mean_j log p_ij)`` over its tokens (the answer text and EOS, see
``chatnt_core.inference.scoring``), per class the mean over its N phrasings, and since a lower
perplexity means a better fit the class logits are ``-pp_pos`` and ``-pp_neg``;
``P(positive) = softmax(-pp)[pos] = sigmoid(pp_neg - pp_pos)``.

``"as_printed"`` reproduces the printed formula for comparison; ``"candidate_softmax"``
is the usual alternative: a softmax over the 2N phrasings' summed log-likelihoods,
``P(positive)`` being the mass on the positive ones.

Platt feature (``feature="logit"``, default): ``logit(P(positive))``, which for the
paper formulation is the raw score difference ``pp_neg - pp_pos``. Logistic regression
on it is classic Platt scaling: ``coef=1, intercept=0`` is the uncalibrated model, so
the fit can only reshape, not lose, the ranking. ``feature="probability"`` fits on the
probability itself, as the paper's wording reads ("maps the perplexity-based
probabilities"). Both use scikit-learn ``LogisticRegression(C=0.1, solver="lbfgs")``.

Reliability data follow the paper's Fig. 6b: bins of the predicted probability of the
positive class against the fraction of positive labels in each bin.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from chatnt_core.batching import Example
from chatnt_core.inference.scoring import CandidateScores, score_candidates

if TYPE_CHECKING:
    from chatnt_core.inference.encoding_cache import EncodingCache
    from chatnt_core.inference.generation import PromptState
    from chatnt_core.model import ChatNTModel

Formulation = Literal["paper", "as_printed", "candidate_softmax"]
FORMULATIONS: tuple[Formulation, ...] = ("paper", "as_printed", "candidate_softmax")
PlattFeature = Literal["logit", "probability"]
ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


# ---- the perplexity-based classifier --------------------------------------------------


def class_logits(
    scores: CandidateScores, num_positive: int, formulation: Formulation = "paper"
) -> torch.Tensor:
    """(B, 2) logits [positive, negative] from scores whose first candidates are positive.

    Every prompt must have the same candidates: ``num_positive`` positive phrasings
    followed by the negative ones.
    """
    total = scores.counts[0] if scores.counts else 0
    if not 0 < num_positive < total:
        raise ValueError("need at least one positive and one negative answer")
    if formulation == "paper":
        per_candidate = scores.grid(scores.perplexity)  # (B, 2N)
        sign = -1.0  # lower perplexity = better fit = larger logit
    elif formulation == "as_printed":
        p = scores.token_log_probs.exp()  # (R, L)
        plogp = (p * scores.token_log_probs).masked_fill(~scores.token_mask, 0.0)
        per_candidate = scores.grid(plogp.sum(dim=-1).exp())  # (B, 2N)
        sign = 1.0  # the printed values are used as logits directly
    elif formulation == "candidate_softmax":
        ll = scores.grid(scores.log_likelihood)  # (B, 2N)
        pos = torch.logsumexp(ll[:, :num_positive], dim=-1)  # (B,)
        neg = torch.logsumexp(ll[:, num_positive:], dim=-1)  # (B,)
        return torch.stack([pos, neg], dim=-1)  # (B, 2)
    else:
        raise ValueError(f"unknown formulation '{formulation}'")
    pos = per_candidate[:, :num_positive].mean(dim=-1)  # (B,)
    neg = per_candidate[:, num_positive:].mean(dim=-1)  # (B,)
    return sign * torch.stack([pos, neg], dim=-1)  # (B, 2)


def class_probabilities(
    model: ChatNTModel,
    examples: Sequence[Example],
    positive_answers: Sequence[str],
    negative_answers: Sequence[str],
    formulation: Formulation = "paper",
    *,
    cache: EncodingCache | None = None,
    max_rows: int | None = None,
    prompt_state: PromptState | None = None,
) -> tuple[torch.Tensor, CandidateScores]:
    """(B, 2) probabilities [positive, negative] for each unanswered binary question, and
    the candidate scores they come from (which also tell which phrasing, if any, greedy
    decoding would answer)."""
    if not positive_answers or not negative_answers:
        raise ValueError("need at least one positive and one negative answer phrasing")
    answers = [*positive_answers, *negative_answers]
    scores = score_candidates(
        model,
        examples,
        [answers] * len(examples),
        cache=cache,
        max_rows=max_rows,
        prompt_state=prompt_state,
    )
    logits = class_logits(scores, len(positive_answers), formulation)  # (B, 2)
    return torch.softmax(logits, dim=-1), scores


def yes_probability(
    model: ChatNTModel,
    examples: Sequence[Example],
    positive_answers: Sequence[str],
    negative_answers: Sequence[str],
    formulation: Formulation = "paper",
    *,
    cache: EncodingCache | None = None,
    max_rows: int | None = None,
    prompt_state: PromptState | None = None,
) -> torch.Tensor:
    """(B,) probability of the positive class (see the module docstring for the formula)."""
    probs, _ = class_probabilities(
        model,
        examples,
        positive_answers,
        negative_answers,
        formulation,
        cache=cache,
        max_rows=max_rows,
        prompt_state=prompt_state,
    )
    return probs[:, 0]


# ---- input checks -----------------------------------------------------------------------


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _probs_and_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, y = _vector(probs, "probs"), _vector(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"{p.shape[0]} probabilities but {y.shape[0]} labels")
    if p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise ValueError("probabilities must lie in [0, 1]")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    return p, y


# ---- Platt scaling ----------------------------------------------------------------------


class _PlattState(BaseModel):
    """The JSON form of a fitted calibrator."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["chatnt-platt-calibrator"] = "chatnt-platt-calibrator"
    version: Literal[1] = 1
    feature: PlattFeature
    eps: float = Field(gt=0, lt=0.5)
    C: float = Field(gt=0)
    coef: float
    intercept: float
    n_train: int = Field(ge=2)
    tasks: list[str] = Field(default_factory=list)


class PlattCalibrator:
    """``P(positive) -> sigmoid(coef * feature(P) + intercept)``, fitted by logistic regression.

    Predictions are computed from the stored floats, never from the scikit-learn object,
    so a calibrator loaded from JSON predicts bit-for-bit what the fitted one did.
    """

    def __init__(self, feature: PlattFeature = "logit", C: float = 0.1, eps: float = 1e-6) -> None:
        if feature not in ("logit", "probability"):
            raise ValueError(f"unknown Platt feature '{feature}': use 'logit' or 'probability'")
        self.feature: PlattFeature = feature
        self.C = C
        self.eps = eps  # probabilities are clipped to [eps, 1 - eps] before the logit
        self.coef: float | None = None
        self.intercept: float | None = None
        self.n_train = 0
        self.tasks: list[str] = []

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    def transform(self, probs: ArrayLike) -> np.ndarray:
        """(n,) probabilities -> (n,) the regression's input feature."""
        p = _vector(probs, "probs")
        if self.feature == "probability":
            return p
        p = np.clip(p, self.eps, 1 - self.eps)
        return np.log(p) - np.log1p(-p)

    def fit(
        self, probs: ArrayLike, labels: ArrayLike, tasks: Sequence[str] = ()
    ) -> PlattCalibrator:
        """Fit on uncalibrated P(positive) and 0/1 labels (the paper: training questions)."""
        from sklearn.linear_model import LogisticRegression

        p, y = _probs_and_labels(probs, labels)
        if len(np.unique(y)) < 2:
            raise ValueError("Platt scaling needs both positive and negative labels")
        regression = LogisticRegression(C=self.C, solver="lbfgs")
        regression.fit(self.transform(p)[:, None], y.astype(int))
        self.coef = float(regression.coef_[0, 0])
        self.intercept = float(regression.intercept_[0])
        self.n_train = int(p.shape[0])
        self.tasks = sorted(set(tasks))
        return self

    def predict_proba(self, probs: ArrayLike) -> np.ndarray:
        """(n,) calibrated P(positive) (not scikit-learn's (n, 2) layout)."""
        if self.coef is None or self.intercept is None:
            raise RuntimeError("the calibrator is not fitted: call fit() or load() first")
        z = self.coef * self.transform(probs) + self.intercept
        out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow
        return out

    def to_dict(self) -> dict[str, Any]:
        if self.coef is None or self.intercept is None:
            raise RuntimeError("only a fitted calibrator can be saved")
        state = _PlattState(
            feature=self.feature,
            eps=self.eps,
            C=self.C,
            coef=self.coef,
            intercept=self.intercept,
            n_train=self.n_train,
            tasks=self.tasks,
        )
        return state.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlattCalibrator:
        state = _PlattState.model_validate(data)
        calibrator = cls(state.feature, state.C, state.eps)
        calibrator.coef, calibrator.intercept = state.coef, state.intercept
        calibrator.n_train, calibrator.tasks = state.n_train, list(state.tasks)
        return calibrator

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PlattCalibrator:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---- calibration metrics ----------------------------------------------------------------


@dataclass
class ReliabilityCurve:
    """Per-bin data of a reliability diagram over P(positive); NaN marks empty bins."""

    edges: np.ndarray  # (n_bins + 1,)
    centers: np.ndarray  # (n_bins,)
    accuracy: np.ndarray  # (n_bins,) fraction of positive labels in the bin
    confidence: np.ndarray  # (n_bins,) mean predicted P(positive) in the bin
    counts: np.ndarray  # (n_bins,) int

    def to_dict(self) -> dict[str, list[Any]]:
        """JSON-safe lists, ``None`` for empty bins."""

        def clean(values: np.ndarray) -> list[float | None]:
            return [None if math.isnan(v) else float(v) for v in values]

        return {
            "edges": [float(v) for v in self.edges],
            "centers": [float(v) for v in self.centers],
            "accuracy": clean(self.accuracy),
            "confidence": clean(self.confidence),
            "counts": [int(v) for v in self.counts],
        }


def reliability_curve(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> ReliabilityCurve:
    """Equal-width bins [k/n, (k+1)/n), the last one closed at 1."""
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    p, y = _probs_and_labels(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.minimum((p * n_bins).astype(int), n_bins - 1)  # (n,)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=y, minlength=n_bins) / counts
        confidence = np.bincount(index, weights=p, minlength=n_bins) / counts
    return ReliabilityCurve(edges, (edges[:-1] + edges[1:]) / 2, accuracy, confidence, counts)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 10) -> float:
    """Sum over bins of (share of examples) x |fraction positive - mean P(positive)|."""
    curve = reliability_curve(probs, labels, n_bins)
    total = int(curve.counts.sum())
    if total == 0:
        raise ValueError("expected_calibration_error needs at least one example")
    filled = curve.counts > 0
    gaps = np.abs(curve.accuracy[filled] - curve.confidence[filled])
    return float((curve.counts[filled] / total * gaps).sum())
