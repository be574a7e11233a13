"""``hf-encoder``: any Hugging Face ``AutoModel`` + ``AutoTokenizer`` as an Encoder.

For sequence models without a dedicated plugin (DNABERT, nucleotide BERTs, ...). The
model is loaded from ``path`` (a directory or hub id); its tokenizer does the
tokenization, subword merges included, and its own special tokens wrap each sequence:
they are found once, by tokenizing a short probe sequence with and without them, so any
``[CLS] ... [SEP]`` or ``<cls> ... <eos>`` layout works. The embeddings are the model's
``last_hidden_state`` (for an encoder-decoder model, that of its encoder).

The modality is declared (``modality: dna``) because nothing in a checkpoint says it
reliably; it must equal the config slot the encoder fills. ``max_tokens`` defaults to the
tokenizer's ``model_max_length`` when that is a real limit, else to the config's
``max_position_embeddings``; set it explicitly for models whose position ids are offset
(RoBERTa-style) or unbounded. Long sequences follow the shared policy in token windows.
Checkpoint code is never run unless ``trust_remote_code: true``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.modeling_utils import PreTrainedModel

from chatnt_core.errors import ConfigError
from chatnt_core.modality import Modality
from chatnt_core.plugins import BuildContext
from chatnt_hf_encoders.base import HFEncoderCommonParams, HFSequenceEncoder
from chatnt_hf_encoders.loading import DTYPES, from_pretrained, seeded

# A short sequence of each modality, tokenized once to find the special-token layout.
PROBES = {Modality.DNA: "ACGTACGT", Modality.RNA: "ACGUACGU", Modality.PROTEIN: "MKVLAG"}
_SANE_MAX_LENGTH = 1_000_000  # transformers uses ~1e30 for "no limit recorded"


class HFEncoderParams(HFEncoderCommonParams):
    """The ``params:`` block of an ``hf-encoder`` encoder."""

    path: str = Field(description="local model directory (with config.json) or a hub id")
    modality: Literal["dna", "rna", "protein"] = Field(
        description="what the model reads; must be the encoder slot it is configured under"
    )
    trust_remote_code: bool = Field(
        default=False, description="allow the checkpoint's own Python code to run (off by default)"
    )
    max_tokens: int | None = Field(
        default=None,
        ge=2,
        description="longest input in tokens, special tokens included; default: the "
        "tokenizer's model_max_length, else the config's max_position_embeddings",
    )
    uppercase: bool = Field(default=True, description="upper-case sequences before tokenizing")
    output: Literal["last_hidden_state"] = Field(
        default="last_hidden_state", description="which model output is the embedding"
    )


def special_layout(tokenizer: PreTrainedTokenizerBase, probe: str) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a sequence (e.g. [CLS] and [SEP])."""
    body = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    if body:
        for start in range(len(full) - len(body) + 1):
            if full[start : start + len(body)] == body:
                return full[:start], full[start + len(body) :]
    raise ConfigError(
        f"hf-encoder: the tokenizer's special tokens do not wrap the sequence '{probe}' "
        f"(ids {body} become {full}): use a tokenizer that adds tokens only around it"
    )


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_max_tokens(tokenizer: PreTrainedTokenizerBase, config: Any) -> int:
    """The tokenizer's model_max_length when it is a real limit, else the position table."""
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length <= _SANE_MAX_LENGTH:
        return length
    positions = _config_int(config, "max_position_embeddings", "n_positions")
    if positions is None:
        raise ConfigError(
            "hf-encoder cannot tell the model's longest input (no model_max_length, no "
            "max_position_embeddings): set max_tokens in the encoder params"
        )
    return positions


class HFEncoder(HFSequenceEncoder):
    """A transformers encoder model and its tokenizer, for one declared modality."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, params: HFEncoderParams
    ) -> None:
        config = model.config
        hidden_size = _config_int(config, "hidden_size", "d_model")
        if hidden_size is None:
            raise ConfigError("hf-encoder: the model config has no hidden_size or d_model")
        modality = Modality(params.modality)
        prefix, suffix = special_layout(tokenizer, PROBES[modality])
        pad_id = tokenizer.pad_token_id
        if getattr(config, "is_encoder_decoder", False):
            model = model.get_encoder()
        super().__init__(
            model,
            name="hf-encoder",
            modality=modality,
            hidden_size=hidden_size,
            max_tokens=params.max_tokens or default_max_tokens(tokenizer, config),
            prefix_ids=prefix,
            suffix_ids=suffix,
            pad_id=0 if pad_id is None else int(pad_id),  # padding is masked out anyway
            long_sequences=params.long_sequences,
            max_chunks=params.max_chunks,
        )
        self.tokenizer = tokenizer
        self.uppercase = params.uppercase

    def body_ids(self, sequence: str) -> list[int]:
        text = sequence.upper() if self.uppercase else sequence
        encoded = self.tokenizer(text, add_special_tokens=False, verbose=False)
        return [int(i) for i in encoded["input_ids"]]

    @classmethod
    def from_params(cls, params: HFEncoderParams) -> HFEncoder:
        options: dict[str, Any] = {
            "revision": params.revision,
            "local_files_only": params.local_files_only,
            "trust_remote_code": params.trust_remote_code,
        }
        tokenizer = from_pretrained(
            AutoTokenizer.from_pretrained, "hf-encoder", "tokenizer", params.path, **options
        )
        config = from_pretrained(
            AutoConfig.from_pretrained, "hf-encoder", "path", params.path, **options
        )
        with seeded(params.seed):  # any weight the checkpoint lacks is initialised reproducibly
            model = from_pretrained(
                AutoModel.from_pretrained,
                "hf-encoder",
                "path",
                params.path,
                config=config,
                dtype=DTYPES[params.dtype],
                **options,
            )
        return cls(model, tokenizer, params)


def build_hf_encoder(params: HFEncoderParams, context: BuildContext) -> HFEncoder:
    """The registered factory; the declared modality must match the slot."""
    if context.modality is not None and Modality(context.modality) != Modality(params.modality):
        raise ConfigError(
            f"hf-encoder declares modality '{params.modality}' but is configured under the "
            f"'{context.modality}' encoder slot: make them the same"
        )
    return HFEncoder.from_params(params)
