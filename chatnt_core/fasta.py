"""A strict FASTA reader: every malformation is an error that names its line.

Lenient readers skip text before the first header and accept records with no sequence,
and a repeated id makes a table keyed by id ambiguous (a resumed batch could not tell
which record a row belongs to). In a batch over thousands of records that means answers
quietly missing or attached to the wrong sequence, so here each of those is a one-line
``FastaError`` with the 1-based line number, raised before any model work starts.

Accepted: ``>id optional description`` headers (the id starts right after ``>`` and runs
to the first white space), sequence lines split anywhere, blank lines, ``\\r\\n`` line
ends. Residues are letters, ``*`` and ``-``. With a ``modality`` (one for all records, or
a function of the record id) they are also checked against its alphabet
(``chatnt_core.modality.ALPHABETS``), so a stray character is reported at its line and
column rather than later as a position in the joined sequence.

Example::

    >>> from chatnt_core.fasta import parse_fasta
    >>> [r.id for r in parse_fasta([">p1 promoter", "ACGT", "ACG", ">p2", "TTTT"])]
    ['p1', 'p2']
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chatnt_core.errors import ChatNTError
from chatnt_core.modality import ALPHABETS, Modality

_TAG_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$")
_NOT_TAG_CHARACTER = re.compile(r"[^A-Za-z0-9._-]")
_NOT_RESIDUE = re.compile(r"[^A-Za-z*-]")
# One modality for every record, or one chosen per record id (e.g. from its suffix).
ModalityRule = Modality | Callable[[str], Modality] | None


class FastaError(ChatNTError):
    """A FASTA file is unreadable, empty or malformed; the message names file and line."""


@dataclass(frozen=True)
class FastaRecord:
    """One record: ``id`` (first word of the header), the rest of the header, the residues."""

    id: str
    description: str
    sequence: str
    line: int  # 1-based line number of the header


def _check_residues(text: str, modality: Modality, where: str) -> None:
    allowed = ALPHABETS[modality]
    for column, char in enumerate(text, start=1):
        if not char.isspace() and char.upper() not in allowed:
            raise FastaError(
                f"{where}, column {column}: '{char}' is not a {modality.value} residue "
                f"(allowed: {''.join(sorted(allowed))})"
            )


def parse_fasta(
    lines: Iterable[str], source: str = "<input>", modality: ModalityRule = None
) -> list[FastaRecord]:
    """Records in file order; raises ``FastaError`` on the first problem found."""
    records: list[FastaRecord] = []
    seen: dict[str, int] = {}
    header: tuple[str, str, int] | None = None
    chunks: list[str] = []
    current: Modality | None = modality if isinstance(modality, Modality) else None

    def close(next_line: int | None) -> None:
        if header is None:
            return
        name, description, line = header
        if not chunks:
            follows = f" (line {next_line} is the next header)" if next_line else ""
            raise FastaError(f"{source}, line {line}: record '{name}' has no sequence{follows}")
        records.append(FastaRecord(name, description, "".join(chunks), line))

    number = 0
    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        if text.startswith(">"):
            close(number)
            words = text[1:].rstrip().split(maxsplit=1)
            if not words or text[1:2].isspace():
                raise FastaError(
                    f"{source}, line {number}: header '{text.strip()}' has no id right after "
                    "'>'; write '>ID optional description'"
                )
            name = words[0]
            if name in seen:
                raise FastaError(
                    f"{source}, line {number}: duplicate id '{name}' (first used on line "
                    f"{seen[name]}); ids must be unique"
                )
            seen[name] = number
            header = (name, words[1] if len(words) > 1 else "", number)
            chunks = []
            if callable(modality):
                current = modality(name)
            continue
        residues = "".join(text.split())
        if not residues:
            continue
        if header is None:
            raise FastaError(
                f"{source}, line {number}: sequence before any '>' header; every record "
                "starts with a '>ID' line"
            )
        if current is not None:
            _check_residues(text, current, f"{source}, line {number}")
        else:
            bad = _NOT_RESIDUE.search(residues)
            if bad:
                raise FastaError(
                    f"{source}, line {number}, column {text.find(bad.group()) + 1}: "
                    f"'{bad.group()}' is not a residue letter"
                )
        chunks.append(residues)
    close(None)
    if not records:
        raise FastaError(f"{source}: no FASTA records (the file is empty or has only blank lines)")
    return records


GZIP_MAGIC = b"\x1f\x8b"


def open_text(path: Path) -> IO[str]:
    """``path`` opened as UTF-8 text, gunzipped on the fly when it is gzip data (told by its
    first bytes, not its name: ``.fna.gz`` files are common, and so are misnamed ones)."""
    with path.open("rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
    if compressed:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_fasta(path: str | Path, modality: ModalityRule = None) -> list[FastaRecord]:
    """Read and check a FASTA file (UTF-8 or ASCII, plain or gzipped); see ``parse_fasta``."""
    path = Path(path)
    try:
        with open_text(path) as handle:
            return parse_fasta(handle, str(path), modality)
    except UnicodeDecodeError as exc:
        raise FastaError(f"{path}: not a text file ({exc.reason}); give a FASTA file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise FastaError(
            f"{path}: damaged gzip data ({exc or 'it ends early'}); re-download or re-compress it"
        ) from None
    except OSError as exc:
        raise FastaError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def is_tag_name(name: str) -> bool:
    """Whether ``@name`` would be read as a whole tag by the prompt parser."""
    return bool(_TAG_NAME.match(name))


def tag_name(record_id: str) -> str:
    """A tag for a record id: the id itself when it is a valid tag, else a cleaned form.

    ``sp|P69905|HBA_HUMAN`` becomes ``sp_P69905_HBA_HUMAN``: ids from UniProt or NCBI hold
    characters a tag cannot, and refusing them would make such files unusable in a chat.
    """
    if is_tag_name(record_id):
        return record_id
    cleaned = _NOT_TAG_CHARACTER.sub("_", record_id).strip(".-")
    return cleaned if is_tag_name(cleaned) else f"seq_{cleaned}".rstrip(".-")
