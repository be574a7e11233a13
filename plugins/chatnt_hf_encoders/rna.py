"""``rna-fm``: the RNA-FM RNA language model, run on transformers' ``EsmModel``.

RNA-FM (Chen et al. 2022, github.com/ml4bio/RNA-FM) was trained with the ESM-1b code
base: 12 pre-LayerNorm transformer layers, hidden 640, 20 heads, FFN 5120 (erf GELU),
learned absolute positions, a LayerNorm after the embeddings and one after the last
layer, one token per nucleotide. transformers' ``EsmModel`` with
``position_embedding_type="absolute"``, ``emb_layer_norm_before=True`` and
``token_dropout=False`` is that architecture, so RNA-FM runs natively on it and no model
code is vendored.

Published weights are read from the multimolecule conversion (``multimolecule/rnafm``:
config.json + model.safetensors; the multimolecule package itself is AGPL-3.0 and heavy,
so it is *not* a dependency). :func:`convert_multimolecule_state_dict` renames its keys
to ``EsmModel``'s, checks every key and shape and raises a ConfigError naming any
mismatch. A checkpoint saved from this encoder's ``EsmModel`` (``model_type: esm``) loads
as is.

Vocabulary and ids: RNA-FM's own alphabet (ids 0-24): ``<cls> <pad> <eos> <unk>``, then
``A C G U R Y K M S W B D H V N -``, ``<null_1>``..``<null_4>``, ``<mask>``; ``<pad>`` is 1.
multimolecule re-orders these rows into its shared RNA vocabulary (``<pad>`` 0, ``<cls>``
1, ``<eos>`` 2, ``<unk>`` 3, ``<mask>`` 4, ``<null>`` 5, then ``ACGUNRYSWKMBDHVIX|.*-?``)
and invents rows for the letters RNA-FM never saw; the loader puts RNA-FM's own rows
back in RNA-FM order (the checkpoint's vocab.txt gives its order when present) and drops
the invented ones. Tokenizer rule: input is upper-cased, T is read as U, each IUPAC code
(R Y K M S W B D H V N) is its own token as in RNA-FM's training alphabet, any other
letter is ``<unk>``. A sequence is ``<cls> nucleotides <eos>``; ``max_tokens`` is 1024
(1022 nucleotides), the limit of RNA-FM's 1026-row position table.

Verified by reading multimolecule 0.2.2 (models/rnafm/modeling_rnafm.py,
convert_checkpoint.py, tokenisers/rna) and the original alphabet (fm/data.py,
fm/constants.py):

* key names and module order: embeddings (word, position, layer_norm), per layer
  ``attention.layer_norm`` -> ``attention.self.{query,key,value}`` -> ``attention.output
  .dense`` (+ residual), ``layer_norm`` -> ``intermediate.dense`` -> GELU ->
  ``output.dense`` (+ residual), final ``encoder.layer_norm``; the same computation as
  EsmLayer/EsmEncoder, whose GELU is the erf form (multimolecule: ``hidden_act: gelu``).
* positions: multimolecule (pad id 0) computes ``cumsum(mask) + pad + 1``, i.e. 2, 3, ...
  for real tokens ("an upstream off-by-one" it keeps for compatibility); EsmModel with
  RNA-FM's pad id 1 computes ``cumsum(mask) + 1``: the same rows, so the position table
  is copied unchanged. Both zero the embeddings of padded positions before layer 1.
* the row re-ordering of the word embeddings, inverted exactly for RNA-FM's tokens.

The tests check all of this against an independent re-implementation of the
multimolecule forward pass on a tiny random checkpoint in its key layout. Not verified
without the real weights: that the hub files hold exactly these key names (e.g. the
``model.`` prefix of its pre-training class; bare names also load, and the tied word
embeddings are also found under ``lm_head.decoder.weight``), that their
config.json matches the defaults assumed when a field is missing, and numerical parity
with the official RNA-FM embeddings. Heads (``lm_head``, ``ss_head``, pooler) are ignored;
``EsmModel``'s contact head has no counterpart and stays randomly initialised (unused).
mRNA-FM (codon tokens) is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file
from torch import nn
from transformers import EsmConfig, EsmModel, EsmTokenizer, PreTrainedTokenizerBase

from chatnt_core.errors import ConfigError
from chatnt_core.modality import Modality
from chatnt_core.plugins import BuildContext
from chatnt_hf_encoders.base import (
    HFEncoderCommonParams,
    PerLetterEncoder,
    check_modality,
    check_weight_source,
)
from chatnt_hf_encoders.loading import (
    DTYPES,
    LOAD_FIX,
    PRESET_FIX,
    fetch_file,
    from_pretrained,
    seeded,
    vocab_tokenizer,
)

RNAFM_VOCAB: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "A", "C", "G", "U", "R", "Y", "K", "M", "S", "W", "B", "D", "H", "V", "N", "-",
    "<null_1>", "<null_2>", "<null_3>", "<null_4>", "<mask>",
)  # fmt: skip
MULTIMOLECULE_RNA_VOCAB: tuple[str, ...] = (
    "<pad>", "<cls>", "<eos>", "<unk>", "<mask>", "<null>", *"ACGUNRYSWKMBDHVIX|.*-?",
)  # fmt: skip
RNAFM_HUB_ID = "multimolecule/rnafm"
RNAFM_MAX_POSITIONS = 1026
# preset -> (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size)
RNAFM_ARCHITECTURES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (32, 2, 4, 64),
    "rna-fm": (640, 12, 20, 5120),
}
_HEAD_PREFIXES = ("lm_head.", "ss_head.", "pooler.", "contact_head.", "model.pooler.")
# multimolecule backbone key (``model.`` prefix removed) -> EsmModel key
_RENAMES = (
    (re.compile(r"^(encoder\.layer\.\d+\.attention)\.layer_norm\."), r"\1.LayerNorm."),
    (re.compile(r"^(encoder\.layer\.\d+)\.layer_norm\."), r"\1.LayerNorm."),
    (re.compile(r"^encoder\.layer_norm\."), "encoder.emb_layer_norm_after."),
)


class RnaFmParams(HFEncoderCommonParams):
    """The ``params:`` block of an ``rna-fm`` encoder."""

    preset: Literal["tiny", "rna-fm"] | None = Field(
        default=None,
        description=f"tiny (random, for tests) or rna-fm (the {RNAFM_HUB_ID} hub checkpoint)",
    )
    random_init: bool = Field(
        default=False,
        description="build the preset's architecture with random weights; nothing is loaded "
        "(always on for preset tiny)",
    )
    max_tokens: int = Field(
        default=1024,
        ge=3,
        description="longest input in tokens, <cls> and <eos> included (at most 1024)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RnaFmParams:
        check_weight_source(self.random_init, self.preset, self.path, "rna-fm", "RNA-FM")
        return self


def rnafm_config(
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    ffn_size: int,
    *,
    max_positions: int = RNAFM_MAX_POSITIONS,
    layer_norm_eps: float = 1e-5,
    embed_norm: bool = True,
    token_dropout: bool = False,
) -> EsmConfig:
    """An ESM-1b style EsmConfig over RNA-FM's vocabulary."""
    return EsmConfig(
        vocab_size=len(RNAFM_VOCAB),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=ffn_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=max_positions,
        layer_norm_eps=layer_norm_eps,
        position_embedding_type="absolute",
        emb_layer_norm_before=embed_norm,
        token_dropout=token_dropout,
        pad_token_id=RNAFM_VOCAB.index("<pad>"),
        mask_token_id=RNAFM_VOCAB.index("<mask>"),
        eos_token_id=RNAFM_VOCAB.index("<eos>"),
    )


def rna_tokenizer() -> EsmTokenizer:
    """RNA-FM's vocabulary as an EsmTokenizer (saved next to the model it loads with it)."""
    return vocab_tokenizer(RNAFM_VOCAB)


def esm_config_from_multimolecule(config: Mapping[str, Any], source: str) -> EsmConfig:
    """The EsmConfig equivalent to a multimolecule ``rnafm`` config.json, or a ConfigError."""
    problems = []
    if config.get("codon", False):
        problems.append("codon: true (mRNA-FM's codon tokens are not supported)")
    if config.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type: {config['position_embedding_type']}")
    if config.get("hidden_act", "gelu") != "gelu":
        problems.append(f"hidden_act: {config['hidden_act']}")
    if config.get("is_decoder", False):
        problems.append("is_decoder: true")
    if problems:
        raise ConfigError(
            f"rna-fm checkpoint '{source}' is not an RNA-FM encoder this plugin can run "
            f"({'; '.join(problems)}): use the multimolecule/rnafm checkpoint"
        )
    return rnafm_config(
        int(config.get("hidden_size", 640)),
        int(config.get("num_hidden_layers", 12)),
        int(config.get("num_attention_heads", 20)),
        int(config.get("intermediate_size", 5120)),
        max_positions=int(config.get("max_position_embeddings", RNAFM_MAX_POSITIONS)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-5)),
        embed_norm=bool(config.get("embed_norm", True)),
        token_dropout=bool(config.get("token_dropout", False)),
    )


def rename_multimolecule_key(key: str) -> str | None:
    """A multimolecule RNA-FM key -> the EsmModel key; None for head weights (ignored)."""
    if key.startswith(_HEAD_PREFIXES):
        return None
    key = key.removeprefix("model.")
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _listing(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def reorder_word_embeddings(
    weight: torch.Tensor, vocab: Sequence[str], source: str
) -> torch.Tensor:
    """Rows in the checkpoint's vocabulary order -> rows in RNA-FM's order."""
    if weight.shape[0] != len(vocab):
        raise ConfigError(
            f"rna-fm checkpoint '{source}': the word embeddings have {weight.shape[0]} rows "
            f"but its vocabulary {len(vocab)} tokens: the checkpoint and its vocab.txt differ"
        )
    index = {token: i for i, token in enumerate(vocab)}
    rows, missing = [], []
    for token in RNAFM_VOCAB:
        row = index.get(token, index.get("<null>") if token.startswith("<null_") else None)
        if row is None:
            missing.append(token)
        rows.append(0 if row is None else row)
    if missing:
        raise ConfigError(
            f"rna-fm checkpoint '{source}': its vocabulary lacks RNA-FM tokens "
            f"{_listing(missing)}: use an RNA-FM checkpoint"
        )
    return weight[torch.tensor(rows)].clone()


def convert_multimolecule_state_dict(
    state: Mapping[str, torch.Tensor],
    model: EsmModel,
    source: str,
    vocab: Sequence[str] = MULTIMOLECULE_RNA_VOCAB,
) -> dict[str, torch.Tensor]:
    """Rename and check a multimolecule RNA-FM state dict against ``model``'s own."""
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("contact")}
    word_key, tied_key = "embeddings.word_embeddings.weight", "lm_head.decoder.weight"
    if tied_key in state and not {word_key, f"model.{word_key}"} & set(state):
        state = {**state, word_key: state[tied_key]}  # tied weights saved under the head's name
    converted: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state.items():
        name = rename_multimolecule_key(key)
        if name is None:
            continue
        if name not in expected:
            unexpected.append(key)
            continue
        if name == "embeddings.word_embeddings.weight":
            tensor = reorder_word_embeddings(tensor, vocab, source)
        converted[name] = tensor
    missing = sorted(set(expected) - set(converted))
    if missing or unexpected:
        parts = [f"missing {_listing(missing)}"] if missing else []
        parts += [f"unknown {_listing(unexpected)}"] if unexpected else []
        raise ConfigError(
            f"rna-fm checkpoint '{source}' does not match the RNA-FM architecture of its "
            f"config.json ({'; '.join(parts)}): use a multimolecule rnafm checkpoint"
        )
    wrong = [
        f"{name} {tuple(tensor.shape)} (expected {tuple(expected[name])})"
        for name, tensor in converted.items()
        if tensor.shape != expected[name]
    ]
    if wrong:
        raise ConfigError(
            f"rna-fm checkpoint '{source}' has tensors of the wrong shape: {_listing(wrong)}; "
            "its config.json and weights disagree"
        )
    return converted


def load_rnafm(params: RnaFmParams) -> EsmModel:
    """RNA-FM weights from ``path`` (or the preset's hub id) as an EsmModel."""
    reference = params.path or RNAFM_HUB_ID
    options: dict[str, Any] = {
        "revision": params.revision,
        "local_files_only": params.local_files_only,
        "fix": PRESET_FIX if params.path is None else LOAD_FIX,
    }
    config_file = fetch_file("rna-fm", reference, "config.json", **options)
    assert config_file is not None
    with open(config_file, encoding="utf-8") as handle:
        raw_config = json.load(handle)
    if raw_config.get("model_type") == "esm":  # saved from this encoder's EsmModel
        with seeded(params.seed):
            model = from_pretrained(
                EsmModel.from_pretrained,
                "rna-fm",
                "path",
                reference,
                add_pooling_layer=False,
                **options,
            )
        if model.config.vocab_size != len(RNAFM_VOCAB):
            raise ConfigError(
                f"rna-fm path '{reference}' holds an ESM model with {model.config.vocab_size} "
                f"tokens, not RNA-FM's {len(RNAFM_VOCAB)}: use the esm2 or hf-encoder encoder"
            )
        return model
    if raw_config.get("model_type") != "rnafm":
        raise ConfigError(
            f"rna-fm path '{reference}' holds a '{raw_config.get('model_type')}' model, not "
            "RNA-FM (model_type rnafm): use the hf-encoder encoder for other architectures"
        )
    config = esm_config_from_multimolecule(raw_config, reference)
    weights_file = fetch_file("rna-fm", reference, "model.safetensors", **options)
    vocab_file = fetch_file("rna-fm", reference, "vocab.txt", required=False, **options)
    vocab: Sequence[str] = MULTIMOLECULE_RNA_VOCAB
    if vocab_file is not None:
        with open(vocab_file, encoding="utf-8") as handle:
            vocab = [line.strip() for line in handle.read().splitlines()]
    assert weights_file is not None
    state = load_file(weights_file)
    with seeded(params.seed):
        model = EsmModel(config, add_pooling_layer=False)
    converted = convert_multimolecule_state_dict(state, model, reference, vocab)
    model.load_state_dict(converted, strict=False)
    return model


class RnaFmEncoder(PerLetterEncoder):
    """RNA-FM on EsmModel: upper-case, T read as U, one token per nucleotide."""

    def __init__(
        self,
        model: EsmModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        params: RnaFmParams | None = None,
    ) -> None:
        params = params or RnaFmParams(preset="tiny")
        # Absolute positions: the last token's position id (max_tokens + pad id) must exist.
        config = model.config
        limit = int(config.max_position_embeddings) - int(config.pad_token_id or 0) - 1
        if params.max_tokens > limit:
            raise ConfigError(
                f"rna-fm max_tokens={params.max_tokens} exceeds the model's {limit} positions: "
                f"set max_tokens to {limit} or less (long_sequences: chunk encodes longer ones)"
            )
        super().__init__(
            model,
            tokenizer if tokenizer is not None else rna_tokenizer(),
            name="rna-fm",
            modality=Modality.RNA,
            max_tokens=params.max_tokens,
            long_sequences=params.long_sequences,
            max_chunks=params.max_chunks,
        )

    def normalise(self, sequence: str) -> str:
        return sequence.upper().replace("T", "U")

    @classmethod
    def from_params(cls, params: RnaFmParams) -> RnaFmEncoder:
        if params.random_init or params.preset == "tiny":
            assert params.preset is not None  # guaranteed by the params validator
            with seeded(params.seed):
                model = EsmModel(
                    rnafm_config(*RNAFM_ARCHITECTURES[params.preset]), add_pooling_layer=False
                )
        else:
            model = load_rnafm(params)
        return cls(nn.Module.to(model, DTYPES[params.dtype]), rna_tokenizer(), params)


def build_rna_fm(params: RnaFmParams, context: BuildContext) -> RnaFmEncoder:
    """The registered factory; refuses any slot but ``rna``."""
    check_modality("rna-fm", Modality.RNA, context)
    return RnaFmEncoder.from_params(params)
