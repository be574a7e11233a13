"""Inference in bfloat16: only the decoder's weights change, every entry point takes the
option, and a wrong name is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_cli_ask import CTCF_QUESTION, SEQ, run_cli
from training_helpers import lora_tiny_model

from chatnt_core.api import ChatNT
from chatnt_core.errors import ConfigError
from chatnt_core.inference.precision import (
    Precision,
    as_precision,
    native_bfloat16,
    precision_of,
    set_precision,
)
from chatnt_core.presets import registry_root


def test_bf16_casts_the_decoder_weights_only() -> None:
    model = set_precision(lora_tiny_model("first_sequence"), "bf16")
    decoder_dtypes = {p.dtype for p in model.decoder.parameters()}
    assert decoder_dtypes == {torch.bfloat16}  # LoRA adapters included
    assert {p.dtype for p in model.encoders.parameters()} == {torch.float32}
    assert {p.dtype for p in model.projections.parameters()} == {torch.float32}
    buffers = {name: b.dtype for name, b in model.decoder.named_buffers() if "inv_freq" in name}
    assert buffers and set(buffers.values()) == {torch.float32}  # rotary angles stay exact
    set_precision(model, "fp32")
    assert {p.dtype for p in model.decoder.parameters()} == {torch.float32}


def test_a_bf16_chatnt_answers_and_scores() -> None:
    bot = ChatNT(set_precision(lora_tiny_model("first_sequence"), "bf16"))
    answer = bot.ask(CTCF_QUESTION, {"p.fna": SEQ}, max_new_tokens=6)
    assert answer.task == "demo-ctcf-site"
    assert answer.probability is not None and 0.0 < answer.probability < 1.0
    chat = bot.chat(max_new_tokens=4)
    assert isinstance(chat.ask(CTCF_QUESTION, {"p.fna": SEQ}).text, str)


def test_unknown_precision_is_refused_before_loading() -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp16': use one of fp32, bf16"):
        as_precision("fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        ChatNT.from_pretrained("/no/such/checkpoint", precision="half")
    assert isinstance(native_bfloat16(), bool)


def test_cli_takes_the_precision(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["ask", "tiny-random", CTCF_QUESTION, "--seq", f"p.fna={SEQ}", "--max-new-tokens", "2"]
    code, out, _ = run_cli([*base, "--precision", "bf16"], capsys)
    assert code == 0 and "task: demo-ctcf-site" in out
    code, _, err = run_cli([*base, "--precision", "fp16"], capsys)
    assert code == 2 and "fp16" in err  # the option parser lists the choices


def test_without_a_precision_the_config_dtype_stays(tmp_path: Path) -> None:
    """A decoder the config loads in bfloat16 is not widened to float32 by default; an
    explicit precision overrides it."""
    config = yaml.safe_load((registry_root() / "models" / "tiny-random.yaml").read_text())
    config["decoder"]["params"]["dtype"] = "bfloat16"
    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(config))
    assert precision_of(ChatNT.load(path).model) is Precision.BF16
    assert precision_of(ChatNT.load(path, precision="fp32").model) is Precision.FP32
    assert precision_of(ChatNT.load("tiny-random").model) is Precision.FP32
