"""Checkpoints: exact round-trips, refusal of damaged files, atomic saves, no pickle."""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from training_helpers import one_thread, train_config, write_dataset

from chatnt_core.errors import ChatNTError
from chatnt_core.training import checkpoint as ckpt
from chatnt_core.training import state_io
from chatnt_core.training.config import TrainConfig
from chatnt_core.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unpickling during the test fails it."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a checkpoint must never be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    """A tiny model trained 2 updates with LoRA on the decoder; checkpoint at step 2."""
    root = tmp_path_factory.mktemp("ckpt")
    data = write_dataset(root / "data")
    config = train_config(
        data,
        root / "out",
        max_steps=2,
        lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
    )
    trainer = Trainer(TrainConfig.model_validate(config))
    trainer.train()
    return trainer


def test_state_skeleton_round_trips_nested_structures() -> None:
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "x": None}],
        "__odd": True,
    }
    skeleton, tensors = state_io.flatten_state(state)
    restored = state_io.unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert restored["param_groups"] == state["param_groups"]
    assert isinstance(restored["param_groups"][0]["betas"], tuple)
    assert list(restored["state"]) == [0] and restored["__odd"] is True
    for key, value in state["state"][0].items():
        assert torch.equal(restored["state"][0][key], value)
    with pytest.raises(TypeError, match="without pickle"):
        state_io.flatten_state({"bad": object()})


def test_rng_state_round_trips_exactly(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    tensors, meta = state_io.capture_rng()
    state_io.write_tensors(tmp_path / "rng.safetensors", tensors, meta)
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state_io.restore_rng(*state_io.read_tensors(tmp_path / "rng.safetensors"))
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_checkpoint_is_one_self_describing_directory(trained: Trainer, no_pickle: None) -> None:
    directory = ckpt.read_latest(trained.output_dir)
    assert directory is not None and directory.name == "checkpoint-000002"
    names = {p.name for p in directory.iterdir()}
    assert {"config.yaml", "model.safetensors", "optimizer.safetensors", "optimizer.json"} <= names
    assert {"rng-rank0.safetensors", "trainer_state.json", "manifest.json"} <= names
    assert "tokenizer" not in names  # rebuilt from the config as it was
    config = yaml.safe_load((directory / "config.yaml").read_text())
    assert config["model"] == trained.resolved.to_dict()
    assert config["plugins"] == trained.resolved.plugin_versions() and config["plugins"]
    assert config["train"]["lora"]["r"] == 2
    manifest = json.loads((directory / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"config.yaml", "model.safetensors", "trainer_state.json"}
    for entry in manifest["files"].values():
        assert len(entry["sha256"]) == 64 and entry["size"] > 0
    # Only trainable weights: LoRA adapters, encoder, projection; never the base decoder.
    weights = load_file(str(directory / "model.safetensors"))
    trainable = {n for n, p in trained.model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in trained.model.named_buffers()}
    assert trainable <= set(weights)
    assert set(weights) - trainable <= buffers  # running statistics, word vocabulary
    assert any("lora_A" in n for n in weights)
    assert not any(n.startswith("decoder.") and "lora_" not in n for n in weights)


def test_round_trip_restores_weights_optimizer_and_rng(trained: Trainer, no_pickle: None) -> None:
    checkpoint = ckpt.Checkpoint.open(trained.output_dir)
    for name, value in ckpt.trainable_state_dict(trained.model).items():
        assert torch.equal(checkpoint.weights()[name], value), name
    saved = checkpoint.optimizer_state()
    live = trained.optimizer.state_dict()
    assert saved is not None and saved["param_groups"] == live["param_groups"]
    for index, slots in live["state"].items():
        for key, value in slots.items():
            assert torch.equal(saved["state"][index][key], value), (index, key)
    # A resumed trainer holds the same weights, optimizer state and step.
    resumed = Trainer(trained.config, resume=trained.output_dir)
    assert resumed.step == 2
    for name, value in ckpt.trainable_state_dict(trained.model).items():
        assert torch.equal(ckpt.trainable_state_dict(resumed.model)[name], value)
    assert resumed.optimizer.state_dict()["state"].keys() == live["state"].keys()
    # ... and its RNG continues where the saved one stood.
    checkpoint.restore_rng(0)
    expected = torch.rand(4)
    checkpoint.restore_rng(0)
    assert torch.equal(torch.rand(4), expected)


def test_loaded_model_answers_like_the_trained_one(trained: Trainer, no_pickle: None) -> None:
    model = ckpt.load_model_from_checkpoint(trained.output_dir)
    trained.model.eval()
    batch = trained.model.prompt_batch(
        ["Is there a TATA box in @s.fna?"], [{"s.fna": "ACGTATAAAGC"}]
    )
    with torch.no_grad():
        expected = trained.model(batch).logits
        got = model(batch).logits
    assert torch.equal(got, expected)


def test_a_tokenizer_changed_after_building_is_saved(tmp_path: Path) -> None:
    from tiny_models import build_tiny_decoder

    decoder = build_tiny_decoder()
    assert ckpt.modified_tokenizer(decoder) is None
    decoder.tokenizer.add_tokens(["<extra>"])
    payload = _payload(1.0, 1)
    payload.tokenizer = ckpt.modified_tokenizer(decoder)
    assert payload.tokenizer is decoder.tokenizer
    directory = ckpt.save_checkpoint(tmp_path, 1, payload)
    checkpoint = ckpt.Checkpoint.open(directory)
    assert checkpoint.tokenizer_dir is not None
    manifest = json.loads((directory / "manifest.json").read_text())
    assert any(name.startswith("tokenizer/") for name in manifest["files"])


def _copy_checkpoint(trained: Trainer, tmp_path: Path) -> Path:
    import shutil

    source = ckpt.read_latest(trained.output_dir)
    assert source is not None
    return Path(shutil.copytree(source, tmp_path / source.name))


def test_a_flipped_byte_is_refused_naming_the_file(trained: Trainer, tmp_path: Path) -> None:
    directory = _copy_checkpoint(trained, tmp_path)
    target = directory / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ChatNTError, match=r"model\.safetensors is corrupt") as error:
        ckpt.load_model_from_checkpoint(directory)
    assert "\n" not in str(error.value) and "earlier checkpoint" in str(error.value)


def test_a_truncated_file_is_refused_naming_the_file(trained: Trainer, tmp_path: Path) -> None:
    directory = _copy_checkpoint(trained, tmp_path)
    target = directory / "optimizer.safetensors"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(ChatNTError, match=r"optimizer\.safetensors is truncated"):
        ckpt.Checkpoint.open(directory)
    (directory / "manifest.json").unlink()
    with pytest.raises(ChatNTError, match=r"manifest\.json is missing"):
        ckpt.Checkpoint.open(directory)


def _payload(value: float, step: int) -> ckpt.CheckpointPayload:
    return ckpt.CheckpointPayload(
        config={"step": step},
        weights={"w": torch.full((3,), value)},
        trainer_state={"value": value},
        optimizer_state={"state": {}, "param_groups": [{"lr": value, "params": [0]}]},
    )


def test_interrupted_save_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ckpt.save_checkpoint(tmp_path, 2, _payload(1.0, 2))

    def crash(directory: Path) -> None:
        (directory / "half-written").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 4, _payload(2.0, 4))
    assert not (tmp_path / "checkpoint-000004").exists()
    assert ckpt.read_latest(tmp_path) == first
    opened = ckpt.Checkpoint.open(tmp_path)  # verifies every hash
    assert opened.trainer_state["value"] == 1.0 and torch.equal(
        opened.weights()["w"], torch.ones(3)
    )
    monkeypatch.undo()
    second = ckpt.save_checkpoint(tmp_path, 4, _payload(2.0, 4))  # debris is cleared
    assert ckpt.read_latest(tmp_path) == second and not list(tmp_path.glob(".*tmp"))


def test_rotation_keeps_the_newest_checkpoints(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, _payload(float(step), step))
        ckpt.rotate_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert ckpt.read_latest(tmp_path) == tmp_path / "checkpoint-000004"


def test_resume_path_must_be_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ChatNTError, match="neither a checkpoint"):
        ckpt.resolve_checkpoint(tmp_path)


def test_a_fresh_run_refuses_an_output_dir_with_checkpoints(tmp_path: Path) -> None:
    ckpt.save_checkpoint(tmp_path / "out", 1, _payload(1.0, 1))
    config = TrainConfig.model_validate(train_config(tmp_path / "data", tmp_path / "out"))
    with pytest.raises(ChatNTError, match="--resume"):
        Trainer(config)
