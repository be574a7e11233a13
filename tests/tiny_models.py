"""Tiny, seeded models for tests: nothing here downloads anything.

* ``tiny_llama_config`` - a random_init dict for the ``hf-causal-lm`` decoder.
* ``save_tiny_llama`` - a tiny Llama + the byte tokenizer saved to a directory, loadable
  with ``from_pretrained(directory)`` and with ``hf-causal-lm``'s ``path``.
* ``tiny_decoder_params`` / ``build_tiny_decoder`` - a random-init decoder, no files.
* ``build_tiny_encoder`` - a ``char-transformer`` encoder for one modality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatnt_char_encoder import CharTransformerEncoder, CharTransformerParams
from chatnt_core.modality import Modality
from chatnt_hf_decoders import HFCausalLM, HFCausalLMParams, build_byte_tokenizer
from chatnt_hf_decoders.byte_tokenizer import BYTE_VOCAB_SIZE

TINY_MAX_POSITIONS = 256

# A dict to drop into ``{"params": {"random_init": ...}}``; the byte tokenizer's ids.
_TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": TINY_MAX_POSITIONS,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
}


def tiny_llama_config(vocab_size: int = BYTE_VOCAB_SIZE, **overrides: Any) -> dict[str, Any]:
    """A ``random_init`` config dict for a 2-layer, 32-wide Llama (``model_type`` included)."""
    return {**_TINY_LLAMA, "vocab_size": vocab_size, **overrides}


def save_tiny_llama(
    directory: str | Path,
    *,
    seed: int = 0,
    vocab_size: int = BYTE_VOCAB_SIZE,
    chat_template: str | None = None,
    **overrides: Any,
) -> Path:
    """Save a seeded tiny Llama (safetensors) and the byte tokenizer into ``directory``.

    ``chat_template`` (a Jinja string) is stored with the tokenizer when given. Returns
    the directory, which ``from_pretrained`` and ``hf-causal-lm`` ``path`` both accept.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = tiny_llama_config(vocab_size, **overrides)
    settings.pop("model_type")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**settings))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer = build_byte_tokenizer()
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    return directory


def tiny_decoder_params(seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """``hf-causal-lm`` params for a random-init tiny Llama with the byte tokenizer."""
    return {"random_init": tiny_llama_config(), "tokenizer": "bytes", "seed": seed, **overrides}


def build_tiny_decoder(seed: int = 0, **overrides: Any) -> HFCausalLM:
    """A random-init tiny ``hf-causal-lm`` decoder (D = 32, V = 260, placeholder id 260)."""
    params = HFCausalLMParams.model_validate(tiny_decoder_params(seed, **overrides))
    return HFCausalLM.from_params(params)


def build_tiny_encoder(
    modality: Modality | str = Modality.DNA, **params: Any
) -> CharTransformerEncoder:
    """A ``char-transformer`` encoder (defaults: D_enc = 32, 2 layers, max_tokens 1024)."""
    return CharTransformerEncoder(Modality(modality), CharTransformerParams.model_validate(params))


def sharp_tiny_model() -> Any:
    """``tiny-random`` with its decoder's matrices drawn large (std 0.5), in eval mode.

    At its default init the tiny decoder answers nearly every prompt alike, so an exactness
    check on it (cached vs full passes, position ids) could pass with a bug; with large
    weights its tokens and scores depend on content and positions.
    """
    from chatnt_core import ChatNTModel

    torch.manual_seed(0)
    model = ChatNTModel.from_config("tiny-random").eval()
    with torch.no_grad():
        for param in model.decoder.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.5)
    return model
