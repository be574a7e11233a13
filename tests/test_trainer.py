"""The trainer: loss on answer tokens, exact accumulation, learning, and exact resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from training_helpers import one_thread, tiny_model, train_config, write_dataset

from chatnt_core.batching import IGNORE_INDEX, collate
from chatnt_core.training.config import ScheduleConfig, TrainConfig
from chatnt_core.training.data import answer_tokens
from chatnt_core.training.trainer import Trainer, lr_factor, resolve_model, set_train_mode


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny")


def make_trainer(data: Path, output_dir: Path, **overrides: Any) -> Trainer:
    return Trainer(TrainConfig.model_validate(train_config(data, output_dir, **overrides)))


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_loss_counts_answer_tokens_only(data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data, tmp_path / "out")
    example = trainer.cache.get(0)
    record, _ = trainer.data.record(0)
    answer = record["turns"][-1]["assistant"]
    # The answer's tokens plus EOS carry labels; the prompt, placeholders and system don't.
    assert answer_tokens(example) == len(trainer.model.decoder.tokenize(f" {answer}")) + 1
    labelled = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]
    assert labelled == [
        *trainer.model.decoder.tokenize(f" {answer}"),
        trainer.model.decoder.eos_token_id,
    ]


def test_update_loss_is_the_mean_over_all_answer_tokens(data: Path, tmp_path: Path) -> None:
    """Micro-batches of 3, 3 and 2 report the loss of one batch of 8."""
    trainer = make_trainer(data, tmp_path / "out", micro_batch_size=3, bucket_by_length=True)
    trainer.model.eval()  # no dropout, so the manual pass sees the same function
    state = type(trainer.sampler.state).from_json(trainer.sampler.state.to_json())
    reported = trainer._update()["loss"]
    trainer.sampler.load_state(state)
    draws = trainer.sampler.draw_update(0, trainer.cache.num_tokens, None, 8)
    batch = collate([trainer.cache.get(d.row) for d in draws], trainer.model.decoder.pad_token_id)
    fresh = make_trainer(data, tmp_path / "fresh")  # same seed: the weights before the step
    with torch.no_grad():
        kept = fresh.model.eval()(batch).logits  # the positions from the first answer on
    logits = kept[:, :-1]
    targets = batch.labels[:, -kept.shape[1] + 1 :]
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    assert reported == pytest.approx(float(expected), abs=1e-6)
    assert int((targets != IGNORE_INDEX).sum()) == sum(
        answer_tokens(trainer.cache.get(d.row)) for d in draws
    )


def _first_gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def capture(*args: Any, **kwargs: Any) -> Any:
        if not captured:
            for name, p in trainer.model.named_parameters():
                if p.grad is not None:
                    captured[name] = p.grad.detach().clone()
        return step(*args, **kwargs)

    trainer.optimizer.step = capture  # type: ignore[method-assign]
    trainer._update()
    return captured


def test_token_budget_accumulation_matches_one_big_batch(data: Path, tmp_path: Path) -> None:
    budget = {"samples_per_update": None, "tokens_per_update": 500, "max_grad_norm": None}
    metrics = make_trainer(data, tmp_path / "probe", **budget)._update()
    assert metrics["tokens"] >= 500 and metrics["samples"] >= 2
    small = make_trainer(data, tmp_path / "a", micro_batch_size=2, bucket_by_length=False, **budget)
    large = make_trainer(data, tmp_path / "b", micro_batch_size=64, bucket_by_length=True, **budget)
    small.model.eval()
    large.model.eval()
    grads_small, grads_large = _first_gradients(small), _first_gradients(large)
    assert grads_small.keys() == grads_large.keys() and grads_small
    for name, grad in grads_small.items():
        torch.testing.assert_close(grad, grads_large[name], atol=1e-6, rtol=1e-4, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients(data: Path, tmp_path: Path) -> None:
    plain = make_trainer(data, tmp_path / "a", model=tiny_model(decoder_trainable=True))
    checkpointed = make_trainer(
        data, tmp_path / "b", model=tiny_model(decoder_trainable=True), gradient_checkpointing=True
    )
    assert checkpointed.model.decoder.model.is_activation_checkpointing
    set_train_mode(plain.model, False)
    set_train_mode(checkpointed.model, True)
    expected, got = _first_gradients(plain), _first_gradients(checkpointed)
    assert expected.keys() == got.keys()
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_a_tiny_model_learns_two_tasks(data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(
        data,
        tmp_path / "out",
        model=tiny_model(decoder_trainable=True),
        optimizer={"lr": 3e-3},
        max_steps=25,
        save_every=100,
    )
    result = trainer.train()
    losses = [float(row["loss"]) for row in read_metrics(tmp_path / "out")]
    assert len(losses) == 25 and result.step == 25
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses


def test_epochs_stop_after_the_dataset_size_in_samples(data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(data, tmp_path / "out", max_steps=None, epochs=0.5, save_every=100)
    result = trainer.train()
    assert result.step == 3 and trainer.samples_seen == 24  # 20 samples = half of 40, in 8s
    assert result.checkpoint is not None and result.checkpoint.name == "checkpoint-000003"


def test_schedule_warms_up_then_decays() -> None:
    cosine = ScheduleConfig(name="cosine", warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(step, cosine, 20) for step in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert (
        factors[4] == 1.0
        and factors[-1] > 0.1
        and factors == sorted(factors[:4]) + sorted(factors[4:], reverse=True)
    )
    assert lr_factor(10**6, ScheduleConfig(), None) == 1.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "chatnt_core.cli", "train", *args]


def test_cli_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny-random", "data": "x", "output_dir": "o"}))
    done = subprocess.run(_cli(str(path)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error:") and "max_steps" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_killed_and_resumed_run_matches_an_uninterrupted_one(data: Path, tmp_path: Path) -> None:
    """SIGKILL after the step-4 checkpoint, resume: every later loss is bitwise the same."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    configs = {}
    for name in ("reference", "victim"):
        configs[name] = tmp_path / f"{name}.yaml"
        settings = train_config(data, tmp_path / name, max_steps=16, save_every=4, keep_last=2)
        configs[name].write_text(yaml.safe_dump(settings))
    reference = subprocess.Popen(
        _cli(str(configs["reference"])), env=env, stdout=subprocess.DEVNULL
    )
    victim = subprocess.Popen(_cli(str(configs["victim"])), env=env, stdout=subprocess.DEVNULL)
    try:
        latest = tmp_path / "victim" / "latest"
        deadline = time.monotonic() + 300
        while not latest.is_file() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
        killed_at = int(latest.read_text().strip().split("-")[1])
        assert 4 <= killed_at < 16
        resumed = subprocess.run(
            _cli(str(configs["victim"]), "--resume", str(tmp_path / "victim")),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert reference.wait(timeout=300) == 0
    finally:
        for process in (reference, victim):
            if process.poll() is None:
                process.kill()
                process.wait()
    expected = read_metrics(tmp_path / "reference")
    got = read_metrics(tmp_path / "victim")
    assert [r["step"] for r in got] == [str(s) for s in range(1, 17)]
    assert [r["loss"] for r in got] == [r["loss"] for r in expected]  # exact, as text
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in expected]
    final = "checkpoint-000016/model.safetensors"
    assert (tmp_path / "victim" / final).read_bytes() == (
        tmp_path / "reference" / final
    ).read_bytes()


ROOT = Path(__file__).resolve().parents[1]


def test_shipped_training_configs_validate_and_say_how_to_run() -> None:
    shipped = sorted((ROOT / "registry" / "training").glob("*.yaml"))
    names = {p.name for p in shipped}
    assert {
        "tiny-demo.yaml",
        "accelerate-ddp.yaml",
        "accelerate-fsdp.yaml",
        "accelerate-deepspeed-zero2.yaml",
    } <= names
    for path in shipped:
        text = path.read_text()
        header = [line for line in text.splitlines() if line.startswith("#")]
        assert header and text.startswith("#"), f"{path.name} needs a header comment"
        data = yaml.safe_load(text)
        if path.name.startswith("accelerate-"):
            assert "accelerate launch --config_file registry/training/" in text
            assert data["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
            assert data["mixed_precision"] == "no"  # the training config decides
        else:
            assert "chatnt train" in text
            resolve_model(TrainConfig.model_validate(data).model)  # plugin params too


def test_training_md_documents_every_config_field() -> None:
    doc = (ROOT / "docs" / "training.md").read_text()
    from chatnt_core.training import config as module

    models = [
        module.TrainConfig,
        module.OptimizerConfig,
        module.ScheduleConfig,
        module.LoraSettings,
        module.DataConfig,
    ]
    missing = [f"{m.__name__}.{name}" for m in models for name in m.model_fields if name not in doc]
    assert not missing, f"docs/training.md does not mention {missing}"
    for name in TrainConfig.model_fields:
        assert f"| `{name}`" in doc or f"`{name}` /" in doc or f"/ `{name}`" in doc, name


def test_lr_scale_sets_a_learning_rate_per_part(data: Path, tmp_path: Path) -> None:
    trainer = make_trainer(
        data,
        tmp_path / "out",
        model=tiny_model(decoder_trainable=True),
        optimizer={"lr": 1e-3},
        lr_scale={"encoders": 0.1, "decoder": 0.5},
        max_steps=2,
        save_every=100,
    )
    trainer.train()
    groups = {round(g["lr_scale"], 3): g["lr"] for g in trainer.optimizer.param_groups}
    assert groups == pytest.approx({0.1: 1e-4, 1.0: 1e-3, 0.5: 5e-4})
    encoder_params = {id(p) for p in trainer.model.encoders.parameters()}
    slow = next(g for g in trainer.optimizer.param_groups if g["lr_scale"] == 0.1)
    assert {id(p) for p in slow["params"]} == encoder_params
