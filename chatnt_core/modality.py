"""Sequence modalities, their alphabets and the tag suffixes that name them.

A tag such as ``@promoter.fna`` says its modality through its suffix; a sequence record
may also say it outright. The alphabets here are what the *prompt* accepts: IUPAC codes
for nucleic acids (upper or lower case) and the 20 standard amino acids plus the usual
ambiguity and rare codes for proteins. An encoder may map rare letters to its unknown
token, but a letter outside these alphabets is always a user mistake.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path

from chatnt_core.errors import ChatNTError


class Modality(str, Enum):
    DNA = "dna"
    RNA = "rna"
    PROTEIN = "protein"

    def __str__(self) -> str:
        return self.value


_NUCLEIC_AMBIGUITY = "NRYSWKMBDHV"

ALPHABETS: dict[Modality, frozenset[str]] = {
    Modality.DNA: frozenset("ACGT" + _NUCLEIC_AMBIGUITY),
    Modality.RNA: frozenset("ACGU" + _NUCLEIC_AMBIGUITY),
    # 20 standard amino acids, X (any), B/Z/J (ambiguous), U (Sec), O (Pyl), * (stop).
    Modality.PROTEIN: frozenset("ACDEFGHIKLMNPQRSTVWY" + "XBZJUO*"),
}

TAG_SUFFIXES: dict[str, Modality] = {
    ".fna": Modality.DNA,
    ".fa": Modality.DNA,
    ".fasta": Modality.DNA,
    ".dna": Modality.DNA,
    ".frn": Modality.RNA,
    ".rna": Modality.RNA,
    ".faa": Modality.PROTEIN,
    ".prot": Modality.PROTEIN,
}


def modality_from_tag(tag: str) -> Modality | None:
    """The modality a tag's suffix names (``promoter.fna`` -> DNA), or None."""
    lowered = tag.lower()
    for suffix, modality in TAG_SUFFIXES.items():
        if lowered.endswith(suffix):
            return modality
    return None


_FILE_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,5}$")


def unknown_suffix(name: str) -> str | None:
    """A file-like suffix of ``name`` that names no modality (``r.xyz`` -> ``.xyz``)."""
    if modality_from_tag(name) is not None:
        return None
    found = _FILE_SUFFIX.search(name)
    return found.group(0) if found else None


def modality_for_name(
    name: str,
    default: Modality | None,
    fallback: Modality = Modality.DNA,
    fix: str = "pass --modality",
) -> Modality:
    """The modality of a tag or record id: its suffix, else ``default`` (the user's choice),
    else ``fallback`` (e.g. the FASTA file's suffix, or DNA). A file-like suffix that names
    no modality is an error rather than a silent DNA: the user meant something by it."""
    found = modality_from_tag(name) or default
    if found is not None:
        return found
    odd = unknown_suffix(name)
    if odd is not None:
        raise ChatNTError(
            f"cannot tell the modality of @{name}: '{odd}' is not a known suffix (DNA: .fna "
            f".fa .fasta .dna; RNA: .frn .rna; protein: .faa .prot); rename it or {fix}"
        )
    return fallback


def modality_from_path(path: str | Path) -> Modality | None:
    """The modality a FASTA file's name implies (``x.faa``, ``x.faa.gz`` -> protein)."""
    name = Path(path).name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return modality_from_tag(name)


def invalid_characters(sequence: str, modality: Modality) -> list[tuple[int, str]]:
    """(0-based position, character) of every character the modality does not allow."""
    allowed = ALPHABETS[modality]
    return [(i, ch) for i, ch in enumerate(sequence) if ch.upper() not in allowed]
