"""Plugin discovery and the component registry.

Plugins are modules named in the ``chatnt`` entry-point group, the built-in ones included
(they are declared in chatnt's own ``pyproject.toml`` exactly as an outside package would).
Loading goes entry point by entry point so that one plugin failing to import is recorded
as broken and the others still load.

Environment variables:

* ``CHATNT_LOAD_PLUGINS`` - comma-separated allow-list of entry-point names from other
  distributions. When set, only those outside plugins load (built-ins always do, so
  ``CHATNT_LOAD_PLUGINS=""`` means "built-ins only").
* ``CHATNT_DISABLED_PLUGINS`` - comma-separated block-list; applies to every plugin,
  built-ins included.
"""

from __future__ import annotations

import difflib
import os
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

from chatnt_core import hookspecs
from chatnt_core.errors import DuplicateComponentError, PluginError, UnknownComponentError
from chatnt_core.modality import Modality

ENTRY_POINT_GROUP = "chatnt"
BUILTIN_DISTRIBUTION = "chatnt"


class ComponentKind(str, Enum):
    ENCODER = "encoder"
    PROJECTION = "projection"
    DECODER = "decoder"
    TASK = "task"

    def __str__(self) -> str:
        return self.value


_HOOK_FOR_KIND = {
    ComponentKind.ENCODER: "register_encoders",
    ComponentKind.PROJECTION: "register_projections",
    ComponentKind.DECODER: "register_decoders",
    ComponentKind.TASK: "register_tasks",
}


@dataclass(frozen=True)
class BuildContext:
    """What a factory may need to know about the rest of the assembly.

    Encoders get ``modality`` (the config slot they fill). Projections get the widths on
    both sides, K, and the decoder vocabulary for an own question-embedding table.
    """

    modality: Modality | None = None
    input_dim: int | None = None  # D_enc, for projections
    output_dim: int | None = None  # D, for projections
    num_latents: int | None = None  # K, for projections
    question_vocab_size: int | None = None  # decoder tokenizer size, for projections
    embedding_rms: float | None = None  # RMS of the decoder's token embeddings, for projections


@dataclass(frozen=True)
class ComponentEntry:
    kind: ComponentKind
    name: str
    factory: Callable[..., Any]
    params_model: type[BaseModel]
    plugin: str
    version: str

    def build(self, params: BaseModel, context: BuildContext) -> Any:
        return self.factory(params, context)


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    error: str  # "KeyError: 'b' (at /path/plugin.py:12)"
    traceback: str = ""  # the whole traceback, shown with CHATNT_DEBUG=1


def _broken(name: str, exc: BaseException, context: str = "") -> BrokenPlugin:
    """A failure with the file and line where it was raised and its full traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return BrokenPlugin(name, f"{type(exc).__name__}{context}: {exc}{where}", text)


@dataclass
class PluginRegistry:
    """Every component the loaded plugins registered, by kind and name."""

    entries: dict[ComponentKind, dict[str, ComponentEntry]] = field(
        default_factory=lambda: {kind: {} for kind in ComponentKind}
    )
    plugins: dict[str, str] = field(default_factory=dict)  # plugin name -> version
    broken: list[BrokenPlugin] = field(default_factory=list)

    def add(self, entry: ComponentEntry) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{entry.kind} '{entry.name}' is registered by both plugin "
                f"'{existing.plugin}' and plugin '{entry.plugin}'; disable one of them "
                "with CHATNT_DISABLED_PLUGINS or rename the component"
            )
        self.entries[entry.kind][entry.name] = entry

    def names(self, kind: ComponentKind) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: ComponentKind, name: str) -> ComponentEntry:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownComponentError(
                unknown_name_message(kind, name, self.names(kind), self.broken)
            ) from None


def unknown_name_message(
    kind: ComponentKind, name: str, known: list[str], broken: Iterable[BrokenPlugin] = ()
) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    listing = ", ".join(known) if known else "none (is the plugin installed?)"
    message = f"unknown {kind} '{name}'{hint} Known {kind}s: {listing}"
    failures = "; ".join(f"{b.name}: {b.error}" for b in broken)
    if failures:
        message += (
            f". Plugins that failed to load (one may provide it): {failures}; "
            "CHATNT_DEBUG=1 shows their tracebacks"
        )
    return message


def _env_list(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None:
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


def _plugin_version(module: object) -> str:
    return str(getattr(module, "__version__", "")) or "unknown"


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hook implementations of ``plugin`` that match no hook spec (usually a typo)."""
    callers = pm.get_hookcallers(plugin) or []
    return sorted(
        caller.name
        for caller in callers
        if not caller.has_spec()
        and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
    )


def _unknown_hooks_message(unknown: list[str]) -> str:
    known = sorted(_HOOK_FOR_KIND.values())
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return f"implements unknown hook(s) {', '.join(parts)}; hooks are: {', '.join(known)}"


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("chatnt")
    pm.add_hookspecs(hookspecs)
    return pm


def load_entry_point_plugins(
    pm: pluggy.PluginManager,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> tuple[dict[str, str], list[BrokenPlugin]]:
    """Import and register each ``chatnt`` entry point; return versions and failures."""
    allow = _env_list("CHATNT_LOAD_PLUGINS")
    block = _env_list("CHATNT_DISABLED_PLUGINS") or set()
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    entry_points = list(entry_points)
    versions: dict[str, str] = {}
    broken: list[BrokenPlugin] = []
    for ep in sorted(entry_points, key=lambda e: e.name):
        dist = ep.dist
        builtin = dist is not None and dist.name == BUILTIN_DISTRIBUTION
        if ep.name in block or (allow is not None and not builtin and ep.name not in allow):
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            broken.append(_broken(ep.name, exc))
            continue
        unknown = _unknown_hooks(pm, module)
        if unknown:
            pm.unregister(module)
            broken.append(BrokenPlugin(ep.name, _unknown_hooks_message(unknown)))
            continue
        versions[ep.name] = dist.version if dist is not None else _plugin_version(module)
    pm.check_pending()
    _warn_unknown_names(entry_points, allow, block)
    return versions, broken


def _warn_unknown_names(
    entry_points: Iterable[metadata.EntryPoint], allow: set[str] | None, block: set[str]
) -> None:
    """A name in CHATNT_LOAD_PLUGINS / CHATNT_DISABLED_PLUGINS that no plugin has is most
    likely a typo, which would otherwise silently load (or drop) the wrong plugins."""
    installed = sorted({ep.name for ep in entry_points})
    for variable, names in (("CHATNT_LOAD_PLUGINS", allow), ("CHATNT_DISABLED_PLUGINS", block)):
        for name in sorted(names or ()):
            if name not in installed:
                close = difflib.get_close_matches(name, installed, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                warnings.warn(
                    f"{variable} names '{name}', which no installed plugin has{hint} "
                    f"(installed: {', '.join(installed)})",
                    UserWarning,
                    stacklevel=3,
                )


def collect_components(
    pm: pluggy.PluginManager, versions: dict[str, str] | None = None
) -> PluginRegistry:
    """Call every hook implementation with a ``register`` bound to its plugin's name."""
    registry = PluginRegistry()
    versions = dict(versions or {})
    failed: dict[str, BrokenPlugin] = {}
    for kind, hook_name in _HOOK_FOR_KIND.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            if plugin_name in failed:
                continue
            version = versions.setdefault(plugin_name, _plugin_version(impl.plugin))
            staged: list[ComponentEntry] = []

            def register(
                name: str,
                factory: Callable[..., Any],
                params_model: type[BaseModel],
                _kind: ComponentKind = kind,
                _plugin: str = plugin_name,
                _version: str = version,
                _staged: list[ComponentEntry] = staged,
            ) -> None:
                if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
                    raise PluginError(
                        f"plugin '{_plugin}' registered {_kind} '{name}' without a pydantic "
                        "params model; pass a BaseModel subclass as the third argument"
                    )
                _staged.append(
                    ComponentEntry(_kind, name, factory, params_model, _plugin, _version)
                )

            try:
                impl.function(register=register)
            except Exception as exc:
                failed[plugin_name] = _broken(plugin_name, exc, f" in {hook_name}")
                continue
            for entry in staged:
                registry.add(entry)
    registry.plugins = {name: v for name, v in versions.items() if name not in failed}
    registry.broken = list(failed.values())
    return registry


def load_registry(extra_plugins: Iterable[tuple[str, ModuleType | object]] = ()) -> PluginRegistry:
    """Discover entry-point plugins (plus ``extra_plugins``) and collect their components."""
    pm = new_plugin_manager()
    versions, broken = load_entry_point_plugins(pm)
    for name, plugin in extra_plugins:
        pm.register(plugin, name=name)
    pm.check_pending()
    registry = collect_components(pm, versions)
    registry.broken = broken + registry.broken
    return registry


_default_registry: PluginRegistry | None = None


def get_registry() -> PluginRegistry:
    """The process-wide registry, loaded on first use."""
    global _default_registry
    if _default_registry is None:
        _default_registry = load_registry()
    return _default_registry


def reset_registry() -> None:
    """Forget the cached registry (tests, or after installing a plugin at run time)."""
    global _default_registry
    _default_registry = None
