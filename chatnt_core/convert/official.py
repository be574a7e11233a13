"""``chatnt convert official-chatnt``: the published ChatNT as an ordinary chatnt checkpoint.

Why: the only trained ChatNT is InstaDeep's (``InstaDeepAI/ChatNT``); its official JAX code
recomputes a 512-token forward pass per generated token at batch size 1. Converted, the
same weights run with our KV cache, batching, FASTA runs, calibration and plugins.

What is written (``DIR/checkpoint-000000/``, ``DIR/latest`` naming it)::

    config.yaml            the ``chatnt-official`` preset with the sizes read from the
                           arrays and the parts' paths below (``./name``: inside this folder)
    model.safetensors      the English-aware Perceiver (the trainable part)
    encoder/               NT-v2 in the published Hugging Face layout (frozen)
    decoder/               the decoder as a transformers Llama folder (frozen)
    english_tokenizer/     the LLaMA tokenizer with <DNA> (copied as given)
    bio_tokenizer/         the NT 6-mer tokenizer files, when given (checked against ours)
    manifest.json          SHA-256 and size of every file

Nothing is pickled and ``joblib.load`` is never called (see ``safe_pickle``). The rules that
map each array are in :mod:`chatnt_core.convert.official_rules`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from chatnt_core.config import parse_config, resolve_config
from chatnt_core.convert.haiku_params import ConversionError, HaikuParams, read_params
from chatnt_core.convert.official_rules import (
    DECODER_FINAL_EPS,
    NT_LAYER_NORM_EPS,
    UNUSED,
    Heads,
    decoder_state,
    encoder_state,
    llama_config,
    projection_state,
)
from chatnt_core.presets import preset_path
from chatnt_core.training.checkpoint import (
    FORMAT,
    LOCAL_PREFIX,
    CheckpointPayload,
    save_checkpoint,
)

PRESET = "chatnt-official"
PLACEHOLDER = "<DNA>"
Report = Callable[[str], None]


@dataclass(frozen=True)
class ConvertOptions:
    english_tokenizer: Path | None = None
    bio_tokenizer: Path | None = None
    heads: Heads = field(default_factory=Heads)
    max_context: int = 2048


def _repository_folder(source: Path, name: str) -> Path | None:
    """``name/`` next to the source as laid out in the Hub repository
    (``jax_params/params.joblib`` -> ``english_tokenizer/`` two levels up)."""
    places = [source] if source.is_dir() else []
    places += [source.parent, source.parent.parent]
    for place in places:
        if (place / name).is_dir():
            return place / name
    return None


def _english_tokenizer(source: Path, given: Path | None) -> Path:
    folder = given or _repository_folder(source, "english_tokenizer")
    if folder is None or not folder.is_dir():
        raise ConversionError(
            f"no English tokenizer: give --english-tokenizer (the 'english_tokenizer' folder "
            f"of InstaDeepAI/ChatNT); none was found next to {source}"
        )
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConversionError(f"the English tokenizer {folder} cannot be loaded ({exc})") from None
    return folder


def _bio_tokenizer(source: Path, given: Path | None) -> Path | None:
    """The NT tokenizer folder, if any, after checking its vocabulary is ours in id order."""
    folder = given or _repository_folder(source, "bio_tokenizer")
    if folder is None:
        return None
    from chatnt_nt.tokenizer import build_vocab

    vocab_file = folder / "vocab.txt"
    if not vocab_file.is_file():
        raise ConversionError(f"the bio tokenizer {folder} has no vocab.txt")
    tokens = [t.strip() for t in vocab_file.read_text(encoding="utf-8").splitlines() if t.strip()]
    ours = sorted(build_vocab().items(), key=lambda item: item[1])
    if tokens != [token for token, _ in ours]:
        raise ConversionError(
            f"the bio tokenizer {folder} is not the NT-v2 6-mer tokenizer chatnt_nt uses "
            f"({len(tokens)} tokens, ours {len(ours)}): the converted encoder would read "
            "other ids"
        )
    return folder


def _check_against(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Every name and shape of ``module``'s state dict (built on meta) is in ``state``."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))[:3]
        extra = sorted(set(got) - set(expected))[:3]
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])[:3]
        raise ConversionError(
            f"the converted {what} does not fit its module (missing {missing}, unexpected "
            f"{extra}, misshapen {wrong})"
        )


def _write_encoder(folder: Path, sizes: Any, state: dict[str, torch.Tensor]) -> None:
    from chatnt_nt import NTv2Model
    from chatnt_nt.checkpoint import save_pretrained
    from chatnt_nt.model import NTv2Config

    config = NTv2Config(
        sizes.hidden, sizes.intermediate, sizes.layers, sizes.heads, sizes.vocab, NT_LAYER_NORM_EPS
    )
    with torch.device("meta"):
        model = NTv2Model(config)
    _check_against(model, state, "NT-v2 encoder")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    save_pretrained(model, folder)


def _write_decoder(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    _check_against(model, state, "decoder")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _projection_module(model_data: dict[str, Any], dims: tuple[int, int, int]) -> torch.nn.Module:
    """The Perceiver the config describes, built on meta (names and shapes only)."""
    from chatnt_core.modality import Modality
    from chatnt_core.plugins import BuildContext, ComponentKind, get_registry

    resolved = resolve_config(parse_config(model_data, PRESET))
    part = resolved.projections[Modality.DNA]
    entry = get_registry().get(ComponentKind.PROJECTION, part.config.name)
    params = part.params
    context = BuildContext(
        modality=Modality.DNA,
        input_dim=dims[0],
        output_dim=dims[1],
        num_latents=resolved.config.num_latents,
        question_vocab_size=dims[2],
    )
    with torch.device("meta"):
        module = entry.build(params, context)
    assert isinstance(module, torch.nn.Module)
    return module


def _model_config(
    encoder_sizes: Any, projection_sizes: Any, options: ConvertOptions, source: Path
) -> dict[str, Any]:
    """The preset with the arrays' sizes and this folder's parts."""
    data = yaml.safe_load(preset_path(PRESET).read_text(encoding="utf-8"))
    data["description"] = f"The published ChatNT converted from {source.name}."
    data["num_latents"] = projection_sizes.num_latents
    slot = data["encoders"]["dna"]
    slot["params"] = {
        **{k: v for k, v in slot["params"].items() if k != "preset"},
        "path": f"{LOCAL_PREFIX}encoder",
        "layer_norm_eps": NT_LAYER_NORM_EPS,
        "local_files_only": True,
    }
    slot["projection"]["params"].update(
        num_layers=projection_sizes.layers,
        num_heads=projection_sizes.heads,
        head_dim=projection_sizes.head_dim,
        ffn_dim=projection_sizes.ffn,
        question_vocab_size=projection_sizes.question_vocab,
    )
    data["decoder"]["params"].update(
        path=f"{LOCAL_PREFIX}decoder",
        tokenizer=f"{LOCAL_PREFIX}english_tokenizer",
        local_files_only=True,
        placeholder_token=PLACEHOLDER,
        norm_eps={"model.norm": DECODER_FINAL_EPS},
        max_context=options.max_context,
    )
    return dict(data)


def convert_official(
    source: str | Path,
    out: str | Path,
    options: ConvertOptions | None = None,
    report: Report = lambda message: None,
) -> Path:
    """Convert the published parameters at ``source``; returns the checkpoint directory."""
    options = options or ConvertOptions()
    source = Path(source).expanduser()
    out = Path(out).expanduser()
    english = _english_tokenizer(source, options.english_tokenizer)
    bio = _bio_tokenizer(source, options.bio_tokenizer)
    report(f"reading {source}")
    params = HaikuParams(read_params(source), str(source))
    encoder_sizes, encoder = encoder_state(params, options.heads.encoder)
    projection_sizes, projection = projection_state(
        params, encoder_sizes.hidden, options.heads.projection
    )
    decoder_sizes, decoder = decoder_state(params, options.heads.decoder)
    leftover = params.leftover(UNUSED)
    if leftover:
        raise ConversionError(
            f"{source} holds {len(leftover)} parameter(s) the converter does not know, e.g. "
            f"'{leftover[0]}': not a ChatNT of the published architecture"
        )
    if projection_sizes.dim != decoder_sizes.hidden:
        raise ConversionError(
            f"the Perceiver's width {projection_sizes.dim} differs from the decoder's "
            f"{decoder_sizes.hidden}: the parameters come from different models"
        )
    model_data = _model_config(encoder_sizes, projection_sizes, options, source)
    dims = (encoder_sizes.hidden, projection_sizes.dim, projection_sizes.question_vocab)
    _check_against(_projection_module(model_data, dims), projection, "Perceiver")
    resolved = resolve_config(parse_config(model_data, PRESET))

    staging = out / ".convert-staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    report("writing the NT-v2 encoder")
    _write_encoder(staging / "encoder", encoder_sizes, encoder)
    report("writing the decoder")
    _write_decoder(staging / "decoder", llama_config(decoder_sizes, options.max_context), decoder)
    del encoder, decoder

    def assets(directory: Path) -> None:
        for name in ("encoder", "decoder"):
            (staging / name).replace(directory / name)
        shutil.copytree(english, directory / "english_tokenizer")
        if bio is not None:
            shutil.copytree(bio, directory / "bio_tokenizer")

    config = {
        "format": FORMAT,
        "step": 0,
        "model": resolved.to_dict(),
        "plugins": resolved.plugin_versions(),
        "train": {"seed": 0},
        "converted": {"from": "official-chatnt", "source": str(source)},
    }
    weights = {f"projections.dna.{k}": v.contiguous() for k, v in projection.items()}
    report("writing the checkpoint and its manifest")
    payload = CheckpointPayload(config, weights, {}, None, assets=assets)
    try:
        return save_checkpoint(out, 0, payload)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
