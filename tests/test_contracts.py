"""Run-time contracts: a plugin that breaks its interface gets one line naming it.

The fake plugin below registers an encoder (and a projection) with one deliberate fault
each, chosen by a param: what a plugin author could get wrong and ``config validate``
cannot see. Each must surface as a ContractError naming the component, its plugin and what
was expected, never as a traceback from deep inside the projection or a silent answer.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from tiny_models import build_tiny_encoder

from chatnt_core import ChatNTModel, hookimpl
from chatnt_core.config import parse_config, read_yaml
from chatnt_core.contracts import ContractError
from chatnt_core.interfaces import Encoder, EncoderOutput, EncoderTokens
from chatnt_core.plugins import load_registry
from chatnt_core.presets import preset_path

DNA = "ACGTTGCAACGGATTACA"


class FaultParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fault: str = "none"


class FaultyEncoder(Encoder):
    """A working char encoder whose ``forward`` output is broken in one chosen way."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.inner = build_tiny_encoder("dna")
        self.modality, self.embed_dim = self.inner.modality, self.inner.embed_dim
        self.max_tokens = self.inner.max_tokens
        self.fault = fault

    def tokenize(self, sequences: Sequence[str]) -> EncoderTokens:
        return self.inner.tokenize(sequences)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> Any:
        out = self.inner(input_ids, mask)
        e, m = out.embeddings, out.mask  # (B, N, D), (B, N)
        broken: dict[str, Any] = {
            "none": out,
            "pooled": EncoderOutput(e.mean(dim=1), m),
            "transposed": EncoderOutput(e.transpose(1, 2), m),
            "wide": EncoderOutput(torch.cat([e, e[..., :1]], dim=-1), m),
            "float_mask": EncoderOutput(e, m.float()),
            "int64_mask": EncoderOutput(e, m.long()),
            "bare_tensor": e,
            "nan": EncoderOutput(e * float("nan"), m),
        }
        return broken[self.fault]


FAULTS = {
    "pooled": "expected (B, N, D_enc)",
    "transposed": "expected (1, N, 32)",
    "wide": "expected (1, N, 32)",
    "float_mask": "mask of dtype torch.float32, expected torch.bool",
    "int64_mask": "mask of dtype torch.int64, expected torch.bool",
    "bare_tensor": "encode() returned Tensor, expected EncoderOutput",
    "nan": "embeddings hold NaN or infinite values",
}


def _plugin() -> types.SimpleNamespace:
    @hookimpl
    def register_encoders(register: Any) -> None:
        register("faulty-encoder", lambda params, context: FaultyEncoder(params.fault), FaultParams)

    return types.SimpleNamespace(register_encoders=register_encoders)


def _model(fault: str) -> ChatNTModel:
    data = read_yaml(preset_path("tiny-random"))
    data["encoders"]["dna"]["name"] = "faulty-encoder"
    data["encoders"]["dna"]["params"] = {"fault": fault}
    registry = load_registry(extra_plugins=[("faulty-plugin", _plugin())])
    torch.manual_seed(0)
    return ChatNTModel.from_config(parse_config(data), registry).eval()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_broken_encoder_output_is_one_line_naming_the_plugin(fault: str) -> None:
    model = _model(fault)
    with pytest.raises(ContractError) as caught:
        model.generate(["Is @a.fna bound?"], [{"a.fna": DNA}], max_new_tokens=2)
    message = str(caught.value)
    assert "encoders.dna 'faulty-encoder' (plugin faulty-plugin)" in message
    assert FAULTS[fault] in message and "\n" not in message


def test_a_conforming_plugin_runs_and_a_broken_projection_is_named() -> None:
    model = _model("none")
    assert model.generate(["Is @a.fna bound?"], [{"a.fna": DNA}], max_new_tokens=2)
    projection = model.projection(model.modalities[0])
    original = projection.forward

    def nan_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        return original(*args, **kwargs) * float("nan")

    projection.forward = nan_forward  # type: ignore[method-assign]
    with pytest.raises(ContractError, match="encoders.dna.projection 'english-aware-perceiver'"):
        model.generate(["Is @a.fna bound?"], [{"a.fna": DNA}], max_new_tokens=2)
