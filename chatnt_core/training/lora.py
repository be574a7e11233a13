"""LoRA on the decoder through ``peft``, shared by the trainer and checkpoint loading.

Both must wrap the decoder identically, or the adapter weights a checkpoint holds would
not find their parameters again; hence one function.
"""

from __future__ import annotations

import warnings

from torch import nn

from chatnt_core.adapter_gate import AdapterGate
from chatnt_core.errors import ConfigError
from chatnt_core.training.config import LoraSettings


def apply_lora(decoder: nn.Module, settings: LoraSettings) -> None:
    """Wrap ``decoder.model`` (a Hugging Face model) with LoRA adapters, in place.

    The base weights are frozen by ``peft``; only the adapters train. Nothing of the base
    decoder is saved in checkpoints, which reference it through the model config. With
    ``active_from: first_sequence`` the adapters get a gate (``chatnt_core/adapter_gate.py``)
    that switches them on only from a row's first sequence placeholder.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import PreTrainedModel

    inner = getattr(decoder, "model", None)
    if not isinstance(inner, PreTrainedModel):
        raise ConfigError(
            "lora: the decoder has no Hugging Face model at '.model'; LoRA works with "
            "hf-causal-lm style decoders only - remove the lora block"
        )
    names = {name.rsplit(".", 1)[-1] for name, _ in inner.named_modules()}
    unknown = [m for m in settings.target_modules if m not in names]
    if unknown:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in inner.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ConfigError(
            f"lora.target_modules: the decoder has no module named {', '.join(unknown)}; "
            f"its linear layers are {', '.join(linear)}"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    with warnings.catch_warnings():  # peft probes a transformers attribute deprecated in v5
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        decoder.model = get_peft_model(inner, config)
    if settings.active_from == "first_sequence":
        gate = AdapterGate()
        if gate.attach(decoder.model) == 0:
            raise ConfigError("lora: peft created no lora_B modules to gate; check target_modules")
        object.__setattr__(decoder, "adapter_gate", gate)  # not a submodule: no weights
