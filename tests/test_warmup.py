"""Encoder warm-up: supervised probes on the training labels before the chat training."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import one_thread, tiny_model, train_config

from chatnt_char_encoder import MotifCNNEncoder, MotifCNNParams
from chatnt_core.data.demo import demo_cards, write_demo
from chatnt_core.errors import ConfigError
from chatnt_core.training.config import EncoderWarmupConfig, TrainConfig
from chatnt_core.training.trainer import Trainer
from chatnt_core.training.warmup import probe_tasks, warm_up_encoder

CARDS = demo_cards()


def record(task: str, sequence: str, label: str | None = None, value: float | None = None,
           modality: str = "dna", copies: int = 1) -> dict[str, Any]:  # fmt: skip
    seqs = [{"name": f"s{i}", "sequence": sequence, "modality": modality} for i in range(copies)]
    return {"task": task, "sequences": seqs, "label": label, "value": value}


def encoder() -> MotifCNNEncoder:
    return MotifCNNEncoder("dna", MotifCNNParams(hidden_size=8, kernel_size=7))


def test_probe_tasks_keep_single_dna_sequences_with_a_target_of_a_known_card() -> None:
    records = [
        record("demo-ctcf-site", "ACGT", label="ctcf_site"),
        record("demo-ctcf-site", "ACGTAA", label="no_ctcf_site"),
        record("demo-ctcf-site", "ACGT", label="not-a-label"),  # unknown label: skipped
        record("demo-ctcf-site", "ACGT", label="ctcf_site", copies=2),  # two sequences
        record("demo-ctcf-site", "ACGU", label="ctcf_site", modality="rna"),  # other modality
        record("no-such-card", "ACGT", label="x"),
        record("demo-gc-content", "GGCC", value=1.0),
        record("demo-gc-content", "AATT", value=0.0),
        record("demo-gc-content", "ACGT", value=None),  # no value: skipped
    ]
    tasks = {t.name: t for t in probe_tasks(records, CARDS, encoder(), max_per_task=100)}
    assert sorted(tasks) == ["demo-ctcf-site", "demo-gc-content"]
    ctcf, gc = tasks["demo-ctcf-site"], tasks["demo-gc-content"]
    assert ctcf.num_classes == 2 and ctcf.targets.tolist() == [0, 1]
    assert ctcf.input_ids.shape == (2, 6) and ctcf.mask.sum().item() == 10
    assert gc.regression and gc.targets.mean().abs() < 1e-6  # standardised
    assert abs(gc.targets.std().item() - 1.0) < 1e-5


def test_probe_tasks_cap_records_per_task() -> None:
    records = [record("demo-ctcf-site", "ACGT", label="ctcf_site") for _ in range(10)]
    (task,) = probe_tasks(records, CARDS, encoder(), max_per_task=3)
    assert len(task.targets) == 3


def planted(rng: random.Random, positive: bool) -> str:
    bases = [rng.choice("ACGT") for _ in range(40)]
    if positive:
        start = rng.randrange(0, 33)
        bases[start : start + 7] = list("GGGCCCG")
    return "".join(bases)


def test_warm_up_learns_a_planted_motif_and_is_seeded() -> None:
    rng = random.Random(0)
    records = [
        record(
            "demo-ctcf-site",
            planted(rng, i % 2 == 0),
            label="ctcf_site" if i % 2 == 0 else "no_ctcf_site",
        )
        for i in range(200)
    ]
    config = EncoderWarmupConfig(steps=150, batch_size=16, lr=1e-2)
    weights = []
    with one_thread():
        for _ in range(2):
            model = encoder()
            tasks = probe_tasks(records, CARDS, model, max_per_task=1000)
            losses = warm_up_encoder(model, tasks, config, 0, torch.device("cpu"))
            weights.append(model.conv.weight.detach().clone())
            assert all(p.grad is None for p in model.parameters())  # none left for update 1
    assert len(losses) == 150
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20  # from ~ln 2 towards 0
    assert torch.equal(weights[0], weights[1])


def test_warm_up_with_no_usable_record_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no training record"):
        warm_up_encoder(encoder(), [], EncoderWarmupConfig(steps=1), 0, torch.device("cpu"))


def warmup_model(trainable: bool) -> dict[str, Any]:
    model = tiny_model()
    model["encoders"]["dna"] = {
        "name": "motif-cnn",
        "params": {"hidden_size": 16, "kernel_size": 7},
        "trainable": trainable,
        "projection": {"name": "mlp", "params": {"pooling": "max"}},
    }
    return model


def test_trainer_warms_up_a_trainable_encoder_before_step_0(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    write_demo(data, train_size=12, test_size=2)
    warmup = {"steps": 3, "batch_size": 4}
    with one_thread():
        plain = Trainer(TrainConfig.model_validate(
            train_config(data, tmp_path / "a", model=warmup_model(True))
        ))  # fmt: skip
        warmed = Trainer(TrainConfig.model_validate(
            train_config(data, tmp_path / "b", model=warmup_model(True), encoder_warmup=warmup)
        ))  # fmt: skip
        again = Trainer(TrainConfig.model_validate(
            train_config(data, tmp_path / "c", model=warmup_model(True), encoder_warmup=warmup)
        ))  # fmt: skip
    weight = "conv.weight"
    first = warmed.model.encoders["dna"].state_dict()[weight]
    assert not torch.equal(plain.model.encoders["dna"].state_dict()[weight], first)
    assert torch.equal(again.model.encoders["dna"].state_dict()[weight], first)
    # The rest of the model starts exactly as without a warm-up.
    assert torch.equal(
        plain.model.projections["dna"].fc1.weight, warmed.model.projections["dna"].fc1.weight
    )


def test_warm_up_of_a_frozen_encoder_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    write_demo(data, train_size=4, test_size=2)
    config = train_config(
        data, tmp_path / "run", model=warmup_model(False), encoder_warmup={"steps": 1}
    )
    with pytest.raises(ConfigError, match="needs the dna encoder to be trainable"):
        Trainer(TrainConfig.model_validate(config))
