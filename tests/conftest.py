"""Shared fixtures: fake installed plugin distributions and a fresh plugin registry."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatnt_core.plugins import reset_registry

InstallPlugin = Callable[..., Path]


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from an unloaded registry and no plugin environment variables."""
    monkeypatch.delenv("CHATNT_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("CHATNT_DISABLED_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InstallPlugin:
    """Install a plugin distribution for real: a module plus a ``.dist-info`` on sys.path.

    ``importlib.metadata`` finds it exactly as it finds a pip-installed package, so entry
    point discovery is exercised end to end. Everything is removed after the test.
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def install(
        dist: str, entry_point: str, module: str, source: str, version: str = "0.1.0"
    ) -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[chatnt]\n{entry_point} = {module}\n")
        (info / "RECORD").write_text("")
        modules.append(module)
        importlib.invalidate_caches()
        return site

    yield install  # type: ignore[misc]
    for module in modules:
        sys.modules.pop(module, None)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint trained, calibrated and evaluated once per session (web tests)."""
    from web_helpers import make_trained_checkpoint

    return make_trained_checkpoint(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="session")
def trained_bot(trained_checkpoint: Path) -> Any:
    """``ChatNT`` on ``trained_checkpoint``, loaded once (the web tests' reference answers)."""
    from chatnt_core.api import ChatNT

    return ChatNT.from_pretrained(trained_checkpoint)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    from training_helpers import one_thread

    with one_thread():
        yield
