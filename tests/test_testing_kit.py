"""The conformance kit catches what it promises to catch, and passes what is right.

Each fault below is one small, deliberate mistake a plugin author could make; the test
asserts that exactly the matching check fails and that ``raise_for_failures`` names it.
The same toy components without the fault pass every check.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from tiny_models import build_tiny_decoder, tiny_decoder_params
from torch import nn

from chatnt_core import hookimpl
from chatnt_core.hookspecs import Register
from chatnt_core.interfaces import (
    DecoderOutput,
    Encoder,
    EncoderOutput,
    EncoderTokens,
    Projection,
)
from chatnt_core.modality import Modality
from chatnt_core.plugins import BuildContext, ComponentKind, PluginRegistry, load_registry
from chatnt_core.testing import (
    DECODER_CHECKS,
    ENCODER_CHECKS,
    PARAMS_CHECKS,
    PROJECTION_CHECKS,
    ConformanceReport,
    check_component,
    check_decoder,
    check_encoder,
    check_params_model,
    check_projection,
)
from chatnt_hf_decoders import HFCausalLM, HFCausalLMParams

# ---- toy components: right by default, one fault each when asked -------------------------

LETTERS = {"A": 1, "C": 2, "G": 3, "T": 4}  # 0 = padding, 5 = any other letter


class ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = 8
    seed: int = 0


class LaxParams(BaseModel):
    """No ``extra="forbid"``: a misspelt key would be silently ignored."""

    width: int = 8


class ToyEncoder(Encoder):
    """One token per letter; each real row gets its own sequence mean added (context)."""

    def __init__(self, width: int = 8, seed: int = 0, fault: str | None = None) -> None:
        super().__init__()
        self.modality = Modality.DNA
        self.embed_dim = width
        self.max_tokens = 64
        self.fault = fault
        generator = torch.Generator().manual_seed(seed)
        self.embedding = nn.Parameter(torch.randn(6, width, generator=generator))
        if fault == "weights_outside_state_dict":
            self.scale = torch.randn(width, generator=generator)  # a plain attribute
        else:
            self.register_buffer("scale", torch.ones(width))

    def tokenize(self, sequences: Sequence[str]) -> EncoderTokens:
        rows = [[LETTERS.get(ch, 5) for ch in s.upper()] for s in sequences]
        width = max(len(row) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        mask = ids != 0
        if self.fault == "left_padded":
            ids, mask = ids.flip(1), mask.flip(1)
        return EncoderTokens(ids, mask)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
        x = self.embedding[input_ids] * self.scale  # (B, N, D)
        weights = mask.float() if self.fault != "ignore_mask" else torch.ones_like(mask.float())
        mean = (x * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)  # (B, D)
        x = torch.tanh(x + mean[:, None])
        if self.fault == "dropout_in_eval":
            x = F.dropout(x, p=0.5, training=True)
        if self.fault == "wrong_width":
            x = x[..., :-1]
        if self.fault == "nan":
            x = x / 0.0
        return EncoderOutput(x, mask)


class ToyProjection(Projection):
    """Masked mean of the sequence (and of the question), plus K learned offsets."""

    def __init__(self, input_dim: int = 8, dim: int = 16, k: int = 4, fault: str | None = None):
        super().__init__()
        self.num_latents, self.output_dim, self.fault = k, dim, fault
        self.uses_question = True
        self.linear = nn.Linear(input_dim, dim)
        self.latents = nn.Parameter(torch.randn(k, dim))
        self.unused = nn.Linear(2, 2) if fault == "unused_parameter" else None

    def forward(
        self,
        seq_embeddings: torch.Tensor,
        seq_mask: torch.Tensor,
        question_embeddings: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert question_embeddings is not None and question_mask is not None
        seq_weights = seq_mask.float()
        if self.fault == "ignore_seq_mask":
            seq_weights = torch.ones_like(seq_weights)
        q_weights = question_mask.float()
        if self.fault == "ignore_question_mask":
            q_weights = torch.ones_like(q_weights)
        seq = torch.where(seq_weights[..., None] > 0, seq_embeddings, 0.0)
        pooled = self.linear(seq.sum(1) / seq_weights.sum(1, keepdim=True))  # (B, D)
        question = torch.where(q_weights[..., None] > 0, question_embeddings, 0.0)
        asked = question.sum(1) / q_weights.sum(1, keepdim=True).clamp(min=1)  # (B, D)
        out = torch.tanh(pooled[:, None] + asked[:, None] + self.latents[None])  # (B, K, D)
        if self.fault == "k_minus_one":
            out = out[:, :-1]
        return out


class NoCacheDecoder(HFCausalLM):
    """Runs each incremental step without its past: the cache path differs."""

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> DecoderOutput:
        if past_key_values is not None:
            attention_mask = attention_mask[:, -inputs_embeds.shape[1] :]
        return super().forward(inputs_embeds, attention_mask, position_ids, None, use_cache)


class IgnoresMaskDecoder(HFCausalLM):
    """Attends to every position, padding included: left padding leaks into each row."""

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> DecoderOutput:
        everything = torch.ones_like(attention_mask)
        return super().forward(inputs_embeds, everything, position_ids, past_key_values, use_cache)


class DropsNothingDecoder(HFCausalLM):
    """Says it dropped the cache's last positions but keeps them."""

    def drop_cache_tail(self, past_key_values: Any, tokens: int) -> bool:
        return True


def tiny_decoder(cls: type[HFCausalLM] = HFCausalLM) -> HFCausalLM:
    return cls.from_params(HFCausalLMParams.model_validate(tiny_decoder_params()))


def failing(report: ConformanceReport) -> list[str]:
    return [result.name for result in report.failures]


# ---- the good toys pass -------------------------------------------------------------------


def test_good_encoder_passes_every_check() -> None:
    report = check_encoder(ToyEncoder(), rebuild=lambda: ToyEncoder(seed=1))
    report.raise_for_failures()
    assert [r.name for r in report] == list(ENCODER_CHECKS)
    assert report.ok and not report.skipped


def test_good_projection_passes_every_check() -> None:
    report = check_projection(ToyProjection(), input_dim=8, rebuild=ToyProjection)
    report.raise_for_failures()
    assert [r.name for r in report] == list(PROJECTION_CHECKS)
    assert report["question_padding_invariance"].status == "passed"
    assert report["question_embedding"].status == "skipped"  # question_source is "decoder"


def test_good_decoder_passes_every_check() -> None:
    report = check_decoder(build_tiny_decoder(), rebuild=lambda: build_tiny_decoder(seed=1))
    report.raise_for_failures()
    assert [r.name for r in report] == list(DECODER_CHECKS)


def test_good_params_model_passes_every_check() -> None:
    report = check_params_model(ToyParams, {"width": 4})
    report.raise_for_failures()
    assert [r.name for r in report] == list(PARAMS_CHECKS)


# ---- each fault fails its check ---------------------------------------------------------

ENCODER_FAULTS = [
    ("ignore_mask", "padding_invariance"),
    ("wrong_width", "forward_output"),
    ("dropout_in_eval", "determinism"),
    ("left_padded", "padding_mask"),
    ("nan", "finite"),
]


@pytest.mark.parametrize(("fault", "check"), ENCODER_FAULTS)
def test_encoder_fault_fails_its_check(fault: str, check: str) -> None:
    report = check_encoder(ToyEncoder(fault=fault))
    assert check in failing(report), str(report)
    with pytest.raises(AssertionError, match=rf"- {check}: "):
        report.raise_for_failures()


def test_weights_outside_the_state_dict_fail_the_round_trip() -> None:
    encoder = ToyEncoder(fault="weights_outside_state_dict")
    report = check_encoder(
        encoder, rebuild=lambda: ToyEncoder(seed=1, fault="weights_outside_state_dict")
    )
    assert failing(report) == ["save_load_roundtrip"], str(report)


def test_sequences_of_one_length_cannot_test_padding() -> None:
    report = check_encoder(ToyEncoder(), ["ACGT", "TTTT"])
    assert {"padding_mask", "padding_invariance"} <= set(failing(report))
    assert "different token lengths" in report["padding_invariance"].reason


PROJECTION_FAULTS = [
    ("k_minus_one", "output_shape"),
    ("ignore_seq_mask", "sequence_padding_invariance"),
    ("ignore_question_mask", "question_padding_invariance"),
    ("unused_parameter", "gradient"),
]


@pytest.mark.parametrize(("fault", "check"), PROJECTION_FAULTS)
def test_projection_fault_fails_its_check(fault: str, check: str) -> None:
    report = check_projection(ToyProjection(fault=fault), input_dim=8)
    assert check in failing(report), str(report)
    with pytest.raises(AssertionError, match=rf"- {check}: "):
        report.raise_for_failures()


@pytest.mark.parametrize(
    ("cls", "check"),
    [
        (NoCacheDecoder, ["kv_cache", "kv_cache_with_guesses", "kv_cache_tail_dropped"]),
        (IgnoresMaskDecoder, ["kv_cache_with_guesses", "left_padding_invariance"]),
        (DropsNothingDecoder, ["kv_cache_tail_dropped"]),
    ],
)
def test_decoder_fault_fails_its_check(cls: type[HFCausalLM], check: list[str]) -> None:
    report = check_decoder(tiny_decoder(cls))
    assert failing(report) == check, str(report)
    with pytest.raises(AssertionError, match=rf"- {check[0]}: "):
        report.raise_for_failures()


def test_params_model_without_extra_forbid_fails() -> None:
    report = check_params_model(LaxParams, {"width": 3})
    assert failing(report) == ["params_extra_forbid"]
    with pytest.raises(AssertionError, match='extra="forbid"'):
        report.raise_for_failures()


def test_params_example_that_does_not_validate_fails() -> None:
    report = check_params_model(ToyParams, {"width": "wide"})
    assert "params_example_validates" in failing(report)


# ---- the report and the runner ------------------------------------------------------------


def test_crash_inside_a_component_is_a_failure_with_its_type() -> None:
    class Crashing(ToyEncoder):
        def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> EncoderOutput:
            raise RuntimeError("out of cheese\nsecond line")

    report = check_encoder(Crashing())
    assert report["forward_output"].reason == "RuntimeError: out of cheese"
    assert not report.ok


def test_skip_records_named_checks_and_refuses_unknown_names() -> None:
    report = check_encoder(ToyEncoder(fault="dropout_in_eval"), skip=["determinism"])
    assert report["determinism"].status == "skipped"
    with pytest.raises(ValueError, match="unknown check"):
        check_encoder(ToyEncoder(), skip=["determinsm"])


def test_report_lists_every_check_in_its_text() -> None:
    report = check_encoder(ToyEncoder(fault="wrong_width"))
    text = str(report)
    assert text.splitlines()[0].startswith("encoder ToyEncoder: ")
    assert "[failed] forward_output: embeddings must be float" in text
    assert "[passed] tokenize_output" in text


def test_checking_leaves_train_mode_and_gradients_as_found() -> None:
    projection = ToyProjection().train()
    projection.linear.weight.grad = torch.ones_like(projection.linear.weight)
    check_projection(projection, input_dim=8).raise_for_failures()
    assert projection.training
    assert torch.equal(projection.linear.weight.grad, torch.ones_like(projection.linear.weight))
    assert projection.latents.grad is None


# ---- check_component: through a registry and the factory ------------------------------


def toy_plugin(factory: Callable[[ToyParams, BuildContext], Any]) -> types.SimpleNamespace:
    @hookimpl
    def register_encoders(register: Register) -> None:
        register("toy-encoder", factory, ToyParams)

    return types.SimpleNamespace(register_encoders=register_encoders)


def toy_registry(factory: Callable[[ToyParams, BuildContext], Any]) -> PluginRegistry:
    return load_registry(extra_plugins=[("toy", toy_plugin(factory))])


def test_check_component_builds_through_the_factory() -> None:
    registry = toy_registry(lambda p, c: ToyEncoder(p.width, p.seed))
    report = check_component(
        (ComponentKind.ENCODER, "toy-encoder"),
        {"width": 6},
        BuildContext(modality=Modality.DNA),
        registry=registry,
    )
    report.raise_for_failures()
    assert report.subject == "encoder 'toy-encoder' (plugin toy unknown)"
    names = [r.name for r in report]
    assert names == [*PARAMS_CHECKS, "build", "matches_context", *ENCODER_CHECKS]


def test_check_component_reports_a_factory_returning_the_wrong_type() -> None:
    registry = toy_registry(lambda p, c: nn.Linear(2, 2))
    report = check_component(("encoder", "toy-encoder"), {}, BuildContext(), registry=registry)
    assert failing(report) == ["build"]
    assert "returned a Linear, which is not an instance of Encoder" in report["build"].reason


def test_check_component_reports_the_wrong_modality() -> None:
    registry = toy_registry(lambda p, c: ToyEncoder(p.width))
    report = check_component(
        ("encoder", "toy-encoder"), {}, BuildContext(modality=Modality.RNA), registry=registry
    )
    assert failing(report) == ["matches_context"]


def test_check_component_reports_params_that_do_not_validate() -> None:
    registry = toy_registry(lambda p, c: ToyEncoder(p.width))
    report = check_component(("encoder", "toy-encoder"), {"widht": 3}, registry=registry)
    assert {"params_example_validates", "build"} <= set(failing(report))
    assert "widht" in report["build"].reason
