"""Peak memory per process of a few training updates: one process, DDP and FSDP over two.

    python bench/train_memory.py                 # tiny-demo and the SmolLM2 assembly
    python bench/train_memory.py --models tiny --steps 2

Each configuration is a real ``chatnt train`` run (``torchrun --standalone
--nproc_per_node 2`` for DDP and FSDP, ``ACCELERATE_USE_FSDP=true`` for FSDP) on the demo
tasks. Every process reports its peak resident memory (``ru_maxrss``: weights, activations,
gradients, optimizer state, and the Python/PyTorch runtime itself), its resident memory
once the trainer is ready (model built, and sharded under FSDP) and after the last update
(``VmRSS``), and the bytes it holds
of the weights (trainable and frozen) and of the Adam state after training, which show
what FSDP shards. The table is printed in Markdown. On a CPU the runtime alone is a few
hundred MB, so the differences between strategies show most clearly in the tensor columns.

The SmolLM2 assembly is the quickstart's (motif CNN, English-aware Perceiver, frozen
SmolLM2-135M-Instruct with gated LoRA r 8 on q/k/v/o) without its warm-ups; it needs
``chatnt models fetch smollm2-135m-instruct`` once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
STRATEGIES = ("single", "ddp", "fsdp")


def current_rss_mb() -> float:
    """Resident memory now (Linux), to tell building the model from training it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(config_path: str, report_dir: str) -> None:
    """Runs in every process of a launch: train, then report memory."""
    import torch
    from torch.distributed.tensor import DTensor

    from chatnt_core.training.config import load_train_config
    from chatnt_core.training.trainer import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(load_train_config(config_path))
    ready_mb = current_rss_mb()
    trainer.train()

    def local_bytes(tensor: torch.Tensor) -> int:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        return local.numel() * local.element_size()

    params = list(trainer.unwrapped_model.parameters())
    optimizer = sum(
        local_bytes(value)
        for state in trainer.optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
    report = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ready_rss_mb": ready_mb,
        "end_rss_mb": current_rss_mb(),
        "trainable_mb": sum(local_bytes(p) for p in params if p.requires_grad) / 2**20,
        "frozen_mb": sum(local_bytes(p) for p in params if not p.requires_grad) / 2**20,
        "adam_mb": optimizer / 2**20,
    }
    rank = trainer.accelerator.process_index
    (Path(report_dir) / f"rank{rank}.json").write_text(json.dumps(report))


def smollm2_settings() -> dict[str, Any]:
    quickstart = yaml.safe_load((ROOT / "registry/training/quickstart.yaml").read_text())
    return {"model": quickstart["model"], "lora": quickstart["lora"]}


def tiny_settings() -> dict[str, Any]:
    return {
        "model": yaml.safe_load((ROOT / "registry/training/tiny-demo.yaml").read_text())["model"]
    }


def run(
    name: str, strategy: str, settings: dict[str, Any], data: Path, tmp: Path, steps: int
) -> list[dict[str, float]]:
    out = tmp / f"{name}-{strategy}"
    out.mkdir()
    config = {
        **settings,
        "data": [str(data)],
        "output_dir": str(out / "run"),
        "samples_per_update": 8,
        "micro_batch_size": 4,
        "max_steps": steps,
        "save_every": steps,
        "log_every": 1,
        "progress": False,
        "tensorboard": False,
    }
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    me = [str(Path(__file__).resolve()), "--worker", str(path), str(out)]
    if strategy == "single":
        command = [sys.executable, *me]
    else:
        command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *me]
        if strategy == "fsdp":
            env["ACCELERATE_USE_FSDP"] = "true"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} {strategy} failed:\n{done.stderr[-3000:]}")
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"]
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES)
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from chatnt_core.data.demo import write_demo

    builders = {"tiny": tiny_settings, "smollm2": smollm2_settings}
    columns = ["model", "strategy", "processes", "peak RSS / process (MB)"]
    columns += ["RSS when ready to train (MB)", "RSS after training (MB)"]
    columns += ["trainable weights (MB)", "frozen weights (MB)", "Adam state (MB)"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        data = tmp / "demo"
        write_demo(data, train_size=40, test_size=4, seed=0)
        for name in args.models:
            for strategy in args.strategies:
                reports = run(name, strategy, builders[name](), data, tmp, args.steps)
                cells = [
                    f"{max(r[k] for r in reports):.0f}"
                    for k in ("peak_rss_mb", "ready_rss_mb", "end_rss_mb")
                ]
                cells += [
                    f"{max(r[k] for r in reports):.1f}"
                    for k in ("trainable_mb", "frozen_mb", "adam_mb")
                ]
                print(f"| {name} | {strategy} | {len(reports)} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
