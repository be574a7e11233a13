"""``chatnt ask``, ``chatnt chat`` (driven through piped stdin) and ``chatnt batch``:
answers on stdout, user mistakes as one ``error:`` line and exit 1."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from training_helpers import one_thread

from chatnt_core.api import ChatNT
from chatnt_core.cli import main
from chatnt_core.modality import Modality
from chatnt_core.prompt import SequenceInput

CTCF_QUESTION = "Is a CTCF site hidden in @p.fna?"
SEQ = "ACGTTGCAAC" * 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_ask_prints_the_answer_and_its_task_details(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        ["ask", "tiny-random", CTCF_QUESTION, "--seq", f"p.fna={SEQ}", "--max-new-tokens", "3"],
        capsys,
    )
    assert code == 0
    details = out.rstrip("\n").split("\n")[-1]
    assert details.startswith("task: demo-ctcf-site, ")
    assert "probability: 0." in details and details.endswith("(uncalibrated)")
    code, out, _ = run_cli(
        ["ask", "tiny-random", "Hi @p", "--seq", f"p={SEQ}", "--max-new-tokens", "2", "--json"],
        capsys,
    )
    answer = json.loads(out)
    assert code == 0 and set(answer) >= {"text", "task", "label", "value", "probability"}
    assert answer["task"] is None


def test_ask_reads_only_the_file_the_user_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, SequenceInput]] = []
    original = ChatNT.ask

    def spy(self: ChatNT, question: str, sequences: Any = None, **kwargs: Any) -> Any:
        seen.append(dict(sequences))
        return original(self, question, sequences, **kwargs)

    monkeypatch.setattr(ChatNT, "ask", spy)
    one = tmp_path / "one.fa"
    one.write_text(f">x\n{SEQ[:20]}\n{SEQ[20:]}\n")
    args = ["ask", "tiny-random", "Hi @p", "--seq", f"p={one}", "--modality", "rna"]
    code, _, err = run_cli([*args, "--max-new-tokens", "2"], capsys)
    assert_one_line_error(code, err, f"{one}, line 2, column 4: 'T' is not a rna residue")
    code, _, _ = run_cli(["ask", "tiny-random", "Hi @p", "--seq", f"p={one}"], capsys)
    assert code == 0 and seen == [{"p": SequenceInput("p", SEQ, Modality.DNA)}]
    # A tag naming an existing file is still just a tag: it has no sequence.
    code, _, err = run_cli(["ask", "tiny-random", f"Hi @{one.name}", "--seq", f"q={SEQ}"], capsys)
    assert_one_line_error(code, err, f"@{one.name} has no sequence")
    two = tmp_path / "two.fa"
    two.write_text(f">a\n{SEQ}\n>b\n{SEQ}\n")
    code, _, err = run_cli(["ask", "tiny-random", "Hi @p", "--seq", f"p={two}"], capsys)
    assert_one_line_error(code, err, "holds 2 FASTA records")
    code, _, err = run_cli(["ask", "tiny-random", "Hi @p", "--seq", "p=missing.fa"], capsys)
    assert_one_line_error(code, err, "file 'missing.fa' does not exist")


def test_unknown_tag_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["ask", "tiny-random", "Is @q.fna bound?", "--seq", "p.fna=AC"], capsys)
    assert_one_line_error(code, err, "@q.fna has no sequence")
    code, _, err = run_cli(["ask", "no-such-dir", "Hi"], capsys)
    assert_one_line_error(code, err, "not a checkpoint directory")


def test_long_inline_sequences_work_and_bad_seq_options_are_one_line_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    long = "ACGT" * 100  # 400 letters: longer than a file name may be on most systems
    args = ["ask", "tiny-random", CTCF_QUESTION, "--seq", f"p.fna={long}"]
    for command in (args, ["generate", *args[1:]]):
        code, out, err = run_cli([*command, "--max-new-tokens", "2"], capsys)
        assert code == 0 and out.strip() and "Traceback" not in err, err
    code, _, err = run_cli([*args, "--seq", "p.fna=GGCC"], capsys)
    assert_one_line_error(code, err, "--seq p.fna is given twice")
    for blank in ("", "   "):
        code, _, err = run_cli(["ask", "tiny-random", blank, "--seq", "p.fna=AC"], capsys)
        assert_one_line_error(code, err, "the question is empty")


def test_modality_comes_from_the_tag_the_file_or_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["ask", "tiny-random", "Is @r.xyz bound?", "--seq", "r.xyz=AC"], capsys)
    assert_one_line_error(code, err, "@r.xyz", "'.xyz' is not a known suffix", "--modality")
    # an explicit --modality covers the unknown suffix
    args = ["ask", "tiny-random", "Is @r.xyz bound?", "--seq", "r.xyz=MKV", "--modality", "protein"]
    code, _, err = run_cli([*args, "--max-new-tokens", "1"], capsys)
    assert code == 0, err
    # a protein FASTA (.faa) gives its records the protein encoder in batch and chat
    faa = tmp_path / "kinases.faa"
    faa.write_text(">k1\nMKVLAAGWQE\n>k2\nMSTNPKPQRK\n")
    out_file = tmp_path / "k.tsv"
    batch = ["batch", "tiny-random", "--fasta", str(faa), "--question", "What is @seq?"]
    code, _, err = run_cli([*batch, "--out", str(out_file), "--max-new-tokens", "1"], capsys)
    assert code == 0, err
    assert json.loads(out_file.with_name("k.tsv.job.json").read_text())["modality"] == "protein"
    code, _, err = run_cli([*batch, "--out", str(tmp_path / "d.tsv"), "--modality", "dna"], capsys)
    assert_one_line_error(code, err, "is not a dna residue")


BAD_FASTA = {
    "sequence-first": ("ACGT\n>a\nACGT\n", "line 1", "before any '>' header"),
    "empty-id": (">a\nACGT\n> x\nAC\n", "line 3", "has no id"),
    "no-sequence": (">a\nACGT\n>b\n>c\nAC\n", "line 3", "record 'b' has no sequence"),
    "duplicate": (">a\nACGT\n>b\nAC\n>a\nGG\n", "line 5", "duplicate id 'a'"),
    "empty": ("\n", "", "no FASTA records"),
    "bad-residue": (">a\nACGT\nACXT\n", "line 3, column 3", "'X' is not a dna residue"),
}


@pytest.mark.parametrize("case", sorted(BAD_FASTA))
def test_bad_fasta_is_one_line_error_with_line_number(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, line, fragment = BAD_FASTA[case]
    fasta = tmp_path / "in.fa"
    fasta.write_text(text)
    out = tmp_path / "out.tsv"
    question = "Is @seq bound?"
    batch = ["batch", "tiny-random", "--fasta", str(fasta), "--question", question]
    for args in ([*batch, "--out", str(out)], ["chat", "tiny-random", "--fasta", str(fasta)]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, f"{fasta}{', ' + line if line else ':'}", fragment)
    assert not out.exists()


def test_batch_writes_one_row_per_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTAC\n>b\nGGGCCCAT\n>c\nTTTTAAAA\n")
    out = tmp_path / "res.tsv"
    base = ["batch", "tiny-random", "--fasta", str(fasta), "--out", str(out)]
    args = [*base, "--question", "Is there a CTCF binding site in @seq?", "--batch-size", "2"]
    code, stdout, _ = run_cli([*args, "--max-new-tokens", "2", "--no-progress"], capsys)
    assert code == 0 and "3 records, 0 already done, 3 answered here in " in stdout
    assert re.search(r"answered here in [0-9.]+ s \([0-9.]+ records/s\); complete", stdout)
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert [r[0] for r in rows] == ["id", "a", "b", "c"]
    assert all(r[2] == "demo-ctcf-site" and 0 < float(r[5]) < 1 for r in rows[1:])
    code, _, err = run_cli([*base, "--question", "Is @x bound?"], capsys)
    assert_one_line_error(code, err, "must contain @seq")


def test_chat_from_piped_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fasta = tmp_path / "seqs.fa"
    fasta.write_text(f">prom1 a promoter\n{SEQ}\n>kin.faa\nMKVLAAGW\n>sp|P1|X\nACGT\n")
    script = [
        "/help",
        "Is a CTCF site hidden in @prom1?",
        "Would you say @prom1 contains a CTCF motif?",
        "/history",
        "/seqs",
        "/bogus",
        "What about @nope?",
        "/reset",
        "/history",
        "/quit",
        "Is a CTCF site hidden in @prom1?",
    ]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(script) + "\n"))
    code, out, err = run_cli(
        ["chat", "tiny-random", "--fasta", str(fasta), "--max-new-tokens", "3"], capsys
    )
    assert code == 0
    assert "/history  show the conversation so far" in out
    assert out.count("task: demo-ctcf-site") == 2  # two turns answered, none after /quit
    assert "user: Is a CTCF site hidden in @prom1?" in out
    assert "user: Would you say @prom1 contains a CTCF motif?" in out
    assert "@prom1\tdna\t40" in out and "@kin.faa\tprotein\t8" in out
    assert "@sp_P1_X\tdna\t4\tsp|P1|X" in out
    assert "conversation reset" in out and out.rstrip().endswith("(no turns yet)")
    assert "unknown command /bogus" in err and "error: @nope has no sequence" in err


@pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")
def test_ask_on_a_checkpoint_emits_no_deprecation_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Third-party APIs are used in their current form: no FutureWarning reaches users."""
    import torch

    from chatnt_core.model import ChatNTModel
    from chatnt_core.training import checkpoint as ckpt

    torch.manual_seed(0)
    saved = ckpt.save_model(ChatNTModel.from_config("tiny-random"), tmp_path / "run")
    args = ["ask", str(saved), CTCF_QUESTION, "--seq", f"p.fna={SEQ}", "--max-new-tokens", "3"]
    code, out, err = run_cli(args, capsys)
    assert code == 0 and out.strip(), err
    assert "Warning" not in err
