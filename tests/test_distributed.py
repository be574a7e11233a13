"""Two processes on CPU (gloo) through ``torchrun``: the ranks stay identical, and the
run computes what one process computes (same losses and gradient norms)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from training_helpers import one_thread, train_config, write_dataset

from chatnt_core.errors import ChatNTError
from chatnt_core.training.config import TrainConfig
from chatnt_core.training.sharding import check_launch
from chatnt_core.training.trainer import Trainer

TORCHRUN = Path(sys.executable).with_name("torchrun")

# Each rank trains, then writes a digest of its own trainable weights.
SCRIPT = """
import hashlib, sys
from pathlib import Path
from chatnt_core.training.checkpoint import trainable_state_dict
from chatnt_core.training.config import load_train_config
from chatnt_core.training.trainer import Trainer

trainer = Trainer(load_train_config(sys.argv[1]))
trainer.train()
digest = hashlib.sha256()
for name, tensor in trainable_state_dict(trainer.unwrapped_model).items():
    digest.update(name.encode())
    digest.update(tensor.numpy().tobytes())
rank = trainer.accelerator.process_index
(Path(sys.argv[2]) / f"weights-rank{rank}.sha256").write_text(digest.hexdigest())
"""


# Appended to SCRIPT by the two-node test: what torchrun told each process about its node.
NODE_REPORT = """
import os
keys = ("GROUP_RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR")
text = "".join(f"{k}: '{os.environ[k]}'\\n" for k in keys)
(Path(sys.argv[2]) / f"node-rank{rank}.yaml").write_text(text)
"""


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_two_processes_agree_and_match_one_process(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data")
    settings = train_config(data, tmp_path / "ddp", max_steps=4, save_every=4, micro_batch_size=2)
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script)]
    done = subprocess.run(
        [*command, str(config_path), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [(tmp_path / f"weights-rank{r}.sha256").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    checkpoint = tmp_path / "ddp" / "checkpoint-000004"
    assert {p.name for p in checkpoint.glob("rng-rank*")} == {
        "rng-rank0.safetensors",
        "rng-rank1.safetensors",
    }
    state = yaml.safe_load((checkpoint / "trainer_state.json").read_text())
    assert state["world_size"] == 2

    # One process on the same data and seed: each update holds the same samples, so the
    # losses and (pre-clipping) gradient norms agree up to float summation order.
    single = TrainConfig.model_validate({**settings, "output_dir": str(tmp_path / "single")})
    with one_thread():
        Trainer(single).train()
    two, one = read_rows(tmp_path / "ddp"), read_rows(tmp_path / "single")
    assert [r["step"] for r in two] == [r["step"] for r in one] == ["1", "2", "3", "4"]
    for a, b in zip(two, one):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-5)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-4)
        assert a["samples"] == b["samples"] and a["tokens"] == b["tokens"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_two_torchrun_agents_as_two_nodes_train_together(tmp_path: Path) -> None:
    """Two ``torchrun`` agents on this machine play two nodes (one process each) that meet
    through a c10d rendezvous on 127.0.0.1, as agents on two machines of a cluster would:
    each gets its own node rank, the run has two processes, and both end identical."""
    data = write_dataset(tmp_path / "data")
    settings = train_config(data, tmp_path / "nodes", max_steps=3, save_every=3, micro_batch_size=2)
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    script = tmp_path / "run.py"
    script.write_text(SCRIPT + NODE_REPORT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    rendezvous = [
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv_id",
        "chatnt-two-nodes",
    ]
    agents = [
        subprocess.Popen(
            [str(TORCHRUN), *rendezvous, str(script), str(config_path), str(tmp_path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for agent in agents:
            _, err = agent.communicate(timeout=300)
            assert agent.returncode == 0, err[-3000:]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    digests = [(tmp_path / f"weights-rank{r}.sha256").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    nodes = [yaml.safe_load((tmp_path / f"node-rank{r}.yaml").read_text()) for r in range(2)]
    assert sorted(n["GROUP_RANK"] for n in nodes) == ["0", "1"]  # two distinct nodes
    assert [n["WORLD_SIZE"] for n in nodes] == ["2", "2"]
    assert [n["LOCAL_RANK"] for n in nodes] == ["0", "0"]  # one process per node
    rows = read_rows(tmp_path / "nodes")
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    state = yaml.safe_load(
        (tmp_path / "nodes" / "checkpoint-000003" / "trainer_state.json").read_text()
    )
    assert state["world_size"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without GPUs")
def test_deepspeed_launch_without_a_gpu_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accelerate would silently run plain DDP instead: chatnt train says so and stops."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    settings = train_config(tmp_path / "data", tmp_path / "out")
    with pytest.raises(ChatNTError, match="GPU-only"):
        Trainer(TrainConfig.model_validate(settings))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_launch()  # FSDP runs on CPU
