"""Published NT-v2 checkpoints: find, read, validate, load and write them.

The Hugging Face checkpoints ``InstaDeepAI/nucleotide-transformer-v2-*-multi-species`` use the
ESM key layout with a GLU feed-forward, which stock ``transformers`` ESM does not implement
(the Hub files ask for remote code). We never run that code: the weights are plain tensors,
so this module maps their keys onto ``chatnt_nt.model.NTv2Model`` and checks every key and
shape first. A mismatch is a :class:`chatnt_core.errors.ConfigError` that names the missing
and unexpected keys and the mismatched shapes (the first few of each, plus the counts), so
a wrong checkpoint never loads half-way.

Published key (layer i)                                  ->  native key
``esm.embeddings.word_embeddings.weight``                ->  ``word_embeddings.weight``
``esm.encoder.layer.i.attention.LayerNorm.*``            ->  ``layers.i.attn_norm.*``
``esm.encoder.layer.i.attention.self.{query,key,value}.*`` -> ``layers.i.attn.{...}.*``
``esm.encoder.layer.i.attention.output.dense.*``         ->  ``layers.i.attn.out.*``
``esm.encoder.layer.i.LayerNorm.*``                      ->  ``layers.i.ffn_norm.*``
``esm.encoder.layer.i.intermediate.dense.weight`` [2F, D] -> ``layers.i.ffn.w1.weight``
``esm.encoder.layer.i.output.dense.weight`` [D, F]       ->  ``layers.i.ffn.w2.weight``
``esm.encoder.emb_layer_norm_after.*``                   ->  ``final_norm.*``

Ignored: the unused learned position table, the recomputable rotary ``inv_freq`` buffers, and
heads that are not part of the encoder (``lm_head.*``, ``esm.contact_head.*``, and the
``classifier.*`` of fine-tuned derivatives). Architecture comes from config.json, which has
no ``model_type`` key in the files InstaDeep published, so nothing here depends on it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from chatnt_core.errors import ConfigError
from chatnt_nt.model import NTv2Config, NTv2Model
from chatnt_nt.tokenizer import MASK_ID, PAD_ID, VOCAB_SIZE

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
HUB_ID_TEMPLATE = "InstaDeepAI/nucleotide-transformer-v2-{size}-multi-species"
SHOWN = 5  # keys listed per category in an error message

_LAYER_RENAMES = {
    "attention.LayerNorm": "attn_norm",
    "attention.self.query": "attn.query",
    "attention.self.key": "attn.key",
    "attention.self.value": "attn.value",
    "attention.output.dense": "attn.out",
    "LayerNorm": "ffn_norm",
    "intermediate.dense": "ffn.w1",
    "output.dense": "ffn.w2",
}
_TOP_RENAMES = {
    "embeddings.word_embeddings": "word_embeddings",
    "encoder.emb_layer_norm_after": "final_norm",
}
_LAYER_PUBLISHED = {v: k for k, v in _LAYER_RENAMES.items()}
_TOP_PUBLISHED = {v: k for k, v in _TOP_RENAMES.items()}
_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
_IGNORED = re.compile(
    r"^(lm_head\.|classifier\.|(esm\.)?contact_head\.|(esm\.)?embeddings\.position_embeddings\."
    r"|(esm\.)?embeddings\.position_ids$|.*rotary_embeddings\.inv_freq$)"
)


def to_native(key: str) -> str | None:
    """Published key (``esm.`` prefix optional) -> native key, or None if it has no place."""
    key = key.removeprefix("esm.")
    match = _LAYER_KEY.fullmatch(key)
    if match:
        index, module, leaf = match.groups()
        native = _LAYER_RENAMES.get(module)
        return f"layers.{index}.{native}.{leaf}" if native else None
    module, _, leaf = key.rpartition(".")
    native = _TOP_RENAMES.get(module)
    return f"{native}.{leaf}" if native and leaf in ("weight", "bias") else None


def to_published(native_key: str) -> str:
    """Native key -> published key (the inverse of ``to_native``)."""
    module, _, leaf = native_key.rpartition(".")
    if module.startswith("layers."):
        _, index, rest = module.split(".", 2)
        return f"esm.encoder.layer.{index}.{_LAYER_PUBLISHED[rest]}.{leaf}"
    return f"esm.{_TOP_PUBLISHED[module]}.{leaf}"


# ---- config.json ---------------------------------------------------------------------------


def _require(data: Mapping[str, Any], key: str, source: Path) -> Any:
    if key not in data:
        raise ConfigError(f"{source}: config.json has no '{key}'; is this an NT-v2 checkpoint?")
    return data[key]


def read_config(directory: Path, layer_norm_eps: float | None = None) -> NTv2Config:
    """Architecture from ``directory/config.json``; ``layer_norm_eps`` overrides the file's."""
    source = directory / "config.json"
    try:
        data = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the NT-v2 config {source}: {exc}") from None
    # Fields that would change the maths; reject rather than compute something else.
    expected = {
        "position_embedding_type": "rotary",
        "add_bias_fnn": False,
        "emb_layer_norm_before": False,
        "token_dropout": False,
    }
    for key, value in expected.items():
        if key in data and data[key] != value:
            raise ConfigError(
                f"{source}: {key} is {data[key]!r}; nucleotide-transformer-v2 needs {value!r} "
                "(NT-v1 and ESM-2 checkpoints are not supported by this encoder)"
            )
    vocab_size = int(_require(data, "vocab_size", source))
    if vocab_size != VOCAB_SIZE:
        raise ConfigError(
            f"{source}: vocab_size is {vocab_size}, the NT-v2 6-mer tokenizer has {VOCAB_SIZE} "
            "ids; this checkpoint uses another tokenizer (e.g. the 3-mer model)"
        )
    config = NTv2Config(
        hidden_size=int(_require(data, "hidden_size", source)),
        intermediate_size=int(_require(data, "intermediate_size", source)),
        num_hidden_layers=int(_require(data, "num_hidden_layers", source)),
        num_attention_heads=int(_require(data, "num_attention_heads", source)),
        vocab_size=vocab_size,
        layer_norm_eps=float(
            layer_norm_eps if layer_norm_eps is not None else data.get("layer_norm_eps", 1e-12)
        ),
        max_position_embeddings=int(data.get("max_position_embeddings", 2050)),
    )
    if config.hidden_size % config.num_attention_heads or config.head_dim % 2:
        raise ConfigError(
            f"{source}: hidden_size {config.hidden_size} does not split into "
            f"{config.num_attention_heads} heads of even size"
        )
    return config


# ---- weights -------------------------------------------------------------------------------


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint directory: safetensors (single or sharded) or a .bin file."""
    if (directory / SAFETENSORS).is_file():
        return load_file(directory / SAFETENSORS)
    if (directory / SAFETENSORS_INDEX).is_file():
        index = json.loads((directory / SAFETENSORS_INDEX).read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(directory / shard))
        return state
    if (directory / PYTORCH_BIN).is_file():
        # weights_only: a pickle may carry code; tensors are all we accept.
        loaded = torch.load(directory / PYTORCH_BIN, map_location="cpu", weights_only=True)
        return dict(loaded)
    raise ConfigError(
        f"{directory} holds no {SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN}; "
        "point 'path' at an NT-v2 checkpoint directory"
    )


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")
    return f"{len(items)} {title}: {shown}"


def map_state_dict(
    state: Mapping[str, torch.Tensor], model: NTv2Model, source: str
) -> dict[str, torch.Tensor]:
    """Published tensors -> native state dict; ConfigError if keys or shapes differ."""
    wanted = {key: tensor.shape for key, tensor in model.state_dict().items()}
    native: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, tensor in state.items():
        if _IGNORED.match(key):
            continue
        target = to_native(key)
        if target is None or target not in wanted:
            unexpected.append(key)
        elif tensor.shape != wanted[target]:
            mismatched.append(f"{key} {list(tensor.shape)} (expected {list(wanted[target])})")
        else:
            native[target] = tensor
    missing = [to_published(k) for k in wanted if k not in native]
    missing = [k for k in missing if k not in state]  # mismatched keys are reported once
    if missing or unexpected or mismatched:
        c = model.config
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise ConfigError(
            f"{source} does not match an NT-v2 with hidden {c.hidden_size}, FFN "
            f"{c.intermediate_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} "
            f"heads (from its config.json): {'; '.join(parts)}"
        )
    return native


def load_weights(model: NTv2Model, directory: Path) -> None:
    """Validate a checkpoint directory's tensors and make them ``model``'s (float32).

    ``assign=True`` adopts the loaded tensors instead of copying them, so ``model`` may be
    built on the meta device and the weights are held in memory once.
    """
    state = read_state_dict(directory)
    native = map_state_dict(state, model, str(directory))
    native = {key: tensor.to(torch.float32) for key, tensor in native.items()}
    model.load_state_dict(native, strict=True, assign=True)


# ---- hub -----------------------------------------------------------------------------------


def resolve_directory(path: str, revision: str | None, local_files_only: bool) -> Path:
    """A local checkpoint directory as is; anything else is a Hub id to download."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if path.count("/") != 1 or local.exists():
        raise ConfigError(
            f"NT-v2 path '{path}' is neither a checkpoint directory nor a Hub id like "
            f"'{HUB_ID_TEMPLATE.format(size='500m')}'"
        )
    from huggingface_hub import snapshot_download

    common: dict[str, Any] = {
        "repo_id": path,
        "revision": revision,
        "local_files_only": local_files_only,
    }
    try:
        directory = Path(
            snapshot_download(
                allow_patterns=["config.json", "*.safetensors", SAFETENSORS_INDEX], **common
            )
        )
        if not any(directory.glob("*.safetensors")):
            directory = Path(snapshot_download(allow_patterns=[PYTORCH_BIN], **common))
    except Exception as exc:  # network, auth, missing repo: one user-facing message
        raise ConfigError(
            f"NT-v2 path '{path}' is not a local directory, and fetching it from the Hugging "
            f"Face Hub failed ({type(exc).__name__}: {exc}); check the id and your connection, "
            "or download it and set 'path' to the local directory"
        ) from None
    return directory


# ---- writing -------------------------------------------------------------------------------


def published_config(config: NTv2Config) -> dict[str, Any]:
    """config.json fields as InstaDeep publishes them (no model_type, no remote-code map)."""
    return {
        "architectures": ["EsmForMaskedLM"],
        "add_bias_fnn": False,
        "attention_probs_dropout_prob": 0.0,
        "emb_layer_norm_before": False,
        "hidden_dropout_prob": 0.0,
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "is_folding_model": False,
        "layer_norm_eps": config.layer_norm_eps,
        "mask_token_id": MASK_ID,
        "max_position_embeddings": config.max_position_embeddings,
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "pad_token_id": PAD_ID,
        "position_embedding_type": "rotary",
        "tie_word_embeddings": False,
        "token_dropout": False,
        "torch_dtype": "float32",
        "vocab_size": config.vocab_size,
    }


def published_state_dict(model: NTv2Model) -> dict[str, torch.Tensor]:
    """The model's tensors under published keys, with the unused position table and
    rotary buffers the published files carry (so loaders exercise their ignore rules)."""
    c = model.config
    state = {to_published(k): v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state["esm.embeddings.position_embeddings.weight"] = torch.zeros(
        c.max_position_embeddings, c.hidden_size
    )
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim)
    for i in range(c.num_hidden_layers):
        state[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv_freq
    return state


def save_pretrained(model: NTv2Model, directory: str | Path) -> Path:
    """Write config.json + model.safetensors in the published layout; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = json.dumps(published_config(model.config), indent=2) + "\n"
    (directory / "config.json").write_text(config)
    tensors = {k: v.clone() for k, v in published_state_dict(model).items()}  # no shared storage
    save_file(tensors, directory / SAFETENSORS, metadata={"format": "pt"})
    return directory
