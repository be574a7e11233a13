"""Prompt tags and their sequences: find ``@tags``, bind each to a sequence, check both.

A tag is ``@`` followed by letters, digits, ``.``, ``_`` or ``-`` (``@promoter.fna``); a
trailing ``.`` or ``-`` is punctuation, not part of the name ("... in @seq.fna." names
``seq.fna``). An ``@`` preceded by a word character (an e-mail address) is not a tag.

Sequence rule: white space inside a sequence (line breaks from FASTA) is removed; case is
kept here and left to the encoder's tokenizer; every other character must belong to the
modality's alphabet (``chatnt_core.modality.ALPHABETS``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chatnt_core.errors import (
    EmptySequenceError,
    InvalidSequenceError,
    InvalidTagError,
    TagWithoutSequenceError,
    UnknownModalityError,
    UnusedSequenceError,
)
from chatnt_core.modality import ALPHABETS, Modality, invalid_characters, modality_from_tag

TAG_PATTERN = re.compile(r"(?<![\w@])@([A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?)")
# "@" then a path-like start ("@../x", "@/etc", "@~/x", "@.x") or a tag glued to a path
# separator ("@dir/x.fna"): meant as a tag, but not one
_NOT_A_TAG = re.compile(
    r"(?<![\w@])@(?:[./\\~][^\s]*|[A-Za-z0-9_][A-Za-z0-9._:-]*[/\\][^\s@][^\s]*)"
)
_WHITESPACE = re.compile(r"\s+")
_SHOWN_BAD_CHARACTERS = 5


@dataclass(frozen=True)
class SequenceInput:
    """A named sequence a prompt may refer to as ``@name``. ``modality`` overrides the suffix."""

    name: str
    sequence: str
    modality: Modality | None = None


@dataclass(frozen=True)
class BoundSequence:
    """A sequence checked against its modality's alphabet, ready for that modality's encoder."""

    name: str
    sequence: str
    modality: Modality


@dataclass(frozen=True)
class Turn:
    """One exchange: the user's message and, for training or history, the answer."""

    user: str
    assistant: str | None = None


def find_tags(text: str) -> list[str]:
    """Tag names in order of appearance, repeats included."""
    return TAG_PATTERN.findall(text)


def check_tag_syntax(text: str) -> None:
    """Refuse text that looks like a tag but is not one, e.g. ``@../data/x.fna``.

    Such text would otherwise be read as plain words, and the question answered as if no
    sequence had been meant. Sequences are never read from paths written in a question.
    """
    bad = _NOT_A_TAG.search(text)
    if bad is not None:
        shown = bad.group(0).rstrip(".,;:!?)")
        raise InvalidTagError(
            f"'{shown}' is not a tag: a tag is @ followed by letters, digits, '.', '_' or '-' "
            "(e.g. @seq.fna), and sequences are given with --seq or --fasta, never read from "
            "a path in the question"
        )


def replace_tags(text: str, replacement: str, keep_names: bool = False) -> str:
    """The text with every tag replaced by ``replacement`` (the placeholder token), or with
    ``keep_names`` followed by it (``@name`` + replacement)."""
    return TAG_PATTERN.sub(lambda m: m.group(0) + replacement if keep_names else replacement, text)


def tag_aliases(texts: Iterable[str]) -> dict[str, str]:
    """Each distinct tag in ``texts`` -> ``seq1``, ``seq2``, ... in order of first appearance.

    The ``alias`` prompt mode shows the decoder these names instead of the user's, so what it
    reads and answers cannot depend on how files were named (the paper's model never sees
    names at all: its placeholder carries none).
    """
    aliases: dict[str, str] = {}
    for text in texts:
        for tag in find_tags(text):
            aliases.setdefault(tag, f"seq{len(aliases) + 1}")
    return aliases


def rename_tags(text: str, names: Mapping[str, str]) -> str:
    """The text with each tag in ``names`` renamed (one pass, so swaps are safe)."""
    if not names:
        return text
    return TAG_PATTERN.sub(
        lambda m: "@" + names.get(m.group(1), m.group(1)),
        text,
    )


def as_sequence_inputs(
    sequences: Mapping[str, str | SequenceInput] | Iterable[SequenceInput],
) -> dict[str, SequenceInput]:
    """Accept ``{"name": "ACGT"}``, ``{"name": SequenceInput}`` or a list of SequenceInput."""
    if isinstance(sequences, Mapping):
        items = {
            name: value if isinstance(value, SequenceInput) else SequenceInput(name, value)
            for name, value in sequences.items()
        }
    else:
        items = {record.name: record for record in sequences}
    return {name.lstrip("@"): record for name, record in items.items()}


def _describe_bad_characters(bad: list[tuple[int, str]]) -> str:
    shown = ", ".join(f"'{ch}' at {pos + 1}" for pos, ch in bad[:_SHOWN_BAD_CHARACTERS])
    more = len(bad) - _SHOWN_BAD_CHARACTERS
    return shown + (f" (and {more} more)" if more > 0 else "")


def bind_sequence(record: SequenceInput, available: Iterable[Modality]) -> BoundSequence:
    """Pick the modality, normalise white space and check the alphabet."""
    modality = record.modality or modality_from_tag(record.name)
    if modality is None:
        raise UnknownModalityError(
            f"cannot tell the modality of @{record.name}: end the tag with .fna/.fa/.dna (DNA), "
            ".frn/.rna (RNA) or .faa/.prot (protein), or give the sequence a modality"
        )
    available = set(available)
    if modality not in available:
        known = ", ".join(sorted(m.value for m in available))
        raise UnknownModalityError(
            f"@{record.name} is {modality.value} but this model has no {modality.value} encoder "
            f"(it has: {known}); add one under 'encoders.{modality.value}' in the config"
        )
    sequence = _WHITESPACE.sub("", record.sequence)
    if not sequence:
        raise EmptySequenceError(f"@{record.name} is empty: give it at least one residue")
    bad = invalid_characters(sequence, modality)
    if bad:
        allowed = "".join(sorted(ALPHABETS[modality]))
        raise InvalidSequenceError(
            f"@{record.name} ({modality.value}) has characters {modality.value} does not allow: "
            f"{_describe_bad_characters(bad)} (1-based positions); allowed: {allowed}"
        )
    return BoundSequence(record.name, sequence, modality)


def bind_sequences(
    turns: Iterable[Turn],
    sequences: Mapping[str, SequenceInput],
    available: Iterable[Modality],
    require_all_used: bool = True,
) -> dict[str, BoundSequence]:
    """Bind every tag of every user message to a checked sequence.

    Raises when a tag has no sequence, or (``require_all_used``) when a sequence is never
    referenced - usually a typo in the tag or the name.
    """
    available = list(available)
    used: list[str] = []
    for turn in turns:
        check_tag_syntax(turn.user)
        for tag in find_tags(turn.user):
            if tag not in used:
                used.append(tag)
    missing = [tag for tag in used if tag not in sequences]
    if missing:
        given = ", ".join(sorted(sequences)) or "none"
        raise TagWithoutSequenceError(
            f"@{missing[0]} has no sequence: give a sequence named '{missing[0]}' "
            f"(sequences given: {given})"
        )
    if require_all_used:
        unused = [name for name in sequences if name not in used]
        if unused:
            raise UnusedSequenceError(
                f"sequence '{unused[0]}' is never referenced: add @{unused[0]} to the question "
                "or drop the sequence"
            )
    return {tag: bind_sequence(sequences[tag], available) for tag in used}
