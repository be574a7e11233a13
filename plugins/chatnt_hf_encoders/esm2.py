"""``esm2``: Meta's ESM-2 protein language model (transformers ``EsmModel``) as an Encoder.

Weights come from ``path`` (a directory or hub id) or from a ``preset``'s hub id; with
``random_init`` the preset's architecture is built with seeded random weights and nothing
is read from disk or the hub. ``preset: tiny`` (hidden 32, 2 layers) always does so.

Token ids are one per residue, in the fixed ESM-2 vocabulary (``<cls>`` 0, ``<pad>`` 1,
``<eos>`` 2, ``<unk>`` 3, then ``L A G V S E R T I D P K Q N F Y M H W C X B U Z O . -``,
``<null_1>``, ``<mask>``). Input is upper-cased; letters of chatnt's protein alphabet
that ESM-2 lacks (``J``, ``*``) become ``<unk>``. Each sequence is encoded as
``<cls> residues <eos>``, so ``max_tokens`` (1024, ESM-2's training context) fits 1022
residues.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn
from transformers import (
    AutoConfig,
    AutoTokenizer,
    EsmConfig,
    EsmModel,
    EsmTokenizer,
    PreTrainedTokenizerBase,
)

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
    from_pretrained,
    seeded,
    vocab_tokenizer,
)

ESM2_VOCAB: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
)  # fmt: skip

Esm2Preset = Literal["tiny", "8m", "35m", "150m", "650m", "3b"]
ESM2_HUB_IDS: dict[str, str] = {
    "8m": "facebook/esm2_t6_8M_UR50D",
    "35m": "facebook/esm2_t12_35M_UR50D",
    "150m": "facebook/esm2_t30_150M_UR50D",
    "650m": "facebook/esm2_t33_650M_UR50D",
    "3b": "facebook/esm2_t36_3B_UR50D",
}
# preset -> (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size)
ESM2_ARCHITECTURES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (32, 2, 4, 64),
    "8m": (320, 6, 20, 1280),
    "35m": (480, 12, 20, 1920),
    "150m": (640, 30, 20, 2560),
    "650m": (1280, 33, 20, 5120),
    "3b": (2560, 36, 40, 10240),
}


class Esm2Params(HFEncoderCommonParams):
    """The ``params:`` block of an ``esm2`` encoder."""

    preset: Esm2Preset | None = Field(
        default=None,
        description="model size: tiny (random, for tests), 8m, 35m, 150m, 650m or 3b "
        "(facebook/esm2_* on the hub)",
    )
    random_init: bool = Field(
        default=False,
        description="build the preset's architecture with random weights; nothing is loaded "
        "(always on for preset tiny)",
    )
    max_tokens: int = Field(
        default=1024, ge=3, description="longest input in tokens, <cls> and <eos> included"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Esm2Params:
        check_weight_source(self.random_init, self.preset, self.path, "8m", "ESM-2")
        return self


def esm2_config(preset: str) -> EsmConfig:
    """The transformers config of a preset (as in the facebook/esm2_* config.json files)."""
    hidden, layers, heads, ffn = ESM2_ARCHITECTURES[preset]
    return EsmConfig(
        vocab_size=len(ESM2_VOCAB),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026,
        layer_norm_eps=1e-5,
        position_embedding_type="rotary",
        emb_layer_norm_before=False,
        token_dropout=True,
        pad_token_id=ESM2_VOCAB.index("<pad>"),
        mask_token_id=ESM2_VOCAB.index("<mask>"),
        eos_token_id=ESM2_VOCAB.index("<eos>"),
    )


def esm2_tokenizer() -> EsmTokenizer:
    """The ESM-2 tokenizer, built in code (identical ids to facebook/esm2_*)."""
    return vocab_tokenizer(ESM2_VOCAB)


class Esm2Encoder(PerLetterEncoder):
    """ESM-2 (or any ``EsmModel`` with the ESM per-residue vocabulary) for proteins."""

    def __init__(
        self, model: EsmModel, tokenizer: PreTrainedTokenizerBase, params: Esm2Params | None = None
    ) -> None:
        params = params or Esm2Params(preset="tiny")
        super().__init__(
            model,
            tokenizer,
            name="esm2",
            modality=Modality.PROTEIN,
            max_tokens=params.max_tokens,
            long_sequences=params.long_sequences,
            max_chunks=params.max_chunks,
        )

    @classmethod
    def from_params(cls, params: Esm2Params) -> Esm2Encoder:
        dtype = DTYPES[params.dtype]
        if params.random_init or params.preset == "tiny":
            assert params.preset is not None  # guaranteed by the params validator
            with seeded(params.seed):
                model = EsmModel(esm2_config(params.preset), add_pooling_layer=False)
            return cls(nn.Module.to(model, dtype), esm2_tokenizer(), params)

        reference = params.path or ESM2_HUB_IDS[str(params.preset)]
        options: dict[str, Any] = {
            "revision": params.revision,
            "local_files_only": params.local_files_only,
            "fix": PRESET_FIX if params.path is None else LOAD_FIX,
        }
        config = from_pretrained(AutoConfig.from_pretrained, "esm2", "path", reference, **options)
        if config.model_type != "esm":
            raise ConfigError(
                f"esm2 path '{reference}' holds a '{config.model_type}' model, not ESM: use the "
                "hf-encoder encoder for other architectures"
            )
        tokenizer = from_pretrained(
            AutoTokenizer.from_pretrained, "esm2", "tokenizer", reference, **options
        )
        with seeded(params.seed):  # any weight the checkpoint lacks is initialised reproducibly
            model = from_pretrained(
                EsmModel.from_pretrained,
                "esm2",
                "path",
                reference,
                add_pooling_layer=False,
                dtype=dtype,
                **options,
            )
        return cls(model, tokenizer, params)


def build_esm2(params: Esm2Params, context: BuildContext) -> Esm2Encoder:
    """The registered factory; refuses any slot but ``protein``."""
    check_modality("esm2", Modality.PROTEIN, context)
    return Esm2Encoder.from_params(params)
