"""Perplexity-based class probabilities, Platt scaling, ECE and reliability data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from chatnt_core import ChatNTModel, Example, SequenceInput, Turn
from chatnt_core.calibration import (
    PlattCalibrator,
    class_probabilities,
    expected_calibration_error,
    reliability_curve,
    yes_probability,
)
from chatnt_core.inference.scoring import CandidateScores, score_candidates_naive

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"
POSITIVE = ["yes", "It is a promoter"]
NEGATIVE = ["no", "Not a promoter at all"]


@pytest.fixture(scope="module")
def model() -> ChatNTModel:
    torch.manual_seed(0)
    return ChatNTModel.from_config("tiny-random").eval()


@pytest.fixture(scope="module")
def naive(model: ChatNTModel) -> CandidateScores:
    """The reference scores: one full forward per (question, answer)."""
    return score_candidates_naive(model, questions(), [POSITIVE + NEGATIVE] * 2)


def questions() -> list[Example]:
    return [
        Example([Turn("Is @a.fna a promoter?")], {"a.fna": SequenceInput("a.fna", DNA)}),
        Example(
            [Turn("Tell me, would you say that @b.fna is a promoter sequence?")],
            {"b.fna": SequenceInput("b.fna", DNA[::-1])},
        ),
    ]


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True P(y=1) = sigmoid(z); the model says sigmoid(3z + 1): overconfident and biased."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return 1 / (1 + np.exp(-(3 * z + 1))), labels


def test_yes_probability_matches_a_manual_computation_from_naive_scores(
    model: ChatNTModel, naive: CandidateScores
) -> None:
    p_yes = yes_probability(model, questions(), POSITIVE, NEGATIVE)
    both, _ = class_probabilities(model, questions(), POSITIVE, NEGATIVE)
    assert p_yes.shape == (2,)
    assert bool(((p_yes > 0) & (p_yes < 1)).all())
    assert torch.allclose(both.sum(dim=-1), torch.ones(2))
    assert torch.allclose(both[:, 0], p_yes)

    for b in range(2):
        perplexities = []
        for r in range(4):
            row = b * 4 + r
            token_lp = naive.token_log_probs[row, naive.token_mask[row]]
            perplexities.append(math.exp(-float(token_lp.mean())))
        pp_pos, pp_neg = np.mean(perplexities[:2]), np.mean(perplexities[2:])
        expected = math.exp(-pp_pos) / (math.exp(-pp_pos) + math.exp(-pp_neg))
        assert abs(float(p_yes[b]) - expected) < 1e-4


def test_other_formulations(model: ChatNTModel, naive: CandidateScores) -> None:
    ll = naive.grid(naive.log_likelihood).double()  # (2, 4)
    expected = ll[:, :2].exp().sum(-1) / ll.exp().sum(-1)
    got = yes_probability(model, questions(), POSITIVE, NEGATIVE, "candidate_softmax")
    assert torch.allclose(got.double(), expected, atol=1e-4)
    printed = yes_probability(model, questions(), POSITIVE, NEGATIVE, "as_printed")
    # Logits in (0, 1] cap the printed formula's probabilities within [0.27, 0.73].
    bound = 1 / (1 + math.e)
    assert bool(((printed >= bound) & (printed <= 1 - bound)).all())
    with pytest.raises(ValueError, match="at least one positive"):
        yes_probability(model, questions(), [], NEGATIVE)


def test_platt_scaling_reduces_ece() -> None:
    train_p, train_y = miscalibrated(4000, seed=0)
    test_p, test_y = miscalibrated(4000, seed=1)
    raw = expected_calibration_error(test_p, test_y)
    calibrator = PlattCalibrator().fit(train_p, train_y, tasks=["promoter", "promoter", "tata"])
    calibrated = expected_calibration_error(calibrator.predict_proba(test_p), test_y)
    assert raw > 0.08 and calibrated < 0.03 and calibrated < raw / 3
    # The logit feature recovers the miscalibration: coef ~ 1/3, intercept ~ -1/3.
    assert calibrator.coef is not None and calibrator.intercept is not None
    assert abs(calibrator.coef - 1 / 3) < 0.05 and abs(calibrator.intercept + 1 / 3) < 0.1
    assert calibrator.tasks == ["promoter", "tata"] and calibrator.n_train == 4000
    # The paper's wording (the probability itself as the feature) helps too, less.
    on_probs = PlattCalibrator(feature="probability").fit(train_p, train_y)
    assert expected_calibration_error(on_probs.predict_proba(test_p), test_y) < raw


def test_json_round_trip_predicts_identically(tmp_path: Path) -> None:
    train_p, train_y = miscalibrated(500, seed=2)
    calibrator = PlattCalibrator().fit(train_p, train_y, tasks=["enhancer"])
    path = tmp_path / "platt.json"
    calibrator.save(path)
    data = json.loads(path.read_text())
    assert data["feature"] == "logit" and data["n_train"] == 500 and data["tasks"] == ["enhancer"]
    loaded = PlattCalibrator.load(path)
    probe = np.array([0.0, 1e-9, 0.2, 0.5, 0.77, 1.0])
    assert np.array_equal(loaded.predict_proba(probe), calibrator.predict_proba(probe))
    assert loaded.to_dict() == calibrator.to_dict()
    with pytest.raises(ValidationError):
        PlattCalibrator.from_dict({**data, "feature": "rank"})
    with pytest.raises(RuntimeError, match="not fitted"):
        PlattCalibrator().predict_proba(probe)


def test_ece_by_hand() -> None:
    probs = [0.05, 0.15, 0.12, 0.95, 0.91, 0.55]
    labels = [0, 1, 0, 1, 0, 1]
    # bins (10): [0,.1): {.05 -> 0}; [.1,.2): {.15 -> 1, .12 -> 0}; [.5,.6): {.55 -> 1};
    # [.9,1]: {.95 -> 1, .91 -> 0}.
    expected = (
        1 / 6 * abs(0 - 0.05)
        + 2 / 6 * abs(0.5 - 0.135)
        + 1 / 6 * abs(1 - 0.55)
        + 2 / 6 * abs(0.5 - 0.93)
    )
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)
    curve = reliability_curve(torch.tensor(probs), torch.tensor(labels), n_bins=10)
    assert curve.counts.tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]
    assert curve.centers[0] == pytest.approx(0.05) and math.isnan(curve.accuracy[2])
    assert curve.confidence[1] == pytest.approx(0.135)
    assert curve.to_dict()["accuracy"][2] is None
    assert reliability_curve([1.0], [1], n_bins=4).counts.tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="labels must be 0"):
        expected_calibration_error([0.5], [2])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        expected_calibration_error([1.5], [1])


def test_the_paper_regularisation_is_per_example() -> None:
    from chatnt_core.evaluation.calibrate import paper_regularisation

    assert paper_regularisation(10_000) == pytest.approx(0.1)  # the paper's setting
    assert paper_regularisation(200) == pytest.approx(5.0)  # same weight per example
    # squeezed but well-ordered scores: the per-example strength lets the fit stretch them
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = 0.5 + 0.04 * (labels - 0.5) + rng.normal(0, 0.005, 200)
    weak = PlattCalibrator(C=paper_regularisation(200)).fit(probs, labels)
    strong = PlattCalibrator(C=0.1).fit(probs, labels)
    assert weak.coef is not None and strong.coef is not None and weak.coef > 3 * strong.coef
    calibrated = weak.predict_proba(probs)
    assert np.mean((calibrated > 0.5) == labels) > 0.95
    assert abs(calibrated[labels == 1].mean() - 1) < 0.2
