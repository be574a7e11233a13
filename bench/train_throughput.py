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

``--smollm2``: training updates through the frozen, pretrained SmolLM2-135M-Instruct decoder
(model store name ``smollm2-135m-instruct``; ``--decoder`` takes another store name or a
local directory) on the built-in demo data, with a motif-cnn encoder and the English-aware
Perceiver (K = 8, decoder question embeddings, native chat template), 16 samples per
update in micro-batches of 4. One Trainer, one run, one table: each row restores the same
start weights, optimizer state and sampler draws, runs one warm-up update (its loss is the
"first loss" column), then times ``--steps`` updates, switching on one speed change after
another:

1. baseline: logits at every position, no shared-prefix KV cache, no length bucketing, fp32;
2. + logits only from the first answer position (``model.answer_logits_only``);
3. + the shared-prefix KV cache and no-gradient opening columns (``model.use_prefix_cache``);
4. + length bucketing (``bucket_by_length``) = what training uses, fp32;
5. the same under bf16 autocast (``precision: bf16``): timed on its one update only, since
   CPUs without native bfloat16 run it far slower; its loss is compared with row 4's on the
   same batch and weights.

The fp32 rows train on the same draws from the same weights, so their first losses agree
up to float noise: the speed changes do not change the maths.

Run: ``python bench/train_throughput.py --smollm2 --steps 3`` (``--threads 2``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import random
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from datasets import Dataset, DatasetDict, disable_progress_bars

from chatnt_core.data.demo import write_demo
from chatnt_core.training.config import TrainConfig
from chatnt_core.training.sampling import SamplerState
from chatnt_core.training.trainer import Trainer, set_train_mode

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


SMOLLM2_SAMPLES_PER_UPDATE = 16
SMOLLM2_MICRO_BATCH_SIZE = 4
BF16_TOLERANCE = 0.02  # largest relative first-loss difference accepted for bf16 autocast


def smollm2_model(decoder: str) -> dict[str, Any]:
    """The quickstart's SmolLM2 assembly (registry/training/quickstart.yaml) with ``decoder``
    (a model store name or a local directory)."""
    import copy

    import yaml

    from chatnt_core.training.config import training_preset_path

    config = yaml.safe_load(training_preset_path("quickstart").read_text(encoding="utf-8"))
    model: dict[str, Any] = copy.deepcopy(config["model"])
    model["decoder"]["params"] = {"path": decoder}
    return model


@dataclass(frozen=True)
class Setting:
    label: str
    answer_logits_only: bool
    prefix_cache: bool
    bucketing: bool
    bf16: bool = False


SETTINGS = [
    Setting("baseline", False, False, False),
    Setting("+ answer-position logits", True, False, False),
    Setting("+ prefix cache", True, True, False),
    Setting("+ bucketing (ours, fp32)", True, True, True),
    Setting("ours, bf16 autocast", True, True, True, bf16=True),
]


@dataclass
class StartState:
    """What each row restores: trainable weights, buffers, optimizer and sampler state."""

    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    sampler: dict[str, Any]


def save_start(trainer: Trainer) -> StartState:
    model = trainer.model
    tensors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    tensors.update({n: b.detach().clone() for n, b in model.named_buffers()})
    optimizer = copy.deepcopy(trainer.optimizer.state_dict())
    return StartState(tensors, optimizer, trainer.sampler.state.to_json())


def restore_start(trainer: Trainer, start: StartState) -> None:
    current = dict(trainer.model.named_parameters()) | dict(trainer.model.named_buffers())
    with torch.no_grad():
        for name, tensor in start.tensors.items():
            current[name].copy_(tensor)
    trainer.optimizer.load_state_dict(copy.deepcopy(start.optimizer))
    trainer.sampler.load_state(SamplerState.from_json(start.sampler))
    trainer.step = 0
    torch.manual_seed(trainer.config.seed)


@contextlib.contextmanager
def bf16_forward(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module``'s forward under CPU bf16 autocast, as ``precision: bf16`` does."""
    plain = module.forward
    module.forward = torch.autocast("cpu", dtype=torch.bfloat16)(plain)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.forward


def timed_update(trainer: Trainer, setting: Setting) -> dict[str, Any]:
    """One ``Trainer._update`` under ``setting``; its metrics plus ``seconds``."""
    trainer.model.answer_logits_only = setting.answer_logits_only
    trainer.model.use_prefix_cache = setting.prefix_cache
    trainer.config.bucket_by_length = setting.bucketing
    autocast = bf16_forward(trainer.wrapped) if setting.bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    with autocast:
        metrics = trainer._update()
    metrics["seconds"] = time.perf_counter() - start
    trainer.step += 1
    return metrics


def run_smollm2(args: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        write_demo(data, train_size=64, test_size=1, seed=0)
        config = TrainConfig.model_validate(
            {
                "model": smollm2_model(args.decoder),
                "data": [str(data)],
                "output_dir": str(Path(tmp) / "run"),
                "optimizer": {"lr": 1e-3},
                "samples_per_update": SMOLLM2_SAMPLES_PER_UPDATE,
                "micro_batch_size": SMOLLM2_MICRO_BATCH_SIZE,
                "max_steps": args.steps + 1,
                "encoder_warmup": None,
                "bucket_by_length": False,
                "progress": False,
                "tensorboard": False,
            }
        )
        trainer = Trainer(config)
        set_train_mode(trainer.model, config.gradient_checkpointing)
        start = save_start(trainer)
        print(
            f"decoder {args.decoder} (frozen), threads {torch.get_num_threads()}, "
            f"{SMOLLM2_SAMPLES_PER_UPDATE} samples per update, micro-batches of "
            f"{SMOLLM2_MICRO_BATCH_SIZE}, 1 warm-up + {args.steps} measured updates per fp32 "
            "row; bf16: its first update only (row 4's warm-up batch)"
        )
        print(
            f"{'setting':<26} {'samples/s':>10} {'tokens/s':>9} {'s/update':>9} "
            f"{'speed-up':>8} {'padding':>8} {'first loss':>11}"
        )
        first_losses: dict[str, float] = {}
        baseline_rate = 0.0
        for setting in SETTINGS:
            restore_start(trainer, start)
            first = timed_update(trainer, setting)
            first_losses[setting.label] = first["loss"]
            if setting.bf16:
                measured = [first]
            else:
                measured = [timed_update(trainer, setting) for _ in range(args.steps)]
            seconds = sum(m["seconds"] for m in measured)
            samples = sum(m["samples"] for m in measured)
            tokens = sum(m["tokens"] for m in measured)
            padding = sum(m["padding_fraction"] for m in measured) / len(measured)
            rate = samples / seconds
            baseline_rate = baseline_rate or rate
            print(
                f"{setting.label:<26} {rate:>10.2f} {tokens / seconds:>9.0f} "
                f"{seconds / len(measured):>9.2f} {rate / baseline_rate:>7.2f}x "
                f"{padding:>8.1%} {first['loss']:>11.6f}",
                flush=True,
            )
        fp32 = [first_losses[s.label] for s in SETTINGS if not s.bf16]
        print(f"fp32 rows: first losses differ by at most {max(fp32) - min(fp32):.2e}")
        ours = first_losses[SETTINGS[-2].label]
        diff = first_losses[SETTINGS[-1].label] - ours
        verdict = "ok" if abs(diff) <= BF16_TOLERANCE * abs(ours) else "OUTSIDE"
        print(
            f"bf16 vs fp32 on the same batch and weights: first loss {diff:+.2e} "
            f"({abs(diff) / abs(ours):.3%}; "
            f"tolerance {BF16_TOLERANCE:.0%}: {verdict})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=3, help="measured updates per run")
    parser.add_argument("--tokens-per-update", type=int, default=8192)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--smollm2",
        action="store_true",
        help="measure the speed changes through the frozen SmolLM2 decoder instead",
    )
    parser.add_argument(
        "--decoder",
        default="smollm2-135m-instruct",
        help="--smollm2: model store name or local directory of the decoder",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    disable_progress_bars()
    if args.smollm2:
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        run_smollm2(args)
        return
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
