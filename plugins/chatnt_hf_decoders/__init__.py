"""chatnt plugin: Hugging Face causal language models as decoders.

Registers one decoder, ``hf-causal-lm``, which wraps any ``AutoModelForCausalLM`` and
its ``AutoTokenizer`` (or the built-in byte-level tokenizer, ``tokenizer: bytes``)::

    decoder:
      name: hf-causal-lm
      params: {path: ./my-llama, dtype: bfloat16}

The plugin is found through the ``chatnt`` entry-point group; chatnt's own
``pyproject.toml`` declares it exactly as a third-party package would::

    [project.entry-points.chatnt]
    hf-decoders = "chatnt_hf_decoders"

Copy this package as the starting point for a decoder plugin of your own: a module with a
``@hookimpl`` ``register_decoders`` that calls ``register(name, factory, params_model)``.
"""

from __future__ import annotations

from chatnt_core.hookspecs import Register, hookimpl
from chatnt_hf_decoders.byte_tokenizer import build_byte_tokenizer
from chatnt_hf_decoders.decoder import HFCausalLM, HFCausalLMParams, build_hf_causal_lm

__version__ = "0.1.0"

__all__ = [
    "HFCausalLM",
    "HFCausalLMParams",
    "__version__",
    "build_byte_tokenizer",
    "build_hf_causal_lm",
    "register_decoders",
]


@hookimpl
def register_decoders(register: Register) -> None:
    register("hf-causal-lm", build_hf_causal_lm, HFCausalLMParams)
