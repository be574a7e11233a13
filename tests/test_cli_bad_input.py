"""Every bad input a new user hit, through the real CLI: one ``error:`` line that names the
problem (exit 1, no traceback), or, where the input is valid, an answer (exit 0).

One table, one row per case of the user-testing report; each row builds its own files.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from training_helpers import one_thread

from chatnt_core.cli import main

SEQ = "ACGTTGCAAC" * 4
QUESTION = "Is there a CTCF binding site in @s.fna?"
ASK = ["ask", "tiny-random", "--max-new-tokens", "2"]


@dataclass(frozen=True)
class Case:
    argv: Callable[[Path], list[str]]  # built in the test's own folder
    expect: str | None  # a fragment of the one-line error; None: the command must succeed


def _fasta(path: Path, text: str, gz: bool = False) -> str:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def _rerun_batch_with_another_question(tmp: Path) -> list[str]:
    fasta = _fasta(tmp / "in.fa", f">a\n{SEQ}\n>b\n{SEQ[:20]}\n")
    out = tmp / "res.tsv"
    first = ["batch", "tiny-random", "--fasta", fasta, "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit):
        main(
            [*first, "--question", "Is there a CTCF binding site in @seq?", "--max-new-tokens", "1"]
        )
    return [*first, "--question", "What is the GC content of @seq?"]


CASES = {
    "inline sequence of 400 letters": Case(
        lambda t: [*ASK, QUESTION, "--seq", f"s.fna={'ACGT' * 100}"], None
    ),
    "empty question": Case(lambda t: [*ASK, "", "--seq", f"s.fna={SEQ}"], "question is empty"),
    "blank question": Case(lambda t: [*ASK, "  ", "--seq", f"s.fna={SEQ}"], "question is empty"),
    "the same --seq twice": Case(
        lambda t: [*ASK, QUESTION, "--seq", f"s.fna={SEQ}", "--seq", "s.fna=GG"],
        "--seq s.fna is given twice",
    ),
    "a relative path as a tag": Case(
        lambda t: [*ASK, "Is @../../etc/passwd a promoter?"], "'@../../etc/passwd' is not a tag"
    ),
    "an absolute path as a tag": Case(
        lambda t: [*ASK, "Is @/etc/passwd a promoter?"], "'@/etc/passwd' is not a tag"
    ),
    "batch resumed with another question": Case(
        _rerun_batch_with_another_question, "holds answers written for another question"
    ),
    "gzipped FASTA": Case(
        lambda t: [*ASK, QUESTION, "--seq", "s.fna=" + _fasta(t / "s.fna.gz", ">s\n" + SEQ, True)],
        None,
    ),
    "a 100,000-character question": Case(
        lambda t: [*ASK, "Is this long? " * 7200 + "@s.fna", "--seq", f"s.fna={SEQ}"],
        "shorten the question",
    ),
    "an unknown tag suffix": Case(
        lambda t: [*ASK, "Is @r.xyz bound?", "--seq", f"r.xyz={SEQ}"],
        "'.xyz' is not a known suffix",
    ),
    "a protein FASTA in batch": Case(
        lambda t: [
            "batch", "tiny-random", "--fasta", _fasta(t / "k.faa", ">k1\nMKVLAAGWQE\n"),
            "--question", "What is @seq?", "--out", str(t / "k.tsv"), "--max-new-tokens", "1",
        ],
        None,
    ),
    "a config with several errors": Case(
        lambda t: ["config", "validate", _config_with_three_errors(t)],
        "hidden_sise: Extra inputs are not permitted (did you mean 'hidden_size'?); ",
    ),
}  # fmt: skip


def _config_with_three_errors(tmp: Path) -> str:
    path = tmp / "bad.yaml"
    path.write_text(
        "encoders:\n  dna:\n    name: motif-cnn\n    params: {hidden_sise: 8}\n"
        "    projection: {name: mlpp}\ndecoder: {name: hf-causal-lm, params: {pathh: x}}\n"
    )
    return str(path)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_valid_input_works(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    argv = case.argv(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    code = int(exit_info.value.code or 0)
    assert "Traceback" not in captured.err
    if case.expect is None:
        assert code == 0 and captured.out.strip(), captured.err
    else:
        assert code == 1, captured.out
        assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
        assert case.expect in captured.err
