"""Evaluation figures as PNG files, drawn with matplotlib's Agg canvas (no display needed).

Figures are built with ``matplotlib.figure.Figure`` on an explicit ``FigureCanvasAgg``
rather than through ``pyplot``: nothing global changes, so importing this module in a
notebook does not switch its backend, and no figure is left open in a registry.

* confusion matrix per classification task, with a separate column for unparseable
  answers so the reader sees how many answers could not be read at all;
* true vs predicted scatter per regression task (parseable answers only, values the
  parser clipped to the card's range drawn as crosses);
* reliability diagram per binary task (paper Fig. 6b-d): fraction of positives against
  mean P(positive) in ten bins, ECE in the legend, and the histogram of predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chatnt_core.calibration import ReliabilityCurve

_DPI = 110


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI, format="png")
    return path


def confusion_png(
    path: Path, labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str
) -> Path:
    """Rows: true label; columns: predicted label, then "unparseable"."""
    counts = np.asarray(matrix, dtype=float)  # (K, K + 1)
    size = max(4.0, 0.9 * len(labels) + 2.5)
    figure = _figure(size + 1, size)
    axes = figure.subplots()
    axes.imshow(counts, cmap="Blues", aspect="auto")
    columns = [*labels, "unparseable"]
    axes.set_xticks(range(len(columns)), columns, rotation=35, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("answer")
    axes.set_ylabel("true label")
    high = counts.max() if counts.size else 0.0
    for (row, col), value in np.ndenumerate(counts):
        colour = "white" if high and value > 0.6 * high else "black"
        axes.text(col, row, f"{int(value)}", ha="center", va="center", color=colour)
    axes.set_title(title)
    return _save(figure, path)


def scatter_png(
    path: Path,
    true: Sequence[float],
    predicted: Sequence[float],
    clipped: Sequence[bool],
    title: str,
    bounds: tuple[float | None, float | None] = (None, None),
) -> Path:
    """Predicted against true values with the identity line."""
    x, y = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    flag = np.asarray(clipped, dtype=bool)
    figure = _figure(5, 5)
    axes = figure.subplots()
    axes.scatter(x[~flag], y[~flag], s=12, alpha=0.6, label="parsed")
    if flag.any():
        axes.scatter(x[flag], y[flag], s=24, marker="x", color="tab:red", label="clipped to range")
    values = np.concatenate([x, y]) if x.size else np.array([0.0, 1.0])
    low = bounds[0] if bounds[0] is not None else float(values.min())
    high = bounds[1] if bounds[1] is not None else float(values.max())
    axes.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
    axes.set_xlabel("true value")
    axes.set_ylabel("answer")
    axes.set_title(title)
    if x.size:
        axes.legend(loc="best", fontsize="small")
    return _save(figure, path)


def reliability_png(
    path: Path, curves: Mapping[str, tuple[ReliabilityCurve, float]], title: str
) -> Path:
    """One line per series (e.g. "uncalibrated", "calibrated"): name -> (curve, ECE)."""
    figure = _figure(5, 6.5)
    top, bottom = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1.3]}, sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--", label="perfect")
    width = 0.8 / max(1, len(curves))
    for k, (name, (curve, ece)) in enumerate(curves.items()):
        filled = curve.counts > 0
        top.plot(
            curve.confidence[filled],
            curve.accuracy[filled],
            marker="o",
            label=f"{name} (ECE {ece:.3f})",
        )
        step = curve.edges[1] - curve.edges[0]
        offset = (k - (len(curves) - 1) / 2) * width * step
        bottom.bar(curve.centers + offset, curve.counts, width=width * step, label=name)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("fraction of positives")
    top.set_title(title)
    top.legend(loc="upper left", fontsize="small")
    bottom.set_xlabel("predicted probability of the positive class")
    bottom.set_ylabel("examples")
    return _save(figure, path)
