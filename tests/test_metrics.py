"""Metrics against hand-computed values, and how unparseable answers enter each of them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chatnt_core.calibration import PlattCalibrator
from chatnt_core.data.tasks import TaskCard, load_task_cards
from chatnt_core.errors import ChatNTError
from chatnt_core.evaluation.calibrate import fit_task
from chatnt_core.evaluation.evaluate import score_task
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
from chatnt_core.evaluation.parsing import ParsedAnswer


@pytest.fixture(scope="module")
def cards() -> dict[str, TaskCard]:
    return load_task_cards()


def _labels(pairs: list[tuple[str, str, int]]) -> tuple[list[str], list[str]]:
    truth, guess = [], []
    for t, p, count in pairs:
        truth += [t] * count
        guess += [p] * count
    return truth, guess


def test_binary_mcc_and_f1_by_hand() -> None:
    # TP 6, FN 2, FP 1, TN 11
    truth, guess = _labels([("p", "p", 6), ("p", "n", 2), ("n", "p", 1), ("n", "n", 11)])
    expected = (6 * 11 - 1 * 2) / math.sqrt((6 + 1) * (6 + 2) * (11 + 1) * (11 + 2))
    assert mcc(truth, guess) == pytest.approx(expected)
    assert expected == pytest.approx(0.684737, abs=1e-6)
    assert binary_f1(truth, guess, "p") == pytest.approx(2 * 6 / (2 * 6 + 1 + 2))  # 0.8


def test_multiclass_mcc_and_macro_f1_by_hand() -> None:
    truth = ["a", "a", "a", "b", "b", "c"]
    guess = ["a", "a", "b", "b", "c", "c"]
    # R_K: (c n - sum t_k p_k) / sqrt((n^2 - sum p_k^2)(n^2 - sum t_k^2)); c=4, n=6,
    # t = (3, 2, 1), p = (2, 2, 2)
    assert mcc(truth, guess) == pytest.approx((4 * 6 - 12) / math.sqrt((36 - 12) * (36 - 14)))
    # per-class F1: a 2*2/(2*2+0+1), b 2/(2+1+1), c 2/(2+1+0)
    assert macro_f1(truth, guess, ["a", "b", "c"]) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # a card class that is neither true nor answered has no F1 to average
    assert macro_f1(truth, guess, ["a", "b", "c", "d"]) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # the third answer unparseable: a miss for "a", a false positive for no class
    guess[2] = UNPARSEABLE
    # p = (a 2, b 1, c 2, unparseable 1): sum t p = 6 + 2 + 2 = 10, sum p^2 = 10
    assert mcc(truth, guess) == pytest.approx((24 - 10) / math.sqrt((36 - 10) * (36 - 14)))
    # a: TP 2, FN 1 -> 0.8; b: TP 1, FN 1, FP 0 (was 1) -> 2/3; c: TP 1, FP 1 -> 2/3
    assert macro_f1(truth, guess, ["a", "b", "c"]) == pytest.approx((0.8 + 2 / 3 + 2 / 3) / 3)


def test_pearson_and_auroc_by_hand() -> None:
    # deviations x (-1.5, -.5, .5, 1.5), y (-1.75, .25, 1.25, .25): 3.5 / sqrt(5 * 4.75)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 4]) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    # positive scores 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    # 0.5 counts as positive: predictions 1 1 0 0 are all right
    assert threshold_mcc([1, 1, 0, 0], [0.9, 0.5, 0.2, 0.1]) == pytest.approx(1.0)
    assert threshold_mcc([1, 1, 0, 0], [0.9, 0.49, 0.6, 0.1]) == pytest.approx(0.0)


def test_undefined_metrics_are_none() -> None:
    assert pearson([1.0], [2.0]) is None
    assert pearson([1, 2, 3], [5, 5, 5]) is None
    assert auroc([1, 1], [0.2, 0.9]) is None
    assert auroc([], []) is None
    assert mcc([], []) is None
    assert macro_f1([], [], ["a"]) is None


def test_unparseable_policy(cards: dict[str, TaskCard]) -> None:
    junk = ParsedAnswer(None, None, False, False, "junk")
    yes = ParsedAnswer("ctcf_site", None, True)
    binary = cards["demo-ctcf-site"]
    # binary: the label that is not the true one
    assert scored_labels(binary, ["ctcf_site", "no_ctcf_site", "ctcf_site"], [junk, junk, yes]) == [
        "no_ctcf_site",
        "ctcf_site",
        "ctcf_site",
    ]
    multi = cards["demo-tf-site"]
    assert scored_labels(multi, ["CTCF", "TBP"], [junk, ParsedAnswer("TBP", None, True)]) == [
        UNPARSEABLE,
        "TBP",
    ]
    # all answers unparseable: binary is always wrong (MCC -1), multi-label carries no
    # information (MCC 0) and every class F1 is 0
    truth = ["ctcf_site", "no_ctcf_site"] * 3
    assert mcc(truth, scored_labels(binary, truth, [junk] * 6)) == pytest.approx(-1.0)
    truth = ["CTCF", "TBP", "REST"]
    predicted = scored_labels(multi, truth, [junk] * 3)
    assert mcc(truth, predicted) == pytest.approx(0.0)
    assert macro_f1(truth, predicted, ["CTCF", "TBP", "REST"]) == 0.0


def test_confusion_has_an_unparseable_column() -> None:
    junk = ParsedAnswer(None, None, False, False, "junk")
    parsed = [ParsedAnswer("a", None, True), junk, ParsedAnswer("a", None, True), junk]
    assert confusion(["a", "a", "b", "b"], parsed, ["a", "b"]) == [[1, 0, 1], [1, 0, 1]]


def test_score_task_regression_leaves_unparseable_out_of_pearson(
    cards: dict[str, TaskCard],
) -> None:
    card = cards["demo-gc-content"]
    records = [{"label": None, "value": v} for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    answers = [
        "The GC content of @seq.fna is 0.1.",
        "no idea",
        "@seq.fna has a GC fraction of 0.35.",
        "It is 1.7",  # clipped to 1, kept
        "0.5",
    ]
    evaluation = score_task(card, [0, 1, 2, 3, 4], records, answers)
    summary = evaluation.summary
    assert summary["n"] == 5 and summary["n_unparseable"] == 1
    assert summary["unparseable_pct"] == pytest.approx(20.0)
    assert summary["n_out_of_range"] == 1
    assert summary["metrics"]["n_pearson"] == 4
    expected = np.corrcoef([0.1, 0.3, 0.4, 0.5], [0.1, 0.35, 1.0, 0.5])[0, 1]
    assert summary["score"] == pytest.approx(expected)
    assert summary["unparseable_reasons"] == {"hedged answer (not sure)": 1}


def test_score_task_binary_with_probabilities_and_calibrator(cards: dict[str, TaskCard]) -> None:
    card = cards["demo-ctcf-site"]
    truth = ["ctcf_site", "ctcf_site", "no_ctcf_site", "no_ctcf_site"]
    answers = ["Yes.", "what?", "No, CTCF has no site in @s.fna.", "Yes"]
    probs = np.array([0.7, 0.6, 0.4, 0.65])
    calibration = fit_task(card, np.array([0.9, 0.8, 0.3, 0.2]), np.array([1.0, 1.0, 0.0, 0.0]))
    evaluation = score_task(
        card,
        [0, 1, 2, 3],
        [{"label": t, "value": None} for t in truth],
        answers,
        probs,
        calibration,
    )
    summary = evaluation.summary
    # answers scored as: ctcf, (unparseable -> no_ctcf), no_ctcf, ctcf: TP 1 FN 1 TN 1 FP 1
    assert summary["metrics"]["mcc"] == pytest.approx(0.0)
    assert summary["score"] == summary["metrics"]["mcc"]
    assert summary["n_unparseable"] == 1
    assert summary["confusion"]["matrix"] == [[1, 0, 1], [1, 1, 0]]
    classifier = summary["perplexity_classifier"]
    # positives 0.7, 0.6 vs negatives 0.4, 0.65: 3 of 4 pairs ordered
    assert classifier["uncalibrated"]["auroc"] == pytest.approx(0.75)
    assert classifier["uncalibrated"]["mcc"] == pytest.approx(threshold_mcc([1, 1, 0, 0], probs))
    assert isinstance(calibration.calibrator, PlattCalibrator)
    calibrated = calibration.calibrator.predict_proba(probs)
    assert classifier["calibrated"]["mcc"] == pytest.approx(threshold_mcc([1, 1, 0, 0], calibrated))
    assert classifier["calibrated"]["ece"] is not None
    assert evaluation.calibrated is not None
    np.testing.assert_allclose(evaluation.calibrated, calibrated)


def test_score_task_refuses_a_label_the_card_does_not_define(cards: dict[str, TaskCard]) -> None:
    with pytest.raises(ChatNTError, match="row 7 of task 'demo-ctcf-site' has label 'maybe'"):
        score_task(cards["demo-ctcf-site"], [7], [{"label": "maybe", "value": None}], ["Yes."])
