"""Benchmark: training throughput of the shared trainer on CPU, with and without bucketing.

Not a test: it prints figures. Two randomly initialised assemblies (nothing downloaded),
both trained as in the paper (decoder frozen, encoder + projection trained):

* ``tiny``: the ``tiny-random`` preset (char encoders 32 x 2, Perceiver, Llama 32 x 2);
* ``mid``: a char-transformer DNA encoder 256 x 4 layers, the English-aware Perceiver
  (K = 64) and a Llama decoder 512 x 8 layers (MLP 1376, 8 heads), byte vocabulary.

The data is synthetic, in the stored record format: three tasks whose questions, answers
and DNA sequences (50-1000 nt) vary in length, so micro-batches need padding. Each run
trains ``--steps`` updates of ``--tokens-per-update`` tokens after one warm-up update and
reports samples/s, tokens/s (real decoder tokens: prompt, placeholders and answers, no
padding) and the padding fraction of the micro-batches (padded positions / all).

Run: ``python bench/train_throughput.py`` (a few minutes on 2 CPU cores); ``--threads 1``
gives steadier figures when other jobs share the cores.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, disable_progress_bars

from chatnt_core.training.config import TrainConfig
from chatnt_core.training.trainer import Trainer

MID_MODEL: dict[str, Any] = {
    "name": "mid-cpu",
    "num_latents": 64,
    "encoders": {
        "dna": {
            "name": "char-transformer",
            "params": {"hidden_size": 256, "num_layers": 4, "num_heads": 8, "max_tokens": 1100},
            "projection": {"name": "english-aware-perceiver", "params": {"num_layers": 2}},
        }
    },
    "decoder": {
        "name": "hf-causal-lm",
        "params": {
            "random_init": {
                "model_type": "llama",
                "hidden_size": 512,
                "intermediate_size": 1376,
                "num_hidden_layers": 8,
                "num_attention_heads": 8,
                "num_key_value_heads": 8,
                "max_position_embeddings": 2048,
            },
            "tokenizer": "bytes",
        },
    },
}
MODELS: dict[str, str | dict[str, Any]] = {"tiny": "tiny-random", "mid": MID_MODEL}
FILLER = " Consider the cell type and the surrounding chromatin context."


def synthetic_records(count: int, seed: int) -> list[dict[str, Any]]:
    """Three tasks; question, answer and sequence lengths drawn per example."""
    rng = random.Random(seed)
    tasks = {
        "promoter": ("Is @seq.fna a promoter?", ["Yes.", "No, it is not a promoter."]),
        "enhancer": ("Does @seq.fna act as an enhancer?", ["Yes, a strong enhancer.", "No."]),
        "expression": ("How strongly is @seq.fna expressed?", ["Expression level 0.42."]),
    }
    records = []
    for i in range(count):
        task = list(tasks)[i % len(tasks)]
        question, answers = tasks[task]
        length = rng.choice([50, 100, 200, 400, 1000])
        records.append(
            {
                "task": task,
                "turns": [
                    {
                        "user": question + FILLER * rng.randrange(0, 8),
                        "assistant": rng.choice(answers),
                    }
                ],
                "sequences": [
                    {
                        "name": "seq.fna",
                        "sequence": "".join(rng.choice("ACGT") for _ in range(length)),
                        "modality": "dna",
                    }
                ],
                "label": None,
                "value": None,
            }
        )
    return records


def run(model: str | dict[str, Any], bucket: bool, data: Path, out: Path, args: Any) -> dict:
    config = TrainConfig.model_validate(
        {
            "model": model,
            "data": [str(data)],
            "output_dir": str(out),
            "tokens_per_update": args.tokens_per_update,
            "micro_batch_size": args.micro_batch_size,
            "max_steps": args.steps + 1,
            "log_every": 1,
            "save_every": 10**6,
            "bucket_by_length": bucket,
            "progress": False,
            "tensorboard": False,
        }
    )
    Trainer(config).train()
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[1:]  # the first update warms up
    seconds = sum(float(r["samples"]) / float(r["samples_per_s"]) for r in rows)
    samples = sum(int(r["samples"]) for r in rows)
    tokens = sum(int(r["tokens"]) for r in rows)
    padding = sum(float(r["padding_fraction"]) for r in rows) / len(rows)
    return {"samples_s": samples / seconds, "tokens_s": tokens / seconds, "padding": padding}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=3, help="measured updates per run")
    parser.add_argument("--tokens-per-update", type=int, default=8192)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    disable_progress_bars()
    print(
        f"threads {torch.get_num_threads()}, {args.tokens_per_update} tokens per update, "
        f"micro-batches of {args.micro_batch_size}, {args.steps} measured updates"
    )
    print(f"{'model':<6} {'bucketing':<9} {'samples/s':>10} {'tokens/s':>10} {'padding':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        DatasetDict(
            {
                "train": Dataset.from_list(synthetic_records(600, 0)),
                "test": Dataset.from_list(synthetic_records(30, 1)),
            }
        ).save_to_disk(str(data))
        for name in args.models:
            for bucket in (False, True):
                out = Path(tmp) / f"{name}-{bucket}"
                figures = run(MODELS[name], bucket, data, out, args)
                print(
                    f"{name:<6} {'on' if bucket else 'off':<9} {figures['samples_s']:>10.2f} "
                    f"{figures['tokens_s']:>10.0f} {figures['padding']:>8.1%}"
                )


if __name__ == "__main__":
    main()
