"""``hf-causal-lm`` loads GGUF checkpoints: a tiny Llama written with the ``gguf`` package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
import transformers
from pydantic import ValidationError
from transformers.convert_slow_tokenizer import bytes_to_unicode

from chatnt_core.errors import ConfigError
from chatnt_core.plugins import BuildContext, ComponentKind, get_registry
from chatnt_hf_decoders import HFCausalLM

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 4, 2, 64, 128
# A byte-level BPE vocabulary: id = byte value for the 256 byte symbols, then two merges
# and an end-of-text token.
_BYTE_SYMBOLS = bytes_to_unicode()
TOKENS = [*(_BYTE_SYMBOLS[b] for b in range(256)), "hi", "th", "<|endoftext|>"]
EOS_ID = len(TOKENS) - 1
_GGUF_NAMES = {  # transformers parameter (in layer i) -> llama.cpp tensor (in blk.i)
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """The row order llama.cpp stores q/k projections in (transformers undoes it on load)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _shapes() -> dict[str, tuple[int, ...]]:
    head_dim = HIDDEN // HEADS
    return {
        "self_attn.q_proj": (HIDDEN, HIDDEN),
        "self_attn.k_proj": (KV_HEADS * head_dim, HIDDEN),
        "self_attn.v_proj": (KV_HEADS * head_dim, HIDDEN),
        "self_attn.o_proj": (HIDDEN, HIDDEN),
        "mlp.gate_proj": (FFN, HIDDEN),
        "mlp.up_proj": (FFN, HIDDEN),
        "mlp.down_proj": (HIDDEN, FFN),
        "input_layernorm": (HIDDEN,),
        "post_attention_layernorm": (HIDDEN,),
    }


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a 2-layer, 32-wide float32 Llama with a byte-level BPE tokenizer to ``path``;
    the transformers state dict it must load as (the tied ``lm_head`` left out)."""
    rng = np.random.default_rng(seed)
    expected: dict[str, np.ndarray] = {}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([1] * (len(TOKENS) - 1) + [3])  # the last one is a control token
    writer.add_token_merges(["h i", "t h"])
    writer.add_bos_token_id(EOS_ID)
    writer.add_eos_token_id(EOS_ID)

    def add(hf_name: str, gguf_name: str, weights: np.ndarray, stored: np.ndarray) -> None:
        expected[hf_name] = weights
        writer.add_tensor(gguf_name, stored)

    embeddings = rng.standard_normal((len(TOKENS), HIDDEN), dtype=np.float32)
    add("model.embed_tokens.weight", "token_embd.weight", embeddings, embeddings)
    norm = rng.standard_normal(HIDDEN, dtype=np.float32)
    add("model.norm.weight", "output_norm.weight", norm, norm)
    for layer in range(LAYERS):
        for name, shape in _shapes().items():
            weights = rng.standard_normal(shape, dtype=np.float32)
            stored = weights
            if name == "self_attn.q_proj":
                stored = _llama_cpp_permute(weights, HEADS)
            elif name == "self_attn.k_proj":
                stored = _llama_cpp_permute(weights, KV_HEADS)
            gguf_name = f"blk.{layer}.{_GGUF_NAMES[name]}.weight"
            add(f"model.layers.{layer}.{name}.weight", gguf_name, weights, stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {name: torch.from_numpy(weights) for name, weights in expected.items()}


def assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == {*expected, "lm_head.weight"}
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    assert torch.equal(loaded["lm_head.weight"], expected["model.embed_tokens.weight"])


def build(params: dict[str, Any]) -> HFCausalLM:
    entry = get_registry().get(ComponentKind.DECODER, "hf-causal-lm")
    decoder = entry.build(entry.params_model.model_validate(params), BuildContext())
    assert isinstance(decoder, HFCausalLM)
    return decoder


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, write_tiny_gguf(path)


def test_path_to_a_gguf_file_loads_its_weights_and_tokenizer(
    tiny_gguf: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, expected = tiny_gguf
    decoder = build({"path": str(path)})
    assert_weights(decoder.model, expected)
    assert (decoder.hidden_size, decoder.vocab_size, decoder.max_context) == (32, 259, CONTEXT)
    assert decoder.eos_token_id == EOS_ID
    assert decoder.tokenize("hi there") == [256, 32, 257, 101, 114, 101]  # "hi", " ", "th", ...
    assert decoder.placeholder_token_id == len(TOKENS)
    # An ordinary model: transformers refuses to save one it still counts as GGUF-quantized.
    decoder.model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_directory_and_gguf_file_load_the_same_weights_in_the_asked_dtype(
    tiny_gguf: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, expected = tiny_gguf
    decoder = build({"path": str(path.parent), "gguf_file": path.name})
    assert_weights(decoder.model, expected)
    half = build({"path": str(path.parent), "gguf_file": path.name, "dtype": "bfloat16"})
    assert half.model.dtype == torch.bfloat16
    weight = half.model.state_dict()["model.layers.1.mlp.down_proj.weight"]
    assert torch.equal(weight, expected["model.layers.1.mlp.down_proj.weight"].bfloat16())


def test_without_dequantize_option_the_model_is_still_an_ordinary_one(
    tiny_gguf: tuple[Path, dict[str, torch.Tensor]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Transformers without ``GgufConfig`` load a GGUF model as quantized (not saveable);
    the plugin copies its weights into a plain model."""
    monkeypatch.delattr(transformers, "GgufConfig", raising=False)
    path, expected = tiny_gguf
    decoder = build({"path": str(path)})
    assert not getattr(decoder.model, "is_quantized", False)
    assert not hasattr(decoder.model.config, "quantization_config")
    assert_weights(decoder.model, expected)
    decoder.model.save_pretrained(tmp_path / "saved")


def test_gguf_mistakes_are_config_errors(
    tiny_gguf: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    path, _ = tiny_gguf
    with pytest.raises(ValidationError, match="gguf_file needs 'path'"):
        build({"random_init": {"model_type": "llama"}, "tokenizer": "bytes", "gguf_file": "a"})
    with pytest.raises(ValidationError, match="give the GGUF file once"):
        build({"path": str(path), "gguf_file": path.name})
    with pytest.raises(ConfigError, match=r"decoder path '.*missing.gguf' not found"):
        build({"path": str(tmp_path / "missing.gguf"), "tokenizer": "bytes"})
    with pytest.raises(ConfigError, match=r"has no GGUF file 'other.gguf'"):
        build({"path": str(path.parent), "gguf_file": "other.gguf", "tokenizer": "bytes"})
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(ConfigError, match=r"decoder path '.*broken.gguf' could not be loaded"):
        build({"path": str(broken), "tokenizer": "bytes"})
    with pytest.raises(ConfigError, match=r"decoder tokenizer '.*broken.gguf' could not be"):
        build({"path": str(broken)})
