"""Benchmark: the demo test set answered in float32 and with the decoder in bfloat16.

Not a test: it prints one table. Both runs are ``chatnt evaluate`` done in-process
(``evaluation.evaluate.evaluate_model``: batched answers and P(yes), the checkpoint's
calibrators) on the same examples; the table compares them example by example: how many
answers are the same text, the largest P(yes) difference, each task's metric, and the
wall time of each run. Whether bfloat16 pays depends on the CPU: it needs native bfloat16
arithmetic (AVX512-BF16 or AMX), which the first line reports.

Run (about 5 minutes on 2 cores, after ``chatnt quickstart``):
``python bench/precision.py --checkpoint runs/quickstart/run --data runs/quickstart/data``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from chatnt_core.evaluation.calibrate import load_calibration
from chatnt_core.evaluation.evaluate import evaluate_model
from chatnt_core.inference.precision import native_bfloat16, set_precision
from chatnt_core.model_store import quiet_hf_progress_bars
from chatnt_core.training.checkpoint import load_model_from_checkpoint, resolve_checkpoint


def evaluated(
    checkpoint: Path, data: Path, precision: str, out: Path, args: argparse.Namespace
) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """Seconds to evaluate (loading excluded), the metrics and the predictions."""
    model = set_precision(load_model_from_checkpoint(checkpoint), precision)
    start = time.perf_counter()
    evaluate_model(
        model,
        data,
        out,
        max_per_task=args.max_per_task,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        calibrations=load_calibration(checkpoint),
    )
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["tasks"]
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return seconds, metrics, [json.loads(line) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="e.g. runs/quickstart/data")
    parser.add_argument("--max-per-task", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_hf_progress_bars()
    checkpoint = resolve_checkpoint(args.checkpoint)
    print(f"native bfloat16 on this CPU: {native_bfloat16()} ({args.threads} threads)")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            runs[precision] = evaluated(
                checkpoint, args.data, precision, Path(tmp) / precision, args
            )
    (fp32_s, fp32_metrics, fp32_rows), (bf16_s, bf16_metrics, bf16_rows) = runs.values()
    print(
        f"{'task':<18} {'metric':<8} {'fp32':>7} {'bf16':>7} {'same answers':>13} "
        f"{'max |dP(yes)|':>14}"
    )
    for task, fp32_task in fp32_metrics.items():
        pairs = [(a, b) for a, b in zip(fp32_rows, bf16_rows) if a["task"] == task == b["task"]]
        same = sum(a["answer"] == b["answer"] for a, b in pairs)
        gaps = [
            abs(a["p_positive"] - b["p_positive"])
            for a, b in pairs
            if a.get("p_positive") is not None and b.get("p_positive") is not None
        ]
        gap = f"{max(gaps):.4f}" if gaps else "-"
        print(
            f"{task:<18} {fp32_task['metric']:<8} {fp32_task['score']:>7.3f} "
            f"{bf16_metrics[task]['score']:>7.3f} {f'{same}/{len(pairs)}':>13} {gap:>14}"
        )
    total = len(fp32_rows)
    same_all = sum(a["answer"] == b["answer"] for a, b in zip(fp32_rows, bf16_rows))
    print(
        f"all tasks: same answers {same_all}/{total} ({100 * same_all / total:.1f}%); "
        f"evaluation wall time fp32 {fp32_s:.1f} s, bf16 {bf16_s:.1f} s "
        f"({fp32_s / bf16_s:.2f}x)"
    )


if __name__ == "__main__":
    main()
