"""The tutorial's example plugin package installs, is discovered, assembles and runs.

``docs/examples/chatnt-kmer-encoder`` is pip-installed for real - built as a wheel by
setuptools and unpacked into a scratch ``--target`` directory - so discovery goes through
the ``entry_points.txt`` pip writes, exactly as for a user. Nothing is installed into the
test environment itself: subprocesses see the package through ``PYTHONPATH``, this
process through a ``sys.path`` entry removed afterwards, and the directory is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from chatnt_core import ChatNTModel, Example, Turn
from chatnt_core.plugins import ComponentKind, get_registry, reset_registry
from chatnt_core.prompt import as_sequence_inputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "chatnt-kmer-encoder"
DIST, PLUGIN, MODULE, COMPONENT, VERSION = (
    "chatnt-kmer-encoder",
    "kmer",
    "chatnt_kmer",
    "kmer-embedding",
    "0.1.0",
)


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATNT_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(a copy of the example package, the site directory it is installed into)."""
    work = tmp_path_factory.mktemp("kmer-plugin")
    source = work / DIST
    # Build from a copy: an in-tree build leaves build/ and *.egg-info behind.
    shutil.copytree(
        EXAMPLE,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
    )
    site = work / "site-packages"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    run([*pip, "--no-index", "--target", str(site), str(source)], base_env())
    yield source, site
    shutil.rmtree(work, ignore_errors=True)


def env_with(site: Path) -> dict[str, str]:
    env = base_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return env


def installed_in_this_environment() -> bool:
    try:
        metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        return False
    return True


INSTALLED_BEFORE = installed_in_this_environment()  # e.g. by someone following the tutorial


def test_chatnt_plugins_lists_the_installed_plugin(example: tuple[Path, Path]) -> None:
    _, site = example
    command = [sys.executable, "-m", "chatnt_core.cli", "plugins", "--json"]
    listing = json.loads(run(command, env_with(site)))
    assert listing["broken"] == []
    assert listing["plugins"][PLUGIN] == VERSION
    (component,) = [c for c in listing["components"] if c["name"] == COMPONENT]
    assert (component["kind"], component["plugin"], component["version"]) == (
        "encoder",
        PLUGIN,
        VERSION,
    )
    assert {"k", "embed_dim", "max_tokens", "seed"} == set(component["params_schema"]["properties"])
    assert component["params_schema"]["additionalProperties"] is False


def test_example_config_assembles_and_runs(
    example: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, site = example
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    try:
        entry = get_registry().get(ComponentKind.ENCODER, COMPONENT)
        assert (entry.plugin, entry.version) == (PLUGIN, VERSION)
        model = ChatNTModel.from_config(source / "example.yaml").eval()
        assert type(model.encoders["dna"]).__module__ == MODULE

        promoter = {"p.fna": "TATAAAAGGCGCTTAGC"}
        both = {**promoter, "q.fna": "ACGTNACGTTAG"}
        batch = model.tokenize(
            [
                Example([Turn("Is @p.fna a promoter?", "yes")], as_sequence_inputs(promoter)),
                Example([Turn("Compare @p.fna and @q.fna.", "no")], as_sequence_inputs(both)),
            ]
        )
        out = model(batch)
        assert out.loss is not None and bool(out.loss.isfinite())
        answers = model.generate(
            ["Is @p.fna a promoter?", "And @q.fna?"],
            [promoter, {"q.fna": both["q.fna"]}],
            max_new_tokens=3,
        )
        assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    finally:
        sys.modules.pop(MODULE, None)
        reset_registry()


def test_the_example_package_tests_pass(example: tuple[Path, Path]) -> None:
    source, site = example
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    output = run(command, env_with(site), cwd=source)
    assert " passed" in output and "failed" not in output


def test_the_environment_is_left_as_found(example: tuple[Path, Path]) -> None:
    """Runs last: nothing went into the venv, and this process's sys.path is restored."""
    assert installed_in_this_environment() == INSTALLED_BEFORE
    assert not any(str(example[1]) == entry for entry in sys.path)
