"""The decoding speed-ups change how the numbers are computed, never which numbers:
rows-first linear layers, the KV cache with room reserved, LoRA computed directly while
decoding."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny_decoder
from torch import nn
from training_helpers import lora_tiny_model
from transformers import DynamicCache

from chatnt_core import ChatNTModel
from chatnt_core.adapter_gate import adapters_gated
from chatnt_core.inference.adapter_decoding import lean_adapters, uniform_gate
from chatnt_core.inference.generation import GenerationConfig, generate_ids, select_cache_rows
from chatnt_core.inference.rows_first import linear, rows_first
from chatnt_hf_decoders.kv_cache import ReservedLayer, reserve

DNA = "TATAAAAGGCGCGCTTAGCATCGATCGATCGGGCTA"

# -- rows-first linear layers ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 16), (2, 16), (3, 5, 16), (300, 16)])
def test_rows_first_linear_equals_nn_linear(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 40)
    x = torch.randn(*shape)
    out = linear(x, layer.weight, layer.bias)
    assert out.shape == (*shape[:-1], 40) and out.is_contiguous()
    torch.testing.assert_close(out, layer(x), atol=1e-6, rtol=1e-5)


def test_rows_first_is_scoped_to_the_block_and_to_inference() -> None:
    decoder = build_tiny_decoder()
    layers = [m for m in decoder.model.modules() if type(m) is nn.Linear]
    assert layers
    with torch.no_grad(), rows_first(decoder.model, 1):  # one row: a matrix-vector product
        assert not any("forward" in m.__dict__ for m in layers)
    with torch.no_grad(), rows_first(decoder.model, 8):
        assert all("forward" in m.__dict__ for m in layers)
    assert not any("forward" in m.__dict__ for m in layers)  # generate() keeps stock layers
    with rows_first(decoder.model, 8):  # autograd on (training): nothing is swapped
        assert not any("forward" in m.__dict__ for m in layers)


def test_decoder_logits_equal_the_stock_model() -> None:
    decoder = build_tiny_decoder()
    torch.manual_seed(1)
    embeds = torch.randn(3, 7, decoder.hidden_size)
    mask = torch.ones(3, 7, dtype=torch.bool)
    positions = torch.arange(7).expand(3, 7)
    with torch.no_grad():
        ours = decoder(embeds, mask, positions).logits
        stock = decoder.model(inputs_embeds=embeds, attention_mask=mask.long()).logits
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


# -- KV cache with room reserved -------------------------------------------------------


def _steps(decoder: nn.Module, past: DynamicCache, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Logits of feeding ``tokens`` (B, S) one column at a time after ``past``."""
    batch, start = tokens.shape[0], past.get_seq_length()
    logits = []
    for step in range(tokens.shape[1]):
        length = start + step + 1
        out = decoder(
            decoder.embed_tokens(tokens[:, step : step + 1]),
            torch.ones(batch, length, dtype=torch.bool),
            torch.full((batch, 1), length - 1),
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        logits.append(out.logits[:, -1])
    return logits


def _prompt_cache(decoder: nn.Module) -> DynamicCache:
    torch.manual_seed(2)
    embeds = torch.randn(2, 5, decoder.hidden_size)
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = decoder(embeds, mask, torch.arange(5).expand(2, 5), use_cache=True)
    return out.past_key_values


@torch.no_grad()
def test_reserved_cache_decodes_like_the_dynamic_one_and_leaves_it_alone() -> None:
    decoder = build_tiny_decoder()
    tokens = torch.randint(5, 200, (2, 6))
    prompt = _prompt_cache(decoder)
    keys = [layer.keys.clone() for layer in prompt.layers]
    reserved = decoder.reserve_cache(prompt, 4)  # 4 positions reserved, 6 fed: grows past
    assert all(isinstance(layer, ReservedLayer) for layer in reserved.layers)
    assert reserved.get_seq_length() == 5
    fast = _steps(decoder, reserved, tokens)
    assert reserved.get_seq_length() == 11
    assert prompt.get_seq_length() == 5  # the prompt's own cache did not grow
    for layer, before in zip(prompt.layers, keys):
        assert torch.equal(layer.keys, before)
    plain = _steps(decoder, _prompt_cache(decoder), tokens)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_rows_selected_from_a_reserved_cache_are_its_own() -> None:
    decoder = build_tiny_decoder()
    reserved = reserve(_prompt_cache(decoder), 3)
    first = reserved.layers[0].keys.clone()
    picked = select_cache_rows(reserved, torch.tensor([1]))
    _steps(decoder, picked, torch.randint(5, 200, (1, 2)))
    assert picked.get_seq_length() == 7 and reserved.get_seq_length() == 5
    assert torch.equal(reserved.layers[0].keys, first)
    torch.testing.assert_close(picked.layers[0].keys[:, :, :5], first[1:])


@torch.no_grad()
def test_drop_tail_shortens_plain_and_reserved_caches_only_when_it_can() -> None:
    decoder = build_tiny_decoder()
    for cache in (_prompt_cache(decoder), reserve(_prompt_cache(decoder), 3)):
        assert decoder.drop_cache_tail(cache, 2)
        assert cache.get_seq_length() == 3
        assert not decoder.drop_cache_tail(cache, 3)  # nothing would be left
        assert not decoder.drop_cache_tail(cache, 0)
        assert cache.get_seq_length() == 3
    assert not decoder.drop_cache_tail(None, 1)  # no transformers cache: keep holes


# -- LoRA computed directly while decoding -------------------------------------------------


def _lora_model(active_from: str = "first_sequence") -> ChatNTModel:
    model: ChatNTModel = lora_tiny_model(active_from)
    return model


@pytest.mark.parametrize("gate_value", [1.0, 0.0])
@torch.no_grad()
def test_lean_adapters_compute_what_the_gated_ones_do(gate_value: float) -> None:
    model = _lora_model()
    decoder = model.decoder
    torch.manual_seed(3)
    embeds = torch.randn(2, 1, decoder.hidden_size)
    mask = torch.ones(2, 6, dtype=torch.bool)  # 5 prompt positions + this one
    past = _prompt_cache(decoder)
    positions = torch.full((2, 1), 5)
    base = [p.clone() for n, p in decoder.named_parameters() if "base_layer" in n]
    gate = torch.full((2, 1), gate_value)
    with adapters_gated(decoder, gate):
        gated = decoder(embeds, mask, positions, select_cache_rows(past, torch.arange(2)), True)
    with lean_adapters(decoder, uniform_gate(decoder, gate)) as lean:
        assert lean
        fast = decoder(embeds, mask, positions, select_cache_rows(past, torch.arange(2)), True)
    torch.testing.assert_close(fast.logits, gated.logits, atol=1e-5, rtol=1e-5)
    after = [p for n, p in decoder.named_parameters() if "base_layer" in n]
    assert all(torch.equal(a, b) for a, b in zip(base, after))  # base weights untouched
    assert not any("forward" in m.__dict__ for m in decoder.modules() if hasattr(m, "lora_A"))


def test_mixed_gates_keep_peft() -> None:
    model = _lora_model()
    gate = torch.tensor([[1.0], [0.0]])
    assert uniform_gate(model.decoder, gate) is None
    with lean_adapters(model.decoder, None) as lean:
        assert not lean
    assert uniform_gate(_lora_model("start").decoder, gate) == 1.0  # ungated: always on


def test_generation_with_lean_adapters_matches_full_recompute() -> None:
    """A batch of two rows with sequences (lean adapters) and a mixed batch (peft): each
    gives the tokens of the released code's way, the whole prompt again per token."""
    model = _lora_model()
    questions = ["Is there a TATA box in @p.fna?", "What does @p.fna contain?", "Hello there"]
    sequences = [{"p.fna": DNA}, {"p.fna": DNA[::-1]}, {}]
    for rows in (slice(0, 2), slice(1, 3)):
        batch = model.prompt_batch(questions[rows], sequences[rows])
        config = GenerationConfig(max_new_tokens=10, ignore_eos=True)
        cached = generate_ids(model, batch, config)
        full = generate_ids(model, batch, GenerationConfig(10, ignore_eos=True, use_cache=False))
        assert cached == full


def test_rows_first_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = build_tiny_decoder()
    monkeypatch.setenv("CHATNT_ROWS_FIRST", "0")
    with torch.no_grad(), rows_first(decoder.model, 8):
        assert not any("forward" in m.__dict__ for m in decoder.model.modules())
    layer, x = nn.Linear(16, 40), torch.randn(8, 16)
    assert torch.equal(
        linear(x, layer.weight, layer.bias), nn.functional.linear(x, layer.weight, layer.bias)
    )
