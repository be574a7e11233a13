"""The ``hf-causal-lm`` decoder plugin and its byte tokenizer, on tiny local models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from tiny_models import TINY_MAX_POSITIONS, build_tiny_decoder, save_tiny_llama, tiny_llama_config
from tokenizers import pre_tokenizers
from training_helpers import tiny_model
from transformers import AutoTokenizer, DynamicCache

from chatnt_core import ChatNTModel
from chatnt_core.config import parse_config
from chatnt_core.errors import ConfigError
from chatnt_core.interfaces import Decoder
from chatnt_core.plugins import BuildContext, ComponentKind, get_registry
from chatnt_hf_decoders import HFCausalLM, HFCausalLMParams, build_byte_tokenizer
from chatnt_hf_decoders.byte_tokenizer import BYTE_OFFSET, byte_symbols

CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def build(params: dict[str, Any]) -> Decoder:
    entry = get_registry().get(ComponentKind.DECODER, "hf-causal-lm")
    decoder: Decoder = entry.build(entry.params_model.model_validate(params), BuildContext())
    return decoder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def decoder(llama_dir: Path) -> Decoder:
    return build({"path": str(llama_dir)})


def byte_ids(text: str) -> list[int]:
    return [BYTE_OFFSET + b for b in text.encode("utf-8")]


# -- loading -------------------------------------------------------------------------


def test_loads_saved_weights_through_the_registry(decoder: Decoder, llama_dir: Path) -> None:
    assert isinstance(decoder, HFCausalLM)
    assert (decoder.hidden_size, decoder.vocab_size) == (32, 260)
    assert decoder.tokenizer_size == 261  # 260 byte-tokenizer ids + the placeholder
    assert (decoder.eos_token_id, decoder.pad_token_id) == (2, 3)
    assert decoder.max_context == TINY_MAX_POSITIONS
    saved = load_file(str(llama_dir / "model.safetensors"))
    loaded = decoder.model.state_dict()
    assert saved, "nothing was saved"
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def test_max_context_param_overrides_config(llama_dir: Path) -> None:
    assert build({"path": str(llama_dir), "max_context": 64}).max_context == 64


def test_missing_path_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match=r"decoder path '.*no-such-model' not found"):
        build({"path": str(missing), "tokenizer": "bytes"})


def test_directory_without_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"decoder path .* could not be loaded"):
        build({"path": str(tmp_path), "tokenizer": "bytes"})


def test_uncached_hub_id_offline_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="path .no-such-org/no-such-model. could not be loaded"):
        build({"path": "no-such-org/no-such-model", "tokenizer": "bytes", "local_files_only": True})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"path": "x", "random_init": {"model_type": "llama"}}, "exactly one"),
        ({}, "exactly one"),
        ({"random_init": {"model_type": "llama"}}, "tokenizer"),
        ({"random_init": {"hidden_size": 32}, "tokenizer": "bytes"}, "model_type"),
        ({"path": "x", "dtype": "float64"}, "dtype"),
        ({"path": "x", "nonsense": 1}, "nonsense"),
    ],
)
def test_params_validation(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HFCausalLMParams.model_validate(params)


# -- random init ---------------------------------------------------------------------


def test_random_init_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    first, again, other = build_tiny_decoder(0), build_tiny_decoder(0), build_tiny_decoder(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    a, b, c = (d.model.state_dict() for d in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (first.hidden_size, first.vocab_size, first.placeholder_token_id) == (32, 260, 260)


def test_random_init_vocab_defaults_to_tokenizer_size() -> None:
    config = tiny_llama_config()
    del config["vocab_size"]
    decoder = build({"random_init": config, "tokenizer": "bytes"})
    assert decoder.vocab_size == 260


def test_random_init_vocab_smaller_than_tokenizer_is_rejected() -> None:
    with pytest.raises(ConfigError, match="vocab_size 100"):
        build({"random_init": tiny_llama_config(vocab_size=100), "tokenizer": "bytes"})


def test_random_init_unknown_model_type_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not-a-model"):
        build({"random_init": {"model_type": "not-a-model"}, "tokenizer": "bytes"})


def test_bfloat16_weights_accept_float32_embeddings() -> None:
    decoder = build_tiny_decoder(dtype="bfloat16")
    assert decoder.model.dtype == torch.bfloat16
    embeds = torch.randn(1, 4, 32)
    out = decoder(embeds, torch.ones(1, 4, dtype=torch.bool), torch.arange(4)[None])
    assert out.logits.shape == (1, 4, 260)


# -- tokens --------------------------------------------------------------------------


def test_placeholder_is_one_id_and_embeds_like_padding(decoder: Decoder) -> None:
    ids = decoder.tokenize("a<seq>b")
    assert ids == [*byte_ids("a"), decoder.placeholder_token_id, *byte_ids("b")]
    assert decoder.placeholder_token_id == 260  # past the 260-row embedding table
    assert decoder.tokenize("<seq><seq>") == [260, 260]
    embeds = decoder.embed_tokens(torch.tensor([ids]))
    assert embeds.shape == (1, 3, 32)
    assert torch.isfinite(embeds).all()
    pad_row = decoder.embed_tokens(torch.tensor([[decoder.pad_token_id]]))[0, 0]
    assert torch.equal(embeds[0, 1], pad_row)
    assert not torch.equal(embeds[0, 0], pad_row)


def test_tokenize_bos_and_detokenize(decoder: Decoder) -> None:
    assert decoder.tokenize("hi", add_bos=True) == [1, *byte_ids("hi")]
    assert decoder.tokenize("hi") == byte_ids("hi")
    assert decoder.detokenize([1, *byte_ids("hé"), 260, 2, 3]) == "hé"


def test_a_template_that_writes_the_bos_gets_no_second_one(tmp_path: Path) -> None:
    """The prompt of a tag-free message is exactly the LLM's own chat-template rendering
    (SmolLM2's template starts every turn with its BOS, <|im_start|>)."""
    template = "{{ bos_token }}" + CHAT_TEMPLATE
    directory = save_tiny_llama(tmp_path, chat_template=template)
    decoder = build({"path": str(directory)})
    assert decoder.tokenize("<s>hi", add_bos=True) == [1, *byte_ids("hi")]
    config = {
        **tiny_model(),
        "decoder": {"name": "hf-causal-lm", "params": {"path": str(directory)}},
        "prompt": {"template": "native", "system_prompt": ""},
    }
    model = ChatNTModel.from_config(parse_config(config))
    messages = [{"role": "user", "content": "What is a promoter?"}]
    own = AutoTokenizer.from_pretrained(directory).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=True
    )["input_ids"]
    batch = model.prompt_batch(["What is a promoter?"], [{}])
    assert batch.input_ids[0].tolist() == list(own)


def test_pad_falls_back_to_eos() -> None:
    tokenizer = build_byte_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    model = build_tiny_decoder().model
    decoder = HFCausalLM(model, tokenizer)
    assert decoder.pad_token_id == decoder.eos_token_id == 2
    assert tokenizer.pad_token_id == 2


def test_native_chat_template(decoder: Decoder, tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hello"}]
    with pytest.raises(ConfigError, match=r"prompt\.template: vicuna"):
        decoder.native_chat_template(messages, add_generation_prompt=True)
    templated = build({"path": str(save_tiny_llama(tmp_path, chat_template=CHAT_TEMPLATE))})
    rendered = templated.native_chat_template(messages, add_generation_prompt=True)
    assert rendered == "[user] hello\n[assistant]"


# -- forward -------------------------------------------------------------------------


def test_cached_incremental_forward_matches_full(decoder: Decoder) -> None:
    ids = torch.tensor([decoder.tokenize("incremental decoding!")])
    length = ids.shape[1]
    embeds = decoder.embed_tokens(ids)
    mask = torch.ones(1, length, dtype=torch.bool)
    positions = torch.arange(length)[None]
    with torch.no_grad():
        full = decoder(embeds, mask, positions)
        assert full.past_key_values is None
        prefix = 8
        step = decoder(embeds[:, :prefix], mask[:, :prefix], positions[:, :prefix], use_cache=True)
        assert isinstance(step.past_key_values, DynamicCache)
        pieces = [step.logits]
        for t in range(prefix, length):
            step = decoder(
                embeds[:, t : t + 1],
                mask[:, : t + 1],
                positions[:, t : t + 1],
                past_key_values=step.past_key_values,
                use_cache=True,
            )
            pieces.append(step.logits)
    assert full.logits.shape == (1, length, 260)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full.logits, atol=1e-5, rtol=0)


def test_left_padded_row_matches_unpadded(decoder: Decoder) -> None:
    short = decoder.tokenize("short")
    long = decoder.tokenize("a longer prompt")
    width = len(long)
    pad = decoder.pad_token_id
    ids = torch.tensor([[pad] * (width - len(short)) + short, long])
    mask = ids != pad
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch = decoder(decoder.embed_tokens(ids), mask, positions).logits
        alone = decoder(
            decoder.embed_tokens(torch.tensor([short])),
            torch.ones(1, len(short), dtype=torch.bool),
            torch.arange(len(short))[None],
        ).logits
    torch.testing.assert_close(batch[0, -len(short) :], alone[0], atol=1e-5, rtol=0)


# -- byte tokenizer ------------------------------------------------------------------


TEXTS = ["plain ascii", "héllo wörld", "🧬 ACGT → protéine", "tabs\tand\nnewlines\r\x00", "  lead"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trips(text: str) -> None:
    tokenizer = build_byte_tokenizer()
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == byte_ids(text)
    assert tokenizer.decode(ids) == text


def test_byte_tokenizer_layout_and_determinism(tmp_path: Path) -> None:
    tokenizer = build_byte_tokenizer()
    assert len(tokenizer) == 260
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id] == [0, 1]
    assert [tokenizer.eos_token_id, tokenizer.pad_token_id] == [2, 3]
    assert tokenizer.chat_template is None
    assert set(byte_symbols()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert tokenizer.get_vocab() == build_byte_tokenizer().get_vocab()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.encode(TEXTS[2], add_special_tokens=False) == byte_ids(TEXTS[2])
    assert reloaded.get_vocab() == tokenizer.get_vocab()
