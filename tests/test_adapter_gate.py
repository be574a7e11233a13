"""Gated LoRA: adapters act only from a row's first sequence placeholder on."""

from __future__ import annotations

import pytest
import torch
from training_helpers import lora_tiny_model

from chatnt_core import ChatNTModel, Example, SequenceInput, Turn
from chatnt_core.adapter_gate import gate_of, placeholder_gate, row_gate
from chatnt_core.inference.generation import GenerationConfig, generate_ids
from chatnt_core.inference.scoring import score_candidates, score_candidates_naive

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"
TAGGED = "Is there a TATA box in @p.fna?"
PLAIN = "What is a promoter?"


def _model(active_from: str | None) -> ChatNTModel:
    model: ChatNTModel = lora_tiny_model(active_from)
    return model


def _answer(model: ChatNTModel, question: str, use_cache: bool = True) -> list[int]:
    sequences = {"p.fna": DNA} if "@" in question else {}
    batch = model.prompt_batch([question], [sequences])
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True, use_cache=use_cache)
    return generate_ids(model, batch, config)[0]


def test_gates_mark_positions_from_the_first_placeholder() -> None:
    ids = torch.tensor([[5, 9, 7, 9, 1], [5, 6, 7, 8, 1]])
    assert placeholder_gate(ids, 9).tolist() == [[0, 1, 1, 1, 1], [0, 0, 0, 0, 0]]
    assert row_gate(ids, 9).tolist() == [[1.0], [0.0]]


def test_a_conversation_without_sequences_gets_the_bare_decoder() -> None:
    bare, gated, everywhere = _model(None), _model("first_sequence"), _model("start")
    assert gate_of(gated.decoder) is not None and gate_of(everywhere.decoder) is None
    assert _answer(gated, PLAIN) == _answer(bare, PLAIN)
    assert _answer(everywhere, PLAIN) != _answer(bare, PLAIN)  # the adapters do act
    # with a sequence the gated adapters act, the same way with and without the KV cache
    assert _answer(gated, TAGGED) != _answer(bare, TAGGED)
    assert _answer(gated, TAGGED) == _answer(gated, TAGGED, use_cache=False)


def test_candidate_scores_agree_between_cached_and_full_passes() -> None:
    """Scoring runs answers as cached steps (row gate) or inside full rows (position gate)."""
    model, bare = _model("first_sequence"), _model(None)
    prompts = [
        Example([Turn(TAGGED)], {"p.fna": SequenceInput("p.fna", DNA)}),
        Example([Turn(PLAIN)], {}),
    ]
    candidates = [["yes", "no site here"], ["a region", "DNA"]]
    fast = score_candidates(model, prompts, candidates)
    full = score_candidates_naive(model, prompts, candidates)
    torch.testing.assert_close(fast.token_log_probs, full.token_log_probs, atol=1e-4, rtol=1e-4)
    plain = score_candidates(bare, prompts, candidates).token_log_probs
    torch.testing.assert_close(fast.token_log_probs[2:], plain[2:])  # no sequence: bare
    assert not torch.allclose(fast.token_log_probs[:2], plain[:2])


def test_prefix_cache_stays_exact_while_gated_adapters_train() -> None:
    examples = [
        Example([Turn(TAGGED, "yes")], {"p.fna": SequenceInput("p.fna", DNA)}),
        Example(
            [Turn("A longer question about @p.fna", "no")], {"p.fna": SequenceInput("p.fna", DNA)}
        ),
    ]
    model = _model("first_sequence").train()

    def loss_and_grads(use_cache: bool) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        model.use_prefix_cache = use_cache
        out = model(model.tokenize(examples))
        assert out.loss is not None
        out.loss.backward()
        return float(out.loss), [
            p.grad.clone()
            for n, p in model.named_parameters()
            if "lora_" in n and p.grad is not None
        ]

    plain_loss, plain_grads = loss_and_grads(False)
    cached_loss, cached_grads = loss_and_grads(True)
    assert model.prefix_cache._entry is not None  # cached although adapters train
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert len(cached_grads) == len(plain_grads) > 0
    assert any(g.abs().sum() > 0 for g in plain_grads)
    for cached, plain in zip(cached_grads, plain_grads):
        torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-4)
