"""Tiny instruction datasets and training configs for the trainer and checkpoint tests.

The datasets use the stored record format (``chatnt_core.data.records``) and are written
with ``save_to_disk`` as ``DIR/train`` and ``DIR/test``, as the dataset builder does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, disable_progress_bars
from tiny_models import tiny_llama_config

disable_progress_bars()


def tata_record(rng: random.Random, index: int) -> dict[str, Any]:
    """Task 'tata': is the motif TATAAA in a 24-nt sequence? (short answers)."""
    bases = [rng.choice("ACG") for _ in range(24)]
    positive = index % 2 == 0
    if positive:
        start = rng.randrange(0, 18)
        bases[start : start + 6] = list("TATAAA")
    return {
        "task": "tata",
        "turns": [
            {"user": "Is there a TATA box in @seq?", "assistant": "yes" if positive else "no"}
        ],
        "sequences": [{"name": "seq", "sequence": "".join(bases), "modality": "dna"}],
        "label": "yes" if positive else "no",
        "value": None,
    }


def gc_record(rng: random.Random, index: int) -> dict[str, Any]:
    """Task 'gc': GC content of a 16-to-48-nt sequence (longer, varied prompts)."""
    length = rng.randrange(16, 49)
    sequence = "".join(rng.choice("ACGT") for _ in range(length))
    gc = (sequence.count("G") + sequence.count("C")) / length
    padding = " Please answer briefly." * (index % 4)
    return {
        "task": "gc",
        "turns": [
            {
                "user": f"What is the GC content of @dna?{padding}",
                "assistant": "high" if gc >= 0.5 else "low",
            }
        ],
        "sequences": [{"name": "dna", "sequence": sequence, "modality": "dna"}],
        "label": "high" if gc >= 0.5 else "low",
        "value": gc,
    }


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run far faster on one thread, and do not thrash a busy CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_dataset(directory: Path, per_task: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A DatasetDict with train/test splits; ``per_task`` gives the train size per task."""
    per_task = per_task or {"tata": 20, "gc": 20}
    makers = {"tata": tata_record, "gc": gc_record}
    rng = random.Random(seed)
    train = [makers[t](rng, i) for t, n in per_task.items() for i in range(n)]
    test = [makers[t](rng, i) for t in per_task for i in range(4)]
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)}).save_to_disk(
        str(directory)
    )
    return directory


def tiny_model(decoder_trainable: bool = False) -> dict[str, Any]:
    """An inline DNA-only tiny assembly (char encoder 32 x 2, Perceiver, 2-layer Llama)."""
    return {
        "name": "tiny-train",
        "num_latents": 4,
        "encoders": {
            "dna": {
                "name": "char-transformer",
                "params": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "max_tokens": 128},
                "projection": {"name": "english-aware-perceiver", "params": {"num_layers": 1}},
            }
        },
        "decoder": {
            "name": "hf-causal-lm",
            "params": {"random_init": tiny_llama_config(), "tokenizer": "bytes"},
            "trainable": decoder_trainable,
        },
        "prompt": {"template": "vicuna", "system_prompt": "A chat."},
    }


def train_config(data: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A training config dict for the tiny model: 8 samples per update, logged every step."""
    config: dict[str, Any] = {
        "model": tiny_model(),
        "data": [str(data)],
        "output_dir": str(output_dir),
        "samples_per_update": 8,
        "micro_batch_size": 4,
        "max_steps": 4,
        "log_every": 1,
        "save_every": 2,
        "keep_last": 2,
        "progress": False,
        "tensorboard": False,
        "optimizer": {"lr": 1e-3},
    }
    config.update(overrides)
    return config


def train_demo_one_step(demo: Path, output_dir: Path) -> Path:
    """``tiny-random`` trained for one update on a demo dataset; returns its checkpoint."""
    from chatnt_core.training.config import TrainConfig
    from chatnt_core.training.trainer import Trainer

    config = {
        "model": "tiny-random",
        "data": [str(demo)],
        "output_dir": str(output_dir),
        "samples_per_update": 4,
        "micro_batch_size": 4,
        "max_steps": 1,
        "save_every": 1,
        "progress": False,
        "tensorboard": False,
    }
    checkpoint: Path = Trainer(TrainConfig.model_validate(config)).train().checkpoint
    return checkpoint


def lora_tiny_model(active_from: str | None = "first_sequence") -> Any:
    """The ``tiny-random`` assembly in eval mode with LoRA on q/v (``active_from`` None: no
    LoRA), the adapters' up-projections drawn non-zero so that they act."""
    from chatnt_core import ChatNTModel
    from chatnt_core.training.config import LoraSettings
    from chatnt_core.training.lora import apply_lora

    torch.manual_seed(0)
    model = ChatNTModel.from_config("tiny-random").eval()
    if active_from is not None:
        settings = LoraSettings(r=2, alpha=4, target_modules=["q_proj", "v_proj"])
        apply_lora(model.decoder, settings.model_copy(update={"active_from": active_from}))
        with torch.no_grad():
            for name, param in model.decoder.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
    return model
