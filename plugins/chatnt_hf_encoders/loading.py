"""Loading helpers shared by the three encoders: one-line errors, seeded init, vocab files.

A failed load must say which reference failed and what to do, in one line, because the
CLI prints a :class:`~chatnt_core.errors.ConfigError` as one line. The rules are those of
the ``hf-causal-lm`` decoder (a string that can only be a filesystem path is checked for
existence first, so a typo never turns into a hub lookup); they are repeated here rather
than imported because the decoder's helpers are private and word their messages for a
decoder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from transformers import EsmTokenizer

from chatnt_core.errors import ConfigError

DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
LOAD_FIX = "give a local directory with config.json or a hub id you have cached"
PRESET_FIX = LOAD_FIX + ", or random_init: true for the preset's architecture with random weights"

T = TypeVar("T")


def looks_local(reference: str) -> bool:
    """True for strings that can only be a filesystem path, never a hub id."""
    return (
        os.path.isabs(reference)
        or reference.startswith(("./", "../", "~", ".\\", "..\\"))
        or reference.count("/") > 1
        or "\\" in reference
    )


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_error(
    encoder: str, what: str, reference: str, exc: BaseException | None = None, fix: str = LOAD_FIX
) -> ConfigError:
    if exc is None:
        return ConfigError(f"{encoder} {what} '{reference}' not found: {fix}")
    return ConfigError(
        f"{encoder} {what} '{reference}' could not be loaded ({first_line(exc)}): {fix}"
    )


def resolve(encoder: str, what: str, reference: str, fix: str = LOAD_FIX) -> str:
    """``reference`` with ``~`` expanded; a path-like string must name a directory."""
    expanded = os.path.expanduser(reference)
    if looks_local(reference) and not os.path.isdir(expanded):
        raise load_error(encoder, what, reference, fix=fix)
    return expanded


def from_pretrained(
    loader: Callable[..., T],
    encoder: str,
    what: str,
    reference: str,
    *,
    fix: str = LOAD_FIX,
    **kwargs: Any,
) -> T:
    """``loader(reference, **kwargs)`` with every load failure turned into a ConfigError."""
    location = resolve(encoder, what, reference, fix)
    try:
        return loader(location, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise load_error(encoder, what, reference, exc, fix) from exc


def fetch_file(
    encoder: str,
    reference: str,
    filename: str,
    *,
    revision: str | None,
    local_files_only: bool,
    required: bool = True,
    fix: str = LOAD_FIX,
) -> str | None:
    """One file of a local directory or hub repo; None when optional and absent."""
    location = resolve(encoder, "path", reference, fix)
    if os.path.isdir(location):
        candidate = os.path.join(location, filename)
        if os.path.isfile(candidate):
            return candidate
        if required:
            raise ConfigError(
                f"{encoder} path '{reference}' has no {filename}: point 'path' at a "
                "checkpoint directory that holds it"
            )
        return None
    try:
        return str(
            hf_hub_download(
                reference, filename, revision=revision, local_files_only=local_files_only
            )
        )
    except EntryNotFoundError as exc:
        if required:
            raise load_error(encoder, "path", reference, exc, fix) from exc
        return None
    except (OSError, ValueError) as exc:
        raise load_error(encoder, "path", reference, exc, fix) from exc


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for the block only: building an encoder never changes the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def vocab_tokenizer(tokens: Sequence[str]) -> EsmTokenizer:
    """An :class:`EsmTokenizer` over ``tokens`` (id = position), built without any download.

    ``EsmTokenizer`` only reads a ``vocab.txt``; it is written to a temporary directory and
    read back at once, so nothing stays on disk. ``<cls>``, ``<pad>``, ``<eos>``, ``<unk>``
    and ``<mask>`` must be among the tokens.
    """
    with tempfile.TemporaryDirectory() as directory:
        vocab_file = os.path.join(directory, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as handle:
            handle.write("\n".join(tokens))
        return EsmTokenizer(vocab_file=vocab_file)
