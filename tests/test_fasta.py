"""The strict FASTA reader: good files parse, every malformation names its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatnt_core.errors import ChatNTError
from chatnt_core.fasta import FastaError, is_tag_name, parse_fasta, read_fasta, tag_name
from chatnt_core.modality import Modality, modality_from_tag


def test_records_keep_order_ids_descriptions_and_join_lines(tmp_path: Path) -> None:
    path = tmp_path / "ok.fa"
    path.write_bytes(
        b">p1 a promoter\r\nACGT\r\nacg\r\n\r\n>p2\nTT TT\n\n>p3.faa  kinase  domain\nMKV*\n"
    )
    records = read_fasta(path)
    assert [(r.id, r.description, r.sequence, r.line) for r in records] == [
        ("p1", "a promoter", "ACGTacg", 1),
        ("p2", "", "TTTT", 5),
        ("p3.faa", "kinase  domain", "MKV*", 8),
    ]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("ACGT\n>a\nACGT\n", 1, "sequence before any '>' header"),
        ("\n\nACGT\n", 3, "sequence before any '>' header"),
        (">a\nACGT\n>\nACGT\n", 3, "has no id"),
        (">a\nACGT\n>   description only\nACGT\n", 3, "has no id"),
        (">a\nACGT\n>b\n>c\nAC\n", 3, "record 'b' has no sequence (line 4 is the next header)"),
        (">a\nACGT\n>b\n\n", 3, "record 'b' has no sequence"),
        (">a\nACGT\n>b\nAA\n>a\nCC\n", 5, "duplicate id 'a' (first used on line 1)"),
        (">a\nAC1T\n", 2, "column 3: '1' is not a residue letter"),
    ],
)
def test_each_malformation_names_its_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(FastaError) as info:
        parse_fasta(text.splitlines(keepends=True), "in.fa")
    message = str(info.value)
    assert message.startswith(f"in.fa, line {line}")
    assert fragment in message
    assert "\n" not in message
    assert isinstance(info.value, ChatNTError)  # the CLI prints it as one line, exit 1


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.fa"
    path.write_text(text)
    with pytest.raises(FastaError, match="no FASTA records"):
        read_fasta(path)


def test_alphabet_checked_per_modality_with_line_and_column() -> None:
    dna = [">a\n", "ACGT\n", "ACGU\n"]
    with pytest.raises(FastaError, match=r"line 3, column 4: 'U' is not a dna residue"):
        parse_fasta(dna, "x", Modality.DNA)
    with pytest.raises(FastaError, match=r"line 2, column 4: 'T' is not a rna residue"):
        parse_fasta(dna, "x", Modality.RNA)
    # Per record, from the id's suffix: the protein record may hold any amino acid.
    mixed = [">g.fna\n", "ACGT\n", ">p.faa\n", "MQLV\n"]

    def rule(rid: str) -> Modality:
        return modality_from_tag(rid) or Modality.DNA

    assert [r.sequence for r in parse_fasta(mixed, "x", rule)] == ["ACGT", "MQLV"]
    with pytest.raises(FastaError, match="line 4, column 2: 'Q' is not a dna residue"):
        parse_fasta(mixed, "x", Modality.DNA)


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(FastaError, match="cannot read the file"):
        read_fasta(tmp_path / "missing.fa")
    binary = tmp_path / "blob.fa"
    binary.write_bytes(b">a\n\xff\xfe\x00\n")
    with pytest.raises(FastaError, match="not a text file"):
        read_fasta(binary)


def test_tag_names_for_record_ids() -> None:
    assert is_tag_name("prom1") and is_tag_name("p.fna") and not is_tag_name("sp|P1|X")
    assert tag_name("prom1") == "prom1"
    assert tag_name("sp|P69905|HBA_HUMAN") == "sp_P69905_HBA_HUMAN"
    assert is_tag_name(tag_name("-odd-.")) and is_tag_name(tag_name("|"))


def test_gzipped_fasta_is_read_by_its_content_and_damage_is_one_line(tmp_path: Path) -> None:
    import gzip

    text = ">a first\nACGT\nAC\n>b\nTTTT\n"
    for name in ("in.fna.gz", "misnamed.fa"):  # told by the bytes, not the suffix
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()))
        records = read_fasta(path, Modality.DNA)
        assert [(r.id, r.sequence) for r in records] == [("a", "ACGTAC"), ("b", "TTTT")]
    damaged = tmp_path / "cut.fna.gz"
    damaged.write_bytes(gzip.compress(text.encode())[:-12])
    with pytest.raises(FastaError, match="damaged gzip data"):
        read_fasta(damaged)
