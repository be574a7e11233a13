"""Plugin discovery, allow/block lists, duplicates, unknown names and broken plugins."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from conftest import InstallPlugin

from chatnt_core import hookspecs
from chatnt_core.cli import main
from chatnt_core.errors import ChatNTError, DuplicateComponentError, UnknownComponentError
from chatnt_core.plugins import ComponentKind, load_registry

FAKE_ENCODER_PLUGIN = """
from pydantic import BaseModel, ConfigDict
import chatnt_core

class FakeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 8

def build(params, context):
    raise RuntimeError("not built in these tests")

@chatnt_core.hookimpl
def register_encoders(register):
    register("fake-encoder", build, FakeParams)
"""

DUPLICATE_PLUGIN = """
from pydantic import BaseModel
import chatnt_core

@chatnt_core.hookimpl
def register_encoders(register):
    register("char-transformer", lambda p, c: None, BaseModel)
"""

BROKEN_IMPORT_PLUGIN = """
import a_module_that_does_not_exist_anywhere
"""

BROKEN_HOOK_PLUGIN = """
import chatnt_core

@chatnt_core.hookimpl
def register_decoders(register):
    raise ValueError("decoder table is corrupt")
"""


def test_builtins_are_discovered_through_entry_points() -> None:
    registry = load_registry()
    assert {"core-projections", "hf-decoders", "char-encoder"} <= set(registry.plugins)
    assert "char-transformer" in registry.names(ComponentKind.ENCODER)
    assert "hf-causal-lm" in registry.names(ComponentKind.DECODER)
    assert {"english-aware-perceiver", "perceiver-resampler", "mlp"} <= set(
        registry.names(ComponentKind.PROJECTION)
    )
    assert registry.get(ComponentKind.DECODER, "hf-causal-lm").plugin == "hf-decoders"


def test_installed_fake_plugin_is_discovered(install_plugin: InstallPlugin) -> None:
    install_plugin("chatnt-fake", "fake", "fake_chatnt_plugin", FAKE_ENCODER_PLUGIN, "0.3.1")
    registry = load_registry()
    entry = registry.get(ComponentKind.ENCODER, "fake-encoder")
    assert (entry.plugin, entry.version) == ("fake", "0.3.1")
    assert registry.plugins["fake"] == "0.3.1"
    assert entry.params_model.model_validate({"width": 3}).width == 3  # type: ignore[attr-defined]


def test_allow_list_limits_outside_plugins_but_keeps_builtins(
    install_plugin: InstallPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin("chatnt-fake", "fake", "fake_chatnt_plugin", FAKE_ENCODER_PLUGIN)
    monkeypatch.setenv("CHATNT_LOAD_PLUGINS", "")
    registry = load_registry()
    assert "fake-encoder" not in registry.names(ComponentKind.ENCODER)
    assert "char-transformer" in registry.names(ComponentKind.ENCODER)

    monkeypatch.setenv("CHATNT_LOAD_PLUGINS", "something-else, fake")
    with pytest.warns(UserWarning, match="CHATNT_LOAD_PLUGINS names 'something-else'"):
        assert "fake-encoder" in load_registry().names(ComponentKind.ENCODER)


def test_block_list_disables_any_plugin(
    install_plugin: InstallPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin("chatnt-fake", "fake", "fake_chatnt_plugin", FAKE_ENCODER_PLUGIN)
    monkeypatch.setenv("CHATNT_DISABLED_PLUGINS", "fake,hf-decoders")
    registry = load_registry()
    assert "fake-encoder" not in registry.names(ComponentKind.ENCODER)
    assert registry.names(ComponentKind.DECODER) == []
    assert "hf-decoders" not in registry.plugins


def test_a_typo_in_the_block_list_is_warned_about(
    install_plugin: InstallPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin("chatnt-fake", "fake", "fake_chatnt_plugin", FAKE_ENCODER_PLUGIN)
    monkeypatch.setenv("CHATNT_DISABLED_PLUGINS", "hf-decoder")
    with pytest.warns(UserWarning, match="did you mean 'hf-decoders'"):
        registry = load_registry()
    assert "hf-causal-lm" in registry.names(ComponentKind.DECODER)  # nothing was disabled


def test_duplicate_component_name_raises(install_plugin: InstallPlugin) -> None:
    install_plugin("chatnt-dupe", "dupe", "dupe_chatnt_plugin", DUPLICATE_PLUGIN)
    with pytest.raises(DuplicateComponentError, match="char-transformer.*char-encoder|dupe"):
        load_registry()


def test_unknown_name_lists_known_and_closest_match() -> None:
    registry = load_registry()
    with pytest.raises(UnknownComponentError) as info:
        registry.get(ComponentKind.ENCODER, "char-transfomer")
    message = str(info.value)
    assert "did you mean 'char-transformer'" in message
    assert "Known encoders: char-transformer" in message


def test_broken_plugins_are_reported_and_others_still_load(install_plugin: InstallPlugin) -> None:
    install_plugin("chatnt-broken", "broken-import", "broken_import_plugin", BROKEN_IMPORT_PLUGIN)
    install_plugin("chatnt-badhook", "broken-hook", "broken_hook_plugin", BROKEN_HOOK_PLUGIN)
    install_plugin("chatnt-fake", "fake", "fake_chatnt_plugin", FAKE_ENCODER_PLUGIN)
    registry = load_registry()
    broken = {b.name: b for b in registry.broken}
    assert "ModuleNotFoundError" in broken["broken-import"].error
    assert "decoder table is corrupt" in broken["broken-hook"].error
    # where it broke, and the whole traceback for CHATNT_DEBUG
    assert "broken_hook_plugin.py:6)" in broken["broken-hook"].error
    assert "Traceback" in broken["broken-hook"].traceback
    assert 'raise ValueError("decoder table is corrupt")' in broken["broken-hook"].traceback
    with pytest.raises(UnknownComponentError, match="failed to load.*broken-hook"):
        registry.get(ComponentKind.ENCODER, "kmer-encoder")
    assert "fake-encoder" in registry.names(ComponentKind.ENCODER)
    assert "hf-causal-lm" in registry.names(ComponentKind.DECODER)


def test_cli_plugins_json_lists_components_and_broken(
    install_plugin: InstallPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    install_plugin("chatnt-broken", "broken-import", "broken_import_plugin", BROKEN_IMPORT_PLUGIN)
    with pytest.raises(SystemExit) as exit_info:
        main(["plugins", "--json"])
    assert exit_info.value.code == 0
    listing = json.loads(capsys.readouterr().out)
    rows = {(c["kind"], c["name"]): c for c in listing["components"]}
    decoder = rows[("decoder", "hf-causal-lm")]
    assert decoder["plugin"] == "hf-decoders"
    assert decoder["version"] == "0.1.0"
    assert "properties" in decoder["params_schema"]
    assert [b["plugin"] for b in listing["broken"]] == ["broken-import"]


def test_cli_plugins_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["plugins"])
    out = capsys.readouterr().out
    assert "english-aware-perceiver" in out and "hf-causal-lm" in out


def test_every_hook_is_documented() -> None:
    hooks = [
        f
        for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("register_")
    ]
    assert {h.__name__ for h in hooks} == {
        "register_encoders",
        "register_projections",
        "register_decoders",
        "register_tasks",
    }
    assert all((h.__doc__ or "").strip() for h in hooks)


MISSPELT_HOOK_PLUGIN = """
import chatnt_core

@chatnt_core.hookimpl
def register_encoder(register):
    pass
"""


def test_misspelt_hook_breaks_only_its_plugin(install_plugin: InstallPlugin) -> None:
    install_plugin("chatnt-typo", "typo", "typo_chatnt_plugin", MISSPELT_HOOK_PLUGIN)
    install_plugin("chatnt-fake", "fake", "fake_chatnt_plugin", FAKE_ENCODER_PLUGIN)
    registry = load_registry()
    broken = {b.name: b.error for b in registry.broken}
    assert "did you mean 'register_encoders'" in broken["typo"]
    assert "typo" not in registry.plugins
    assert "fake-encoder" in registry.names(ComponentKind.ENCODER)


def test_a_checkpoint_needing_a_missing_plugin_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from chatnt_core.model import ChatNTModel
    from chatnt_core.plugins import reset_registry
    from chatnt_core.training import checkpoint as ckpt

    torch.manual_seed(0)
    saved = ckpt.save_model(ChatNTModel.from_config("tiny-random"), tmp_path / "run")
    monkeypatch.setenv("CHATNT_DISABLED_PLUGINS", "char-encoder")
    reset_registry()
    with pytest.raises(UnknownComponentError) as info:
        ckpt.load_model_from_checkpoint(saved)
    message = str(info.value)
    assert "unknown encoder 'char-transformer'" in message
    assert "saved with the plugins" in message and "char-encoder 0.1.0" in message


def test_chatnt_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["ask", "no-such-dir", "Hi"])
    assert capsys.readouterr().err.startswith("error: ")
    monkeypatch.setenv("CHATNT_DEBUG", "1")
    with pytest.raises(ChatNTError, match="not a checkpoint directory"):
        main(["ask", "no-such-dir", "Hi"])
