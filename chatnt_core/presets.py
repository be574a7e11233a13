"""Named model presets: the YAML files under ``registry/models/`` (package ``chatnt_registry``).

Presets are data. Builders (``chatnt_core.assembly``) turn any config - preset or user
file - into a model; nothing here knows about a specific model.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from chatnt_core.errors import ConfigError


def registry_root() -> Path:
    """The folder holding ``models/`` and ``tasks/``, wherever the package is installed."""
    return Path(str(resources.files("chatnt_registry")))


def preset_names() -> list[str]:
    return sorted(p.stem for p in (registry_root() / "models").glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of a preset, or a ConfigError listing the presets."""
    path = registry_root() / "models" / f"{name}.yaml"
    if path.is_file():
        return path
    names = preset_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(
        f"'{name}' is neither a config file nor a preset.{hint} "
        f"Presets: {', '.join(names) or 'none'}"
    )
