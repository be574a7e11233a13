"""``hf-causal-lm``: any Hugging Face ``AutoModelForCausalLM`` as a chatnt Decoder.

The model is loaded from a directory, a GGUF file (dequantised), a model store name (see
``chatnt_core.model_store``) or a hub id (``path``), or built with random weights from a
config dict (``random_init``). The placeholder string is added to the tokenizer as
one special token; the embedding table is *not* resized, because the core overwrites the
placeholder rows with projected sequence vectors anyway: ``embed_tokens`` looks the
placeholder (and any other id past the table) up as the pad token instead.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import AddedToken
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from chatnt_core.errors import ConfigError
from chatnt_core.inference.rows_first import rows_first
from chatnt_core.interfaces import Decoder, DecoderOutput
from chatnt_core.model_store import (
    load_gguf_model,
    quiet_hf_progress_bars,
    resolve_decoder_path,
)
from chatnt_core.plugins import BuildContext
from chatnt_hf_decoders.byte_tokenizer import build_byte_tokenizer
from chatnt_hf_decoders.kv_cache import drop_tail, reserve

BYTES_TOKENIZER = "bytes"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFCausalLMParams(BaseModel):
    """The ``params:`` block of a ``hf-causal-lm`` decoder."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None,
        description="local model directory (with config.json), a .gguf file, a model store "
        "name (`chatnt models list`) or a Hugging Face hub id",
    )
    gguf_file: str | None = Field(
        default=None,
        description="a GGUF file name inside the 'path' directory or hub repo; its weights are "
        "dequantised to 'dtype' and its tokenizer is used unless 'tokenizer' is given",
    )
    revision: str | None = Field(default=None, description="hub branch, tag or commit for 'path'")
    local_files_only: bool = Field(
        default=False, description="never contact the hub; use local or cached files only"
    )
    trust_remote_code: bool = Field(
        default=False, description="allow the checkpoint's own Python code to run (off by default)"
    )
    random_init: dict[str, Any] | None = Field(
        default=None,
        description="instead of 'path': a transformers config dict with 'model_type' "
        "(e.g. {model_type: llama, hidden_size: 32, ...}) for a randomly initialised model; "
        "vocab_size defaults to the tokenizer's size",
    )
    seed: int = Field(default=0, description="seed for the random_init weights")
    tokenizer: str | None = Field(
        default=None,
        description="tokenizer directory, .gguf file, model store name or hub id, or 'bytes' "
        "for the built-in byte-level tokenizer; defaults to 'path' (required with random_init)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="dtype of the model weights"
    )
    placeholder_token: str = Field(
        default="<seq>", min_length=1, description="special token marking sequence-embedding rows"
    )
    max_context: int | None = Field(
        default=None, ge=1, description="longest prompt in tokens; default: max_position_embeddings"
    )
    placeholder_embedding: Literal["pad", "clamp"] = Field(
        default="pad",
        description="how ids past the embedding table (the placeholder) are embedded: 'pad', "
        "as the pad token; 'clamp', as the table's last row, which is what the official "
        "ChatNT's JAX gather does and what its published weights were trained with",
    )
    norm_eps: dict[str, float] = Field(
        default_factory=dict,
        description="epsilon per normalisation module, by module name or glob (e.g. "
        "{'model.norm': 1.0e-5}); for checkpoints trained with norms whose epsilons "
        "differ (the published ChatNT: layers 1e-6, final norm 1e-5), which transformers "
        "configs cannot express",
    )

    @model_validator(mode="after")
    def _one_source(self) -> HFCausalLMParams:
        if (self.path is None) == (self.random_init is None):
            raise ValueError(
                "give exactly one of 'path' (pretrained weights) or 'random_init' "
                "(a config dict for random weights)"
            )
        if self.random_init is not None:
            if "model_type" not in self.random_init:
                raise ValueError("random_init needs a 'model_type', e.g. model_type: llama")
            if self.tokenizer is None:
                raise ValueError(
                    "random_init needs a 'tokenizer': a directory, a hub id or 'bytes'"
                )
        if self.gguf_file is not None:
            if self.path is None:
                raise ValueError("gguf_file needs 'path': the directory or hub repo holding it")
            if _is_gguf(self.path):
                raise ValueError(
                    "give the GGUF file once: as 'path', or as 'gguf_file' inside 'path'"
                )
        return self


def _is_gguf(reference: str) -> bool:
    return reference.lower().endswith(".gguf")


def _looks_local(reference: str) -> bool:
    """True for strings that can only be a filesystem path, never a hub id."""
    return (
        os.path.isabs(reference)
        or reference.startswith(("./", "../", "~", ".\\", "..\\"))
        or reference.count("/") > 1
        or "\\" in reference
    )


def _load_error(what: str, reference: str, exc: BaseException | None = None) -> ConfigError:
    fix = (
        "give a local directory with config.json, a .gguf file, a model store name "
        "(`chatnt models list`) or a hub id you have cached"
    )
    if what == "tokenizer":
        fix = (
            "give a local tokenizer directory, a .gguf file, a model store name, a hub id "
            "you have cached, or 'bytes'"
        )
    if exc is None:
        return ConfigError(f"decoder {what} '{reference}' not found: {fix}")
    lines = str(exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    return ConfigError(f"decoder {what} '{reference}' could not be loaded ({reason}): {fix}")


def _locate(what: str, reference: str, gguf_file: str | None) -> tuple[str, str | None]:
    """``(directory or hub id, GGUF file name or None)`` to load ``reference`` from: a model
    store name becomes its folder, a path to a .gguf file its directory and file name."""
    location = os.path.expanduser(resolve_decoder_path(reference))
    if gguf_file is None and _is_gguf(location):
        if not os.path.isfile(location):
            raise _load_error(what, reference)
        return os.path.dirname(os.path.abspath(location)), os.path.basename(location)
    if _looks_local(location) and not os.path.isdir(location):
        raise _load_error(what, reference)
    if (
        gguf_file is not None
        and os.path.isdir(location)
        and not os.path.isfile(os.path.join(location, gguf_file))
    ):
        raise ConfigError(
            f"decoder {what} '{reference}' has no GGUF file '{gguf_file}': give the name of "
            "a .gguf file in that directory"
        )
    return location, gguf_file


def load_tokenizer(
    reference: str,
    revision: str | None = None,
    local_files_only: bool = False,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
) -> PreTrainedTokenizerBase:
    """A tokenizer from a directory, GGUF file, store name or hub id, or the built-in one
    for ``'bytes'``; ``gguf_file`` names a GGUF file inside the ``reference`` directory."""
    if reference == BYTES_TOKENIZER:
        return build_byte_tokenizer()
    location, gguf_name = _locate("tokenizer", reference, gguf_file)
    options: dict[str, Any] = {} if gguf_name is None else {"gguf_file": gguf_name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location,
            revision=revision,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            **options,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error("tokenizer", reference, exc) from exc
    return tokenizer


def load_model(params: HFCausalLMParams, tokenizer_size: int) -> PreTrainedModel:
    """The causal LM the params describe: pretrained weights or a seeded random init."""
    dtype = _DTYPES[params.dtype]
    if params.path is not None:
        location, gguf_file = _locate("path", params.path, params.gguf_file)
        options: dict[str, Any] = {
            "revision": params.revision,
            "local_files_only": params.local_files_only,
            "trust_remote_code": params.trust_remote_code,
        }
        try:
            if gguf_file is not None:
                model = load_gguf_model(location, gguf_file, dtype, **options)
            else:
                with quiet_hf_progress_bars():  # a few seconds: no per-tensor bar in users' answers
                    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **options)
        except (OSError, ValueError, KeyError) as exc:
            raise _load_error("path", params.path, exc) from exc
        return model

    assert params.random_init is not None  # guaranteed by the params validator
    settings = dict(params.random_init)
    settings.setdefault("vocab_size", tokenizer_size)
    if settings["vocab_size"] < tokenizer_size:
        raise ConfigError(
            f"decoder random_init vocab_size {settings['vocab_size']} is smaller than the "
            f"tokenizer's {tokenizer_size} ids: raise it or leave it out to use the tokenizer size"
        )
    model_type = settings.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **settings)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, trust_remote_code=params.trust_remote_code
            )
    except ValueError as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise ConfigError(
            f"decoder random_init with model_type '{model_type}' failed ({reason}): give a "
            "causal-LM model_type transformers knows (e.g. llama) and valid config fields"
        ) from exc
    return model


def apply_norm_eps(model: torch.nn.Module, norm_eps: dict[str, float]) -> None:
    """Set the epsilon of the normalisation modules ``norm_eps`` names (globs allowed).

    transformers' norms keep it as ``variance_epsilon`` (RMSNorm) or ``eps`` (LayerNorm);
    a pattern matching no such module is a config error, not silently ignored.
    """
    for pattern, eps in norm_eps.items():
        hits = 0
        for name, module in model.named_modules():
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            for attribute in ("variance_epsilon", "eps"):
                if isinstance(getattr(module, attribute, None), float):
                    setattr(module, attribute, float(eps))
                    hits += 1
        if hits == 0:
            raise ConfigError(
                f"decoder norm_eps: '{pattern}' names no normalisation module of the model "
                "(e.g. 'model.norm' or 'model.layers.*.input_layernorm')"
            )


def _as_int(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def _weight_shape(module: torch.nn.Module) -> tuple[int, int]:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0]), int(weight.shape[1])


class HFCausalLM(Decoder):
    """A Hugging Face causal LM and its tokenizer behind the chatnt Decoder interface.

    ``tokenizer`` is modified in place: the placeholder token is added and, when it has
    no pad token, its EOS token becomes the pad token.
    """

    # transformers uses a 4D mask as given (masking_utils), for every architecture built
    # on its mask functions; tests/test_tree_scoring.py checks the ones the tests build
    supports_tree_attention = True

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        placeholder_token: str = "<seq>",
        max_context: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        config = model.config
        self._embedding_rows, self.hidden_size = _weight_shape(model.get_input_embeddings())
        head = model.get_output_embeddings()
        self.vocab_size = _weight_shape(head)[0] if head is not None else int(config.vocab_size)
        eos = _as_int(tokenizer.eos_token_id)
        if eos is None:
            eos = _as_int(getattr(config, "eos_token_id", None))
        if eos is None:
            raise ConfigError(
                "the decoder tokenizer has no EOS token: use a tokenizer that defines one"
            )
        self.eos_token_id = eos
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            pad = _as_int(tokenizer.pad_token_id)
            self.pad_token_id = eos if pad is None else pad
        else:
            self.pad_token_id = int(tokenizer.pad_token_id)
        # The id embed_tokens uses in place of ids the table has no row for.
        self._fallback_id = self.pad_token_id if self.pad_token_id < self._embedding_rows else 0

        tokenizer.add_tokens(
            [AddedToken(placeholder_token, special=True, normalized=False)], special_tokens=True
        )
        placeholder_ids = tokenizer.encode(placeholder_token, add_special_tokens=False)
        if len(placeholder_ids) != 1:
            raise ConfigError(
                f"placeholder_token '{placeholder_token}' tokenizes to {len(placeholder_ids)} "
                "ids instead of one: choose another placeholder_token"
            )
        self.placeholder_token = placeholder_token
        self.placeholder_token_id = int(placeholder_ids[0])
        self.tokenizer_size = len(tokenizer)
        # the placeholder may lie past the table (the published ChatNT's <DNA> is 32000 of
        # a 32000-row table): its rows are overwritten or embedded on purpose
        beyond = len(tokenizer) - self._embedding_rows
        beyond -= 1 if self.placeholder_token_id >= self._embedding_rows else 0
        if beyond > 0:
            warnings.warn(
                f"the decoder tokenizer has {len(tokenizer)} ids but the model's embedding "
                f"table only {self._embedding_rows} rows; ids past the table embed as padding",
                stacklevel=2,
            )

        if max_context is None:
            max_context = _as_int(getattr(config, "max_position_embeddings", None))
        if max_context is None:
            raise ConfigError(
                "the decoder config has no max_position_embeddings: set params.max_context"
            )
        self.max_context = max_context
        # transformers 5.x renamed the cache argument (the old name warns on every call)
        forward_params = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_params else "past_key_values"
        self.model.eval()

    @classmethod
    def from_params(cls, params: HFCausalLMParams) -> HFCausalLM:
        """Load (or randomly build) the model and tokenizer the params describe."""
        tokenizer_reference = params.tokenizer if params.tokenizer is not None else params.path
        assert tokenizer_reference is not None  # guaranteed by the params validator
        same_place = tokenizer_reference == params.path
        tokenizer = load_tokenizer(
            tokenizer_reference,
            revision=params.revision if same_place else None,
            local_files_only=params.local_files_only,
            trust_remote_code=params.trust_remote_code,
            gguf_file=params.gguf_file if same_place else None,
        )
        model = load_model(params, tokenizer_size=len(tokenizer))
        apply_norm_eps(model, params.norm_eps)
        decoder = cls(model, tokenizer, params.placeholder_token, params.max_context)
        if params.placeholder_embedding == "clamp":
            decoder._fallback_id = -1  # the table's last row
        return decoder

    # -- text <-> ids -------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]
        bos = _as_int(self.tokenizer.bos_token_id)
        # chat templates that write the BOS themselves (Llama 3's <|begin_of_text|>,
        # SmolLM2's <|im_start|>) get no second one: the prompt stays the LLM's own
        if add_bos and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def native_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                "the decoder tokenizer has no chat template of its own: use prompt.template: vicuna"
            )
        rendered = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(rendered)

    # -- tensors ------------------------------------------------------------------------

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D); ids past the table (the placeholder) embed as padding,
        or as the table's last row with ``placeholder_embedding: clamp``."""
        fallback = self._fallback_id % self._embedding_rows
        safe_ids = input_ids.masked_fill(input_ids >= self._embedding_rows, fallback)
        embeddings: torch.Tensor = self.model.get_input_embeddings()(safe_ids)
        return embeddings

    def embedding_table(self) -> torch.Tensor:
        """(V, D) the input embedding weight itself (no copy)."""
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return weight[: self.vocab_size]

    def forward(
        self,
        inputs_embeds: torch.Tensor,  # (B, T, D)
        attention_mask: torch.Tensor,  # (B, T_past + T) bool
        position_ids: torch.Tensor,  # (B, T) long
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> DecoderOutput:
        with rows_first(self.model, inputs_embeds.shape[0] * inputs_embeds.shape[1]):
            output = self.model(
                inputs_embeds=inputs_embeds.to(self.model.dtype),
                attention_mask=self._mask(attention_mask),
                position_ids=position_ids,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **{self._cache_argument: past_key_values},
            )
        cache = getattr(output, self._cache_argument, None) if use_cache else None
        return DecoderOutput(logits=output.logits, past_key_values=cache)

    def _mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """A padding mask as transformers takes it (long), or a bool attention grid as the
        additive float mask transformers uses as-is in place of its causal mask."""
        if attention_mask.dim() != 4:
            return attention_mask.long()
        dtype = self.model.dtype
        grid = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
        return grid.masked_fill(~attention_mask.bool(), torch.finfo(dtype).min)

    def reserve_cache(self, past_key_values: Any, extra_tokens: int) -> Any:
        return reserve(past_key_values, extra_tokens)

    def drop_cache_tail(self, past_key_values: Any, tokens: int) -> bool:
        return drop_tail(past_key_values, tokens)

    def repeat_cache(self, past_key_values: Any, batch_size: int) -> Any:
        layers = getattr(past_key_values, "layers", None)
        if layers is None:
            raise NotImplementedError("only transformers' DynamicCache can be repeated")
        data = [
            (layer.keys.expand(batch_size, -1, -1, -1), layer.values.expand(batch_size, -1, -1, -1))
            for layer in layers
        ]
        return DynamicCache(data, config=self.model.config)


def build_hf_causal_lm(params: HFCausalLMParams, context: BuildContext) -> HFCausalLM:
    """The registered factory: ``factory(params, context)``; the context is not needed."""
    del context
    return HFCausalLM.from_params(params)
