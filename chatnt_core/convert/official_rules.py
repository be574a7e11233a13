"""Conversion rules: the official ChatNT's Haiku parameters -> our modules' state dicts.

Each rule is a small function because each is a fact about the official code that the
parity fixture checks separately (``tests/test_convert_official.py``):

* Haiku ``Linear`` weights are ``[in, out]``; torch's are ``[out, in]`` -> transpose.
* The decoder's ``fc1_linear_glu`` is one ``[D, 2F]`` matrix, gate half first (SiLU), then
  the linear half -> Llama's ``gate_proj`` and ``up_proj``.
* The decoder's rotary embedding is *interleaved* (dims 2i and 2i+1 form pair i); Llama in
  transformers rotates *half-split* pairs (i, i + Dh/2). Permuting the output rows of the
  query and key maps per head (even rows first, then odd) turns one into the other; q.k
  scores are unchanged because queries and keys move together.
* Epsilons the weights were trained with: decoder layer RMSNorms 1e-6, the final RMSNorm
  Haiku's default 1e-5; NT-v2 LayerNorms 1e-5 (its Hugging Face configs say 1e-12); the
  Perceiver's LayerNorms 1e-5 (torch's default too).

Sizes come from the array shapes; head counts cannot (a [D, H*Dh] matrix does not say H),
so they default to the published model's and can be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from chatnt_core.convert.haiku_params import ConversionError, HaikuParams

ENCODER = "chat_nt_encoder"
DECODER = "chat_nt_decoder"
PROJECTION = "multi_modal_perceiver_resampler_projection"
DECODER_LAYER_EPS = 1e-6
DECODER_FINAL_EPS = 1e-5  # hk.RMSNorm's default: the official GptDecoder passes no eps
NT_LAYER_NORM_EPS = 1e-5
ROPE_THETA = 10000.0
# Parts of the official parameter file ChatNT never uses (the NT masked-LM head)
UNUSED = ("roberta_lm_head/~/lm_head", "roberta_lm_head/~/lm_final_fc")


@dataclass(frozen=True)
class Heads:
    """Head counts of the three parts; the published ChatNT's by default."""

    encoder: int = 16
    projection: int = 32
    decoder: int = 32


def _stack(p: HaikuParams, top: str, layer: str, what: str) -> tuple[str, int]:
    """The model's root module under ``top`` and how many ``layer{i}`` modules it has."""
    root = f"{top}/{p.child(top)}"
    layers = p.count(f"{root}/{layer}")
    if layers == 0:
        raise ConversionError(f"{p.source}: no {what} layers under '{root}'")
    return root, layers


def linear(w: np.ndarray) -> torch.Tensor:
    """Haiku ``[in, out]`` -> torch ``[out, in]``."""
    return torch.from_numpy(np.ascontiguousarray(w.T))


def split_glu(w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A fused ``[D, 2F]`` GLU matrix -> (gate ``[F, D]``, up ``[F, D]``): gate half first."""
    half = w.shape[1] // 2
    return linear(w[:, :half]), linear(w[:, half:])


def interleaved_to_half_split(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Permute the output rows ``[H*Dh, D]`` of a query/key map per head: rows 0, 2, 4, ...
    then 1, 3, 5, ..., so a half-split rotary computes what the interleaved one did."""
    rows, width = weight.shape
    head_dim = rows // heads
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return weight.view(heads, head_dim, width)[:, order, :].reshape(rows, width)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


# ---- NT-v2 encoder ----------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSizes:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int


def encoder_state(p: HaikuParams, heads: int) -> tuple[EncoderSizes, dict[str, torch.Tensor]]:
    """The NT-v2 encoder as ``chatnt_nt.NTv2Model`` tensors (its LayerNorms: 1e-5)."""
    root, layers = _stack(p, ENCODER, "attention_layer_", "NT-v2")
    vocab, d = p.shape(f"{root}/~/embed/embeddings")
    f = p.shape(f"{root}/attention_layer_0/~/fc2/w")[0]
    if d % heads:
        raise ConversionError(f"encoder width {d} is not divisible by --encoder-heads {heads}")
    state = {"word_embeddings.weight": _t(p.take(f"{root}/~/embed/embeddings", (vocab, d)))}
    for i in range(layers):
        layer = f"{root}/attention_layer_{i}/~"
        for ours, theirs in (
            ("attn_norm", "self_attention_layer_norm"),
            ("ffn_norm", "final_layer_norm"),
        ):
            state[f"layers.{i}.{ours}.weight"] = _t(p.take(f"{layer}/{theirs}/scale", (d,)))
            state[f"layers.{i}.{ours}.bias"] = _t(p.take(f"{layer}/{theirs}/offset", (d,)))
        for ours, theirs in (
            ("query", "query"),
            ("key", "key"),
            ("value", "value"),
            ("out", "mha_output"),
        ):
            name = f"{layer}/self_attention/{theirs}"
            state[f"layers.{i}.attn.{ours}.weight"] = linear(p.take(f"{name}/w", (d, d)))
            state[f"layers.{i}.attn.{ours}.bias"] = _t(p.take(f"{name}/b", (d,)))
        state[f"layers.{i}.ffn.w1.weight"] = linear(p.take(f"{layer}/fc1/w", (d, 2 * f)))
        state[f"layers.{i}.ffn.w2.weight"] = linear(p.take(f"{layer}/fc2/w", (f, d)))
    final = f"{root}/~/roberta_lm_head/~/emb_layer_norm_after"
    state["final_norm.weight"] = _t(p.take(f"{final}/scale", (d,)))
    state["final_norm.bias"] = _t(p.take(f"{final}/offset", (d,)))
    return EncoderSizes(d, f, layers, heads, vocab), state


# ---- English-aware Perceiver ------------------------------------------------------------


@dataclass(frozen=True)
class ProjectionSizes:
    input_dim: int
    dim: int
    num_latents: int
    layers: int
    heads: int
    head_dim: int
    ffn: int
    question_vocab: int


def projection_state(
    p: HaikuParams, input_dim: int, heads: int
) -> tuple[ProjectionSizes, dict[str, torch.Tensor]]:
    """The English-aware Perceiver as ``EnglishAwarePerceiver`` tensors."""
    root = PROJECTION
    d = p.shape(f"{root}/bio_to_english_projection/w")[1]
    resampler = f"{root}/multi_modal_perceiver_resampler"
    k = p.shape(f"{resampler}/latent_queries")[0]
    q_vocab = p.shape(f"{root}/token_embed/embeddings")[0]
    layers = p.count(f"{resampler}/multi_modal_perceiver_layer_")
    if layers == 0:
        raise ConversionError(f"{p.source}: no Perceiver layers under '{resampler}'")
    first = f"{resampler}/multi_modal_perceiver_layer_0/~"
    inner = p.shape(f"{first}/cross_attention_1/query/w")[1]
    ffn = p.shape(f"{first}/fc1/w")[1]
    if inner % heads:
        raise ConversionError(
            f"Perceiver attention width {inner} is not divisible by --projection-heads {heads}"
        )
    state = {
        "input_proj.weight": linear(p.take(f"{root}/bio_to_english_projection/w", (input_dim, d))),
        "input_proj.bias": _t(p.take(f"{root}/bio_to_english_projection/b", (d,))),
        "latents": _t(p.take(f"{resampler}/latent_queries", (k, d))),
        "question_table.weight": _t(p.take(f"{root}/token_embed/embeddings", (q_vocab, d))),
        "word_ids": torch.zeros(0, dtype=torch.long),
    }
    parts = (
        ("norm_seq", "cross_attention_layer_norm_1", "attn_seq", "cross_attention_1"),
        ("norm_question", "cross_attention_layer_norm_2", "attn_question", "cross_attention_2"),
    )
    for i in range(layers):
        layer = f"{resampler}/multi_modal_perceiver_layer_{i}/~"
        ours = f"layers.{i}"
        for norm, their_norm, attn, their_attn in parts:
            state[f"{ours}.{norm}.weight"] = _t(p.take(f"{layer}/{their_norm}/scale", (d,)))
            state[f"{ours}.{norm}.bias"] = _t(p.take(f"{layer}/{their_norm}/offset", (d,)))
            for proj, theirs in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
                name = f"{layer}/{their_attn}/{theirs}"
                state[f"{ours}.{attn}.{proj}.weight"] = linear(p.take(f"{name}/w", (d, inner)))
                state[f"{ours}.{attn}.{proj}.bias"] = _t(p.take(f"{name}/b", (inner,)))
            out = f"{layer}/{their_attn}/mha_output"
            state[f"{ours}.{attn}.out_proj.weight"] = linear(p.take(f"{out}/w", (inner, d)))
            state[f"{ours}.{attn}.out_proj.bias"] = _t(p.take(f"{out}/b", (d,)))
        state[f"{ours}.norm_ffn.weight"] = _t(p.take(f"{layer}/final_layer_norm/scale", (d,)))
        state[f"{ours}.norm_ffn.bias"] = _t(p.take(f"{layer}/final_layer_norm/offset", (d,)))
        state[f"{ours}.fc1.weight"] = linear(p.take(f"{layer}/fc1/w", (d, ffn)))
        state[f"{ours}.fc1.bias"] = _t(p.take(f"{layer}/fc1/b", (ffn,)))
        state[f"{ours}.fc2.weight"] = linear(p.take(f"{layer}/fc2/w", (ffn, d)))
        state[f"{ours}.fc2.bias"] = _t(p.take(f"{layer}/fc2/b", (d,)))
    sizes = ProjectionSizes(input_dim, d, k, layers, heads, inner // heads, ffn, q_vocab)
    return sizes, state


# ---- Llama decoder ----------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderSizes:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


def decoder_state(p: HaikuParams, heads: int) -> tuple[DecoderSizes, dict[str, torch.Tensor]]:
    """The decoder as ``transformers`` Llama tensors (q/k rows permuted for half-split RoPE)."""
    root, layers = _stack(p, DECODER, "gpt_decoder_layer_", "decoder")
    vocab, d = p.shape(f"{root}/~/token_embed/embeddings")
    first = f"{root}/gpt_decoder_layer_0/~"
    f = p.shape(f"{first}/fc2_linear/w")[0]
    if d % heads or (d // heads) % 2:
        raise ConversionError(f"decoder width {d} does not split into --decoder-heads {heads}")
    head_dim = d // heads
    kv_width = p.shape(f"{first}/self_attn/~/key_linear/w")[1]
    kv_heads = kv_width // head_dim
    state = {
        "model.embed_tokens.weight": _t(p.take(f"{root}/~/token_embed/embeddings", (vocab, d))),
        "model.norm.weight": _t(p.take(f"{root}/~/final_RMS_norm/scale", (d,))),
        "lm_head.weight": linear(p.take(f"{root}/~/simple_lm_head/~/lm_final_fc/w", (d, vocab))),
    }
    for i in range(layers):
        layer = f"{root}/gpt_decoder_layer_{i}/~"
        ours = f"model.layers.{i}"
        attn = f"{layer}/self_attn/~"
        state[f"{ours}.input_layernorm.weight"] = _t(p.take(f"{layer}/attn_RMS_norm/scale", (d,)))
        state[f"{ours}.post_attention_layernorm.weight"] = _t(
            p.take(f"{layer}/ffn_RMS_norm/scale", (d,))
        )
        query = linear(p.take(f"{attn}/query_linear/w", (d, d)))
        key = linear(p.take(f"{attn}/key_linear/w", (d, kv_width)))
        state[f"{ours}.self_attn.q_proj.weight"] = interleaved_to_half_split(query, heads)
        state[f"{ours}.self_attn.k_proj.weight"] = interleaved_to_half_split(key, kv_heads)
        state[f"{ours}.self_attn.v_proj.weight"] = linear(
            p.take(f"{attn}/value_linear/w", (d, kv_width))
        )
        state[f"{ours}.self_attn.o_proj.weight"] = linear(p.take(f"{attn}/out_linear/w", (d, d)))
        gate, up = split_glu(p.take(f"{layer}/fc1_linear_glu/w", (d, 2 * f)))
        state[f"{ours}.mlp.gate_proj.weight"] = gate
        state[f"{ours}.mlp.up_proj.weight"] = up
        state[f"{ours}.mlp.down_proj.weight"] = linear(p.take(f"{layer}/fc2_linear/w", (f, d)))
    return DecoderSizes(vocab, d, f, layers, heads, kv_heads), state


def llama_config(sizes: DecoderSizes, max_positions: int = 2048) -> dict[str, object]:
    """The ``transformers`` LlamaConfig fields of the converted decoder (config.json)."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": sizes.vocab,
        "hidden_size": sizes.hidden,
        "intermediate_size": sizes.intermediate,
        "num_hidden_layers": sizes.layers,
        "num_attention_heads": sizes.heads,
        "num_key_value_heads": sizes.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "rms_norm_eps": DECODER_LAYER_EPS,
        "rope_theta": ROPE_THETA,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
