"""Pydantic models for a ChatNT assembly, and their two-stage validation.

Stage 1 (``ModelConfig.model_validate``): the shape of the file - known fields only
(``extra="forbid"``), types, ranges. Stage 2 (``resolve_config``): every component name
exists in the plugin registry, then each ``params`` block validates against that
component's own params model. Neither stage loads weights.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatnt_core.errors import ConfigError, UnknownComponentError
from chatnt_core.modality import Modality
from chatnt_core.plugins import ComponentKind, PluginRegistry, get_registry

VICUNA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant that can "
    "handle bio sequences. The assistant gives helpful, detailed, and polite answers to "
    "the user's questions."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentConfig(_Strict):
    """One plugin component: which one (``name``), its ``params``, trained or frozen."""

    name: str = Field(min_length=1, description="registered component name")
    params: dict[str, Any] = Field(default_factory=dict, description="the plugin's params")
    trainable: bool = Field(True, description="False freezes every weight of the component")


class DecoderConfig(ComponentConfig):
    trainable: bool = Field(False, description="the paper keeps the decoder frozen")


class EncoderSlot(ComponentConfig):
    """An encoder for one modality and the projection that feeds its output to the decoder."""

    projection: ComponentConfig
    cache_size: int = Field(
        256,
        ge=0,
        description="encoder outputs kept for reuse across prompts (only while the encoder "
        "is frozen or in eval mode); 0 turns the cache off",
    )


class PromptConfig(_Strict):
    template: Literal["vicuna", "native"] = Field(
        "vicuna",
        description="'vicuna': the paper's 'USER: ... ASSISTANT:' format; "
        "'native': the decoder tokenizer's own chat template",
    )
    system_prompt: str = Field(VICUNA_SYSTEM_PROMPT, description="system message")
    tag_names: Literal["replace", "keep", "alias"] = Field(
        "replace",
        description="'replace': each @tag becomes its K sequence vectors (ChatNT); 'keep': "
        "the decoder also reads the tag's name before its vectors, so answers can name it; "
        "'alias': as 'keep' but the decoder reads @seq1, @seq2, ... (order of first "
        "appearance) and answers are given back with the user's names, so nothing the model "
        "computes depends on how the files were named. The projection's question never holds "
        "tag names in any mode.",
    )
    placeholder_layout: Literal["replace", "insert_before_kept"] = Field(
        "replace",
        description="'replace': each tag becomes K placeholder rows that the K projected "
        "vectors overwrite; 'insert_before_kept': the K vectors are inserted before one "
        "placeholder token that stays and is embedded as the decoder embeds it (the layout "
        "the published ChatNT weights were trained with; see docs/published-chatnt.md)",
    )
    question_scope: Literal["user_turn", "whole_prompt"] = Field(
        "user_turn",
        description="what the projection reads as the question: 'user_turn', the user "
        "message holding the tag; 'whole_prompt', the templated prompt up to and including "
        "that message (system text, 'USER: ... ASSISTANT:', tags as one placeholder each), "
        "as the published ChatNT's Perceiver does",
    )


class ModelConfig(_Strict):
    """A full assembly: encoders (one per modality), their projections, one decoder."""

    name: str = Field("custom", description="a label for the assembly")
    description: str = ""
    num_latents: int = Field(64, ge=1, le=4096, description="K: vectors per sequence tag")
    seed: int = Field(0, description="seeds every randomly initialised weight of the assembly")
    encoders: dict[Modality, EncoderSlot] = Field(description="encoder per modality")
    decoder: DecoderConfig
    prompt: PromptConfig = Field(default_factory=PromptConfig)  # type: ignore[arg-type]

    @field_validator("encoders")
    @classmethod
    def _at_least_one(cls, value: dict[Modality, EncoderSlot]) -> dict[Modality, EncoderSlot]:
        if not value:
            raise ValueError("give at least one encoder, e.g. under 'dna:'")
        return value


@dataclass(frozen=True)
class ResolvedComponent:
    kind: ComponentKind
    path: str  # e.g. "encoders.dna.projection"
    config: ComponentConfig
    params: BaseModel  # validated against the plugin's params model
    plugin: str
    version: str


@dataclass(frozen=True)
class ResolvedConfig:
    """A config whose names exist and whose params passed their plugins' models."""

    config: ModelConfig  # with every params block filled in with defaults
    encoders: dict[Modality, ResolvedComponent]
    projections: dict[Modality, ResolvedComponent]
    decoder: ResolvedComponent

    def to_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def plugin_versions(self) -> dict[str, str]:
        parts = [*self.encoders.values(), *self.projections.values(), self.decoder]
        return {part.plugin: part.version for part in parts}


def format_validation_error(
    error: ValidationError, prefix: str = "", fields: Iterable[str] = ()
) -> str:
    """One line per problem, each led by its dotted field path; an unknown field gets the
    closest of ``fields`` (the model's own) as a suggestion."""
    known = list(fields)
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in (*([prefix] if prefix else []), *item["loc"]))
        message = f"{path or '<root>'}: {item['msg']}"
        if item["type"] == "extra_forbidden" and known and item["loc"]:
            close = difflib.get_close_matches(str(item["loc"][-1]), known, n=1, cutoff=0.6)
            if close:
                message += f" (did you mean '{close[0]}'?)"
        lines.append(message)
    return "; ".join(lines)


def parse_config(data: Any, source: str = "config") -> ModelConfig:
    """Stage 1: structure only."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = [format_validation_error(exc), *_component_problems(data)]
        raise ConfigError(f"{source}: {'; '.join(problems)}") from None


def _component_blocks(data: dict[str, Any]) -> list[tuple[ComponentKind, str, Any]]:
    """(kind, dotted path, raw block) of every component a raw config names."""
    blocks: list[tuple[ComponentKind, str, Any]] = []
    encoders = data.get("encoders")
    for modality, slot in (encoders or {}).items() if isinstance(encoders, dict) else []:
        if isinstance(slot, dict):
            blocks.append((ComponentKind.ENCODER, f"encoders.{modality}", slot))
            projection = slot.get("projection")
            path = f"encoders.{modality}.projection"
            blocks.append((ComponentKind.PROJECTION, path, projection))
    blocks.append((ComponentKind.DECODER, "decoder", data.get("decoder")))
    return blocks


def _component_problems(data: dict[str, Any]) -> list[str]:
    """Name and params problems of the components of a config whose structure is broken,
    so that one run lists every problem of the file (best effort: blocks whose own
    structure is broken are left to the structural message)."""
    try:
        registry = get_registry()
    except Exception:  # a broken plugin environment: the structural message stands alone
        return []
    problems: list[str] = []
    for kind, path, block in _component_blocks(data):
        if not isinstance(block, dict) or not isinstance(block.get("name"), str):
            continue
        params = block.get("params", {})
        if not isinstance(params, dict):
            continue
        try:
            part = ComponentConfig.model_validate({"name": block["name"], "params": params})
            _resolve_component(kind, path, part, registry)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _resolve_component(
    kind: ComponentKind, path: str, component: ComponentConfig, registry: PluginRegistry
) -> ResolvedComponent:
    try:
        entry = registry.get(kind, component.name)
    except UnknownComponentError as exc:
        raise UnknownComponentError(f"{path}.name: {exc}") from None
    try:
        params = entry.params_model.model_validate(component.params)
    except ValidationError as exc:
        fields = entry.params_model.model_fields
        raise ConfigError(format_validation_error(exc, f"{path}.params", fields)) from None
    filled = component.model_copy(update={"params": params.model_dump(mode="json")})
    return ResolvedComponent(kind, path, filled, params, entry.plugin, entry.version)


def resolve_config(config: ModelConfig, registry: PluginRegistry | None = None) -> ResolvedConfig:
    """Stage 2: names exist, params validate. Raises ConfigError naming the field path."""
    registry = registry or get_registry()
    encoders: dict[Modality, ResolvedComponent] = {}
    projections: dict[Modality, ResolvedComponent] = {}
    slots: dict[Modality, EncoderSlot] = {}
    errors: list[ConfigError] = []

    def resolve(kind: ComponentKind, path: str, part: ComponentConfig) -> ResolvedComponent | None:
        try:
            return _resolve_component(kind, path, part, registry)
        except ConfigError as exc:  # keep going: every problem of the config at once
            errors.append(exc)
            return None

    for modality, slot in config.encoders.items():
        path = f"encoders.{modality.value}"
        encoder = resolve(ComponentKind.ENCODER, path, slot)
        projection = resolve(ComponentKind.PROJECTION, f"{path}.projection", slot.projection)
        if encoder is not None and projection is not None:
            encoders[modality], projections[modality] = encoder, projection
            slots[modality] = EncoderSlot(
                **encoder.config.model_dump(exclude={"projection"}),
                projection=projection.config,
            )
    decoder = resolve(ComponentKind.DECODER, "decoder", config.decoder)
    if errors or decoder is None:
        raise type(errors[0])("; ".join(str(e) for e in errors))
    filled = config.model_copy(
        update={"encoders": slots, "decoder": DecoderConfig(**decoder.config.model_dump())}
    )
    return ResolvedConfig(filled, encoders, projections, decoder)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None


def load_config(source: str | Path) -> ModelConfig:
    """Load a config from a YAML file path or a preset name (see ``chatnt_core.presets``)."""
    from chatnt_core.presets import preset_path

    path = Path(source)
    if not path.is_file():
        path = preset_path(str(source))
    return parse_config(read_yaml(path), source=str(path))


def load_resolved_config(
    source: str | Path, registry: PluginRegistry | None = None
) -> ResolvedConfig:
    return resolve_config(load_config(source), registry)
