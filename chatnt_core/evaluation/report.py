"""Report files of an evaluation: metrics.json, metrics.md, predictions.jsonl, plots/.

``metrics.json`` is for programs (every figure, settings, the unparseable policy),
``metrics.md`` for people (one row per task next to the paper's figures from the card),
``predictions.jsonl`` keeps every answer and how it was read, so any number in the
report can be recomputed, and a parser change re-scored, without running the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from chatnt_core.calibration import expected_calibration_error, reliability_curve
from chatnt_core.evaluation.calibrate import save_calibration
from chatnt_core.evaluation.evaluate import EvaluationReport, TaskEvaluation

FORMAT = "chatnt-evaluation/1"
UNPARSEABLE_POLICY = {
    "binary": "an unparseable answer is scored as the label that is not the true one "
    "(always wrong: a false negative for a positive example, a false positive for a "
    "negative one) in MCC and F1, so a task whose answers are all unparseable scores MCC -1",
    "multi_label": "an unparseable answer is its own predicted class that is never true: "
    "a miss for the true class in MCC and macro F1, a false positive for no class",
    "regression": "unparseable answers are left out of Pearson's r and reported "
    "(n_unparseable, unparseable_pct); values outside the card's range are clipped to it "
    "and counted in n_out_of_range",
    "auroc": "computed from the perplexity-based P(positive), which every example has",
}


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN becomes null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plots(name: str, evaluation: TaskEvaluation, plot_dir: Path) -> list[Path]:
    from chatnt_core.evaluation import plots

    card, summary = evaluation.card, evaluation.summary
    made: list[Path] = []
    if card.kind == "regression":
        pairs = [
            (t, p.value, p.out_of_range)
            for t, p in zip(evaluation.true_values, evaluation.parsed)
            if p.parseable and p.value is not None
        ]
        bounds = (card.value.min, card.value.max) if card.value else (None, None)
        r = _number(summary["metrics"]["pearson"])
        title = f"{name}: Pearson {r} on {len(pairs)} of {summary['n']} answers"
        made.append(
            plots.scatter_png(
                plot_dir / f"{name}-scatter.png",
                [t for t, _, _ in pairs],
                [v for _, v, _ in pairs],
                [c for _, _, c in pairs],
                title,
                bounds,
            )
        )
        return made
    matrix = summary["confusion"]
    title = f"{name}: {card.metric.upper()} {_number(summary['score'])}"
    made.append(
        plots.confusion_png(
            plot_dir / f"{name}-confusion.png", matrix["rows"], matrix["matrix"], title
        )
    )
    probs = evaluation.probabilities
    if probs is not None and np.isfinite(probs).any():
        ok = np.isfinite(probs)
        labels = evaluation.binary_targets[ok]
        series = {"uncalibrated": probs[ok]}
        calibrated = evaluation.calibrated
        if calibrated is not None:
            series["calibrated"] = calibrated[ok]
        curves = {
            key: (reliability_curve(p, labels), expected_calibration_error(p, labels))
            for key, p in series.items()
        }
        made.append(
            plots.reliability_png(
                plot_dir / f"{name}-reliability.png", curves, f"{name}: perplexity-based P(yes)"
            )
        )
    return made


def _markdown(report: EvaluationReport) -> str:
    settings = report.settings
    lines = [
        "# chatnt evaluation",
        "",
        f"Model `{settings['model'] or 'in-memory model'}` on `{settings['data']}/test`: up to "
        f"{settings['max_per_task']} examples per task (seed {settings['seed']}), at most "
        f"{settings['max_new_tokens']} new tokens per answer.",
        "",
        "| task | metric | ours | paper ChatNT | paper baseline | n | unparseable % |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for name, evaluation in report.tasks.items():
        s = evaluation.summary
        paper = s["paper"] or {}
        baseline = _number(paper.get("baseline"), 2)
        if paper.get("baseline_model") and baseline != "n/a":
            baseline += f" ({paper['baseline_model']})"
        lines.append(
            f"| {name} | {s['metric']} | {_number(s['score'])} | "
            f"{_number(paper.get('chatnt'), 2)} | {baseline} | {s['n']} | "
            f"{s['unparseable_pct']:.1f} |"
        )
    binary = {n: e for n, e in report.tasks.items() if "perplexity_classifier" in e.summary}
    if binary:
        lines += [
            "",
            "## Perplexity-based classifier (binary tasks, paper Methods §3)",
            "",
            "MCC (answers) scores the parsed answers; the other columns score P(positive) "
            "from the answer phrasings' perplexities, thresholded at 0.5 for MCC.",
            "",
            "| task | MCC (answers) | AUROC | MCC@0.5 | ECE | AUROC cal. | MCC@0.5 cal. "
            "| ECE cal. | calibrator |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, evaluation in binary.items():
            s = evaluation.summary
            pc = s["perplexity_classifier"]
            raw, cal = pc["uncalibrated"], pc.get("calibrated") or {}
            lines.append(
                f"| {name} | {_number(s['metrics']['mcc'])} | {_number(raw['auroc'])} | "
                f"{_number(raw['mcc'])} | {_number(raw['ece'])} | {_number(cal.get('auroc'))} | "
                f"{_number(cal.get('mcc'))} | {_number(cal.get('ece'))} | "
                f"{pc.get('calibrator') or 'none'} |"
            )
    lines += ["", "## How unparseable answers count", ""]
    lines += [f"- **{kind}**: {text}." for kind, text in UNPARSEABLE_POLICY.items()]
    notes = [(n, note) for n, e in report.tasks.items() for note in e.summary["notes"]]
    notes += [(n, f"skipped: {why}") for n, why in report.skipped.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {name}: {note}" for name, note in notes]
    return "\n".join(lines) + "\n"


def _prediction_rows(name: str, evaluation: TaskEvaluation) -> list[dict[str, Any]]:
    probs = evaluation.probabilities
    calibrated = evaluation.calibrated
    out = []
    for i, (row, answer, parsed) in enumerate(
        zip(evaluation.rows, evaluation.answers, evaluation.parsed)
    ):
        item: dict[str, Any] = {"task": name, "row": row, "answer": answer}
        if evaluation.true_labels:
            item["target"] = evaluation.true_labels[i]
            item["parsed"] = parsed.label
        else:
            item["target"] = evaluation.true_values[i]
            item["parsed"] = parsed.value
        item.update(
            parseable=parsed.parseable, out_of_range=parsed.out_of_range, reason=parsed.reason
        )
        if probs is not None:
            item["p_positive"] = float(probs[i])
        if calibrated is not None:
            item["p_positive_calibrated"] = float(calibrated[i])
        out.append(_clean(item))
    return out


def write_report(report: EvaluationReport, out_dir: Path) -> dict[str, str]:
    """Write the report files; returns (and stores in ``report.files``) what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_dir = out_dir / "plots"
    files: dict[str, str] = {}
    for name, evaluation in report.tasks.items():
        made = _plots(name, evaluation, plot_dir)
        evaluation.summary["plots"] = [p.relative_to(out_dir).as_posix() for p in made]
    payload = {
        "format": FORMAT,
        "settings": report.settings,
        "unparseable_policy": UNPARSEABLE_POLICY,
        "tasks": {name: e.summary for name, e in report.tasks.items()},
        "skipped": report.skipped,
    }
    metrics_json = out_dir / "metrics.json"
    metrics_json.write_text(json.dumps(_clean(payload), indent=2) + "\n", encoding="utf-8")
    metrics_md = out_dir / "metrics.md"
    metrics_md.write_text(_markdown(report), encoding="utf-8")
    predictions = out_dir / "predictions.jsonl"
    with open(predictions, "w", encoding="utf-8") as handle:
        for name, evaluation in report.tasks.items():
            for item in _prediction_rows(name, evaluation):
                handle.write(json.dumps(item) + "\n")
    files.update(
        metrics_json=str(metrics_json), metrics_md=str(metrics_md), predictions=str(predictions)
    )
    if report.fitted_calibrations:
        saved = save_calibration(out_dir, report.fitted_calibrations, report.settings["data"])
        files["calibration"] = str(saved)
    report.files = files
    return files
