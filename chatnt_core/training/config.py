"""``TrainConfig``: everything a training run needs, validated before any weight loads.

Defaults follow the paper (Methods §1.2): Adam, lr 3e-5, betas (0.9, 0.999), eps 1e-8, no
weight decay, gradient clipping at 1.0, 65,536 tokens per update, a constant learning rate,
uniform sampling over tasks. A run is reproducible from this file plus the seed, which is
why the whole config is stored in every checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chatnt_core.config import ModelConfig, format_validation_error, read_yaml
from chatnt_core.errors import ConfigError

PAPER_TOKENS_PER_UPDATE = 65_536


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerConfig(_Strict):
    """Adam as in the paper; ``adamw`` decouples weight decay when it is non-zero."""

    name: Literal["adam", "adamw"] = "adam"
    lr: float = Field(3e-5, gt=0, description="peak learning rate")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class ScheduleConfig(_Strict):
    """Learning-rate schedule: linear warmup, then constant (the paper), linear or cosine."""

    name: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0, description="updates of linear warmup from 0")
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="floor of linear/cosine decay, as a fraction of lr"
    )


class LoraSettings(_Strict):
    """LoRA adapters on the decoder (through ``peft``); the base decoder stays frozen."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1, description="scaling numerator: adapters scale by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="module names to adapt, e.g. q_proj, k_proj, v_proj, o_proj",
    )
    active_from: Literal["first_sequence", "start"] = Field(
        "first_sequence",
        description="where the adapters act: 'first_sequence' - only at and after a row's "
        "first sequence placeholder, so a conversation without a sequence runs the bare "
        "decoder exactly (its English is kept); 'start' - everywhere",
    )


class DataConfig(_Strict):
    """Instruction datasets (``datasets`` directories in the record format) to train on."""

    paths: list[str] = Field(min_length=1, description="dataset directories")
    split: str = Field("train", description="split read from each directory")
    tasks: list[str] | None = Field(
        None, description="train on these tasks only (default: every task found)"
    )


class EncoderWarmupConfig(BaseModel):
    """``encoder_warmup:`` of a training config (see ``chatnt_core/training/warmup.py``)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1, description="probe updates before the chat training starts")
    batch_size: int = Field(16, ge=1, description="sequences per task and update")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate of encoder and probes")
    max_per_task: int = Field(
        5000, ge=1, description="training records per task the warm-up draws from"
    )


class LabelAnchorsConfig(BaseModel):
    """``label_anchors:`` of a training config (see ``chatnt_core/training/anchors.py``)."""

    model_config = ConfigDict(extra="forbid")

    warmup_steps: int = Field(
        0, ge=0, description="projection-only updates on the anchor loss before the chat training"
    )
    batch_size: int = Field(32, ge=1, description="sequences per warm-up update")
    lr: float = Field(
        1e-3, gt=0, description="peak Adam learning rate of the warm-up (cosine to a tenth)"
    )
    vocabulary: Literal["anchors", "full"] = Field(
        "anchors",
        description="the anchor softmax runs over the tokens of the task cards' anchors "
        "('anchors'; a word-output projection then also picks among them) or the "
        "LLM's whole vocabulary ('full')",
    )
    weight: float = Field(
        1.0, ge=0, description="weight of the anchor loss added to the chat loss (0: warm-up only)"
    )
    max_per_task: int = Field(
        5000, ge=1, description="training records per task the warm-up draws from"
    )


class TrainConfig(_Strict):
    """A training run. See docs/training.md for each field."""

    model: str | dict[str, Any] = Field(
        description="a preset name, a model YAML path, or an inline model config"
    )
    data: DataConfig
    output_dir: str = Field(min_length=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)  # type: ignore[arg-type]
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)  # type: ignore[arg-type]
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global grad norm")
    lr_scale: dict[Literal["encoders", "projections", "decoder"], float] = Field(
        default_factory=dict,
        description="per-part multiplier of the learning rate, e.g. {encoders: 0.1}",
    )
    encoder_warmup: EncoderWarmupConfig | None = Field(
        None,
        description="train the encoders on the training labels through linear probes "
        "before the chat training (chatnt_core/training/warmup.py); for encoders trained "
        "from scratch",
    )
    label_anchors: LabelAnchorsConfig | None = Field(
        None,
        description="teach the projections to spell each answer's label in the decoder's "
        "own token embeddings (chatnt_core/training/anchors.py): a warm-up, then a weighted "
        "loss during the chat training",
    )
    tokens_per_update: int | None = Field(
        None,
        ge=1,
        description="decoder tokens (prompt + placeholders + answers, no padding) per "
        f"update; default {PAPER_TOKENS_PER_UPDATE} unless samples_per_update is given",
    )
    samples_per_update: int | None = Field(None, ge=1, description="fixed samples per update")
    micro_batch_size: int = Field(8, ge=1, description="samples per forward pass and process")
    max_steps: int | None = Field(None, ge=1, description="stop after this many updates")
    epochs: float | None = Field(
        None, gt=0, description="stop after this many times the dataset size in samples"
    )
    seed: int = Field(
        0,
        ge=0,
        description="seeds task sampling, dropout and LoRA init (model weights: model seed)",
    )
    log_every: int = Field(10, ge=1, description="updates between metric rows")
    save_every: int = Field(500, ge=1, description="updates between checkpoints")
    keep_last: int = Field(3, ge=1, description="checkpoints kept on disk")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast to bfloat16 (GPU or CPU); weights stay fp32"
    )
    gradient_checkpointing: bool = False
    bucket_by_length: bool = Field(True, description="sort each update by length before cutting")
    lora: LoraSettings | None = None
    progress: bool = Field(True, description="rich progress bar (only on a terminal)")
    tensorboard: bool = True

    @field_validator("data", mode="before")
    @classmethod
    def _data_shorthand(cls, value: Any) -> Any:
        """``data: DIR`` or ``data: [DIR, ...]`` is short for ``data: {paths: [...]}``."""
        if isinstance(value, str):
            return {"paths": [value]}
        if isinstance(value, list):
            return {"paths": value}
        return value

    @field_validator("model")
    @classmethod
    def _inline_model_valid(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(value, dict):
            try:
                ModelConfig.model_validate(value)
            except ValidationError as exc:
                raise ValueError(format_validation_error(exc)) from None
        return value

    @model_validator(mode="after")
    def _update_size_and_length(self) -> TrainConfig:
        if self.tokens_per_update is not None and self.samples_per_update is not None:
            raise ValueError("give tokens_per_update or samples_per_update, not both")
        if self.tokens_per_update is None and self.samples_per_update is None:
            self.tokens_per_update = PAPER_TOKENS_PER_UPDATE
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of max_steps or epochs")
        if self.schedule.name != "constant" and self.max_steps is None:
            raise ValueError(f"schedule {self.schedule.name!r} decays to max_steps: set max_steps")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_train_config(data: Any, source: str = "training config") -> TrainConfig:
    """Validate a mapping; errors become one ConfigError line led by each field path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None


def training_preset_path(name: str) -> Path:
    """A shipped training config under ``registry/training/`` by stem name."""
    from chatnt_core.presets import registry_root

    return registry_root() / "training" / f"{name}.yaml"


def load_train_config(source: str | Path) -> TrainConfig:
    """Load a training YAML from a path, or a shipped one by name (e.g. ``tiny-demo``)."""
    path = Path(source)
    if not path.is_file():
        shipped = training_preset_path(str(source))
        if not shipped.is_file():
            raise ConfigError(f"training config '{source}' not found: give a YAML file path")
        path = shipped
    return parse_train_config(read_yaml(path), source=str(path))
