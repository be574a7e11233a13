"""FSDP (``fully_shard``) training on CPU with gloo: two sharded processes compute what one
unsharded process computes, the checkpoint is the ordinary single-file one, and a run
killed with SIGKILL resumes exactly.

The assembly is the tiny one (char encoder, Perceiver, frozen 2-layer Llama) with LoRA
adapters on the decoder. One uninterrupted two-process FSDP run (a module fixture) serves
every test here, to keep the added test time small on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_distributed import TORCHRUN, read_rows
from training_helpers import one_thread, train_config, write_dataset

from chatnt_core.cli import main
from chatnt_core.errors import ChatNTError
from chatnt_core.training.checkpoint import load_model_from_checkpoint
from chatnt_core.training.config import TrainConfig
from chatnt_core.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not beside python")

STEPS = 8
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "ACCELERATE_USE_FSDP": "true",
}

# Each rank trains, then reports how its trainable parameters are held: sharded DTensors
# whose local pieces together make up the full parameter.
SCRIPT = """
import json, sys
from pathlib import Path
from torch.distributed.tensor import DTensor
from chatnt_core.training.config import load_train_config
from chatnt_core.training.trainer import Trainer

trainer = Trainer(load_train_config(sys.argv[1]))
trainer.train()
report = {"strategy": trainer.strategy, "params": {}}
for name, p in trainer.unwrapped_model.named_parameters():
    if p.requires_grad:
        local = p.to_local().numel() if isinstance(p, DTensor) else p.numel()
        report["params"][name] = [isinstance(p, DTensor), local, p.numel()]
rank = trainer.accelerator.process_index
(Path(sys.argv[2]) / f"report-rank{rank}.json").write_text(json.dumps(report))
"""


@dataclass
class Run:
    tmp: Path
    settings: dict[str, Any]
    config: Path

    def victim_config(self) -> Path:
        path = self.tmp / "victim.yaml"
        path.write_text(yaml.safe_dump({**self.settings, "output_dir": str(self.tmp / "victim")}))
        return path


def torchrun(*args: str) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", *args]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("fsdp")
    data = write_dataset(tmp / "data")
    # LoRA adapters put trainable and frozen weights in the same sharded decoder layers
    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    settings = train_config(
        data,
        tmp / "fsdp",
        max_steps=STEPS,
        save_every=2,
        keep_last=4,
        micro_batch_size=2,
        lora=lora,
    )
    config = tmp / "fsdp.yaml"
    config.write_text(yaml.safe_dump(settings))
    script = tmp / "run.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        torchrun(str(script), str(config), str(tmp)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Run(tmp, settings, config)


def test_parameters_are_sharded_over_the_two_processes(fsdp_run: Run) -> None:
    reports = [json.loads((fsdp_run.tmp / f"report-rank{r}.json").read_text()) for r in range(2)]
    assert [r["strategy"] for r in reports] == ["fsdp", "fsdp"]
    params = reports[0]["params"]
    assert params and all(sharded for sharded, _, _ in params.values())
    for name, (_, local0, full) in params.items():
        local1 = reports[1]["params"][name][1]
        assert local0 + local1 == full, name  # the two shards hold each element once
        if full > 1:
            assert local0 < full, name  # and neither holds the whole parameter


def test_two_fsdp_processes_match_one_process(fsdp_run: Run, tmp_path: Path) -> None:
    """Same samples per update: losses agree up to float32 summation order (the sharded
    reduce-scatter sums in another order than one process). Measured: loss diff 2.0e-7,
    gradient norms 1e-7 relative, final weights 1.8e-6; the tolerances leave 5-50x margin."""
    single = TrainConfig.model_validate({**fsdp_run.settings, "output_dir": str(tmp_path)})
    with one_thread():
        Trainer(single).train()
    two, one = read_rows(fsdp_run.tmp / "fsdp"), read_rows(tmp_path)
    assert [r["step"] for r in two] == [r["step"] for r in one] == [str(s + 1) for s in range(8)]
    for a, b in zip(two, one):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), abs=1e-5)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-4)
        assert a["samples"] == b["samples"] and a["tokens"] == b["tokens"]
    name = f"checkpoint-{STEPS:06d}/model.safetensors"
    sharded, plain = load_file(fsdp_run.tmp / "fsdp" / name), load_file(tmp_path / name)
    assert sharded.keys() == plain.keys()
    for key, tensor in plain.items():
        torch.testing.assert_close(sharded[key], tensor, rtol=0, atol=1e-5)


def test_fsdp_checkpoint_is_one_file_and_answers_in_one_process(
    fsdp_run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = fsdp_run.tmp / "fsdp" / f"checkpoint-{STEPS:06d}"
    assert not list(checkpoint.glob("model*rank*"))  # weights gathered, not per rank
    assert {p.name for p in checkpoint.glob("optimizer-rank*.json")} == {
        "optimizer-rank0.json",
        "optimizer-rank1.json",
    }
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["strategy"] == "fsdp" and state["world_size"] == 2
    with one_thread():
        model = load_model_from_checkpoint(checkpoint)
        weights = load_file(checkpoint / "model.safetensors")
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in weights.items())
        question = "Is there a TATA box in @seq.fna?"
        with pytest.raises(SystemExit) as exit_info:
            main(["ask", str(checkpoint), question, "--seq", "seq.fna=ACGTATAAAGCG", "--json"])
    assert int(exit_info.value.code or 0) == 0
    answer = json.loads(capsys.readouterr().out)
    expected = model.generate([question], [{"seq.fna": "ACGTATAAAGCG"}], max_new_tokens=128)[0]
    assert answer["text"] == expected


def test_fsdp_run_killed_with_sigkill_resumes_exactly(fsdp_run: Run) -> None:
    """Kill the whole job (agent and both workers) after a checkpoint, resume with two
    processes: every later loss, gradient norm and the final weights are bitwise those of
    the uninterrupted run."""
    config = fsdp_run.victim_config()
    victim = subprocess.Popen(
        torchrun("-m", "chatnt_core.cli", "train", str(config)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    latest = fsdp_run.tmp / "victim" / "latest"
    try:
        deadline = time.monotonic() + 300
        while not latest.is_file() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(victim.pid, signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
    killed_at = int(latest.read_text().strip().split("-")[1])
    assert 2 <= killed_at < STEPS
    resumed = subprocess.run(
        torchrun("-m", "chatnt_core.cli", "train", str(config), "--resume", str(latest.parent)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = read_rows(fsdp_run.tmp / "fsdp"), read_rows(fsdp_run.tmp / "victim")
    assert [r["step"] for r in got] == [str(s + 1) for s in range(STEPS)]
    assert [r["loss"] for r in got] == [r["loss"] for r in expected]  # exact, as text
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in expected]
    final = f"checkpoint-{STEPS:06d}/model.safetensors"
    reference = (fsdp_run.tmp / "fsdp" / final).read_bytes()
    assert (fsdp_run.tmp / "victim" / final).read_bytes() == reference


def test_fsdp_checkpoint_refuses_a_replicated_resume(fsdp_run: Run) -> None:
    settings = {**fsdp_run.settings, "max_steps": STEPS + 1}
    with (
        one_thread(),
        pytest.raises(ChatNTError, match="saved by a fsdp run and this is a replicated"),
    ):
        Trainer(TrainConfig.model_validate(settings), resume=fsdp_run.tmp / "fsdp")
