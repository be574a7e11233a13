"""Tags, modality resolution and the prompt errors of the foundation issue (item 6)."""

from __future__ import annotations

import pytest

from chatnt_core.errors import (
    EmptySequenceError,
    InvalidSequenceError,
    InvalidTagError,
    TagWithoutSequenceError,
    UnknownModalityError,
    UnusedSequenceError,
)
from chatnt_core.modality import Modality, modality_from_tag
from chatnt_core.prompt import (
    SequenceInput,
    Turn,
    as_sequence_inputs,
    bind_sequences,
    check_tag_syntax,
    find_tags,
    replace_tags,
)

ALL = [Modality.DNA, Modality.RNA, Modality.PROTEIN]


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("Is there a TATA box in @promoter.fna?", ["promoter.fna"]),
        ("Compare @a.fna and @b_2.frn.", ["a.fna", "b_2.frn"]),
        ("Does @seq-1 bind? And @seq-1 again", ["seq-1", "seq-1"]),
        ("mail me at someone@example.org", []),
        ("@x", ["x"]),
        ("no tags here", []),
        ("(@p.faa)", ["p.faa"]),
    ],
)
def test_find_tags(text: str, tags: list[str]) -> None:
    assert find_tags(text) == tags


def test_replace_tags_keeps_the_rest_of_the_text() -> None:
    assert replace_tags("In @a.fna, is @b.faa. ok?", "<seq>") == "In <seq>, is <seq>. ok?"


@pytest.mark.parametrize(
    ("tag", "modality"),
    [
        ("x.fna", Modality.DNA),
        ("x.FA", Modality.DNA),
        ("x.fasta", Modality.DNA),
        ("x.dna", Modality.DNA),
        ("x.frn", Modality.RNA),
        ("x.rna", Modality.RNA),
        ("x.faa", Modality.PROTEIN),
        ("x.prot", Modality.PROTEIN),
        ("x", None),
    ],
)
def test_modality_from_suffix(tag: str, modality: Modality | None) -> None:
    assert modality_from_tag(tag) == modality


def test_bind_uses_record_modality_over_suffix_and_strips_whitespace() -> None:
    sequences = as_sequence_inputs(
        [SequenceInput("s1", "ACGU\nACGU ", Modality.RNA), SequenceInput("p.faa", "MKV")]
    )
    bound = bind_sequences([Turn("Is @s1 like @p.faa?")], sequences, ALL)
    assert bound["s1"].modality is Modality.RNA
    assert bound["s1"].sequence == "ACGUACGU"
    assert bound["p.faa"].modality is Modality.PROTEIN


def test_same_tag_twice_is_bound_once() -> None:
    bound = bind_sequences([Turn("@a.fna vs @a.fna")], as_sequence_inputs({"a.fna": "ACGT"}), ALL)
    assert list(bound) == ["a.fna"]


def test_tag_without_sequence() -> None:
    with pytest.raises(TagWithoutSequenceError, match=r"@b\.fna has no sequence.*a\.fna"):
        bind_sequences([Turn("@a.fna and @b.fna")], as_sequence_inputs({"a.fna": "ACGT"}), ALL)


def test_unused_sequence() -> None:
    with pytest.raises(UnusedSequenceError, match="'extra.fna' is never referenced"):
        bind_sequences(
            [Turn("@a.fna?")], as_sequence_inputs({"a.fna": "ACGT", "extra.fna": "AC"}), ALL
        )


def test_unused_sequence_allowed_when_asked() -> None:
    bound = bind_sequences(
        [Turn("@a.fna?")],
        as_sequence_inputs({"a.fna": "ACGT", "later.fna": "AC"}),
        ALL,
        require_all_used=False,
    )
    assert list(bound) == ["a.fna"]


def test_invalid_characters_are_named_with_positions() -> None:
    with pytest.raises(InvalidSequenceError) as info:
        bind_sequences([Turn("@a.fna?")], as_sequence_inputs({"a.fna": "ACGTZAC1"}), ALL)
    message = str(info.value)
    assert "'Z' at 5" in message and "'1' at 8" in message and "dna" in message


def test_many_invalid_characters_are_summarised() -> None:
    with pytest.raises(InvalidSequenceError, match=r"and 5 more"):
        bind_sequences([Turn("@p.faa")], as_sequence_inputs({"p.faa": "M1234567890"}), ALL)


def test_lower_case_and_iupac_are_accepted() -> None:
    bound = bind_sequences([Turn("@a.fna")], as_sequence_inputs({"a.fna": "acgtNRYacgt"}), ALL)
    assert bound["a.fna"].sequence == "acgtNRYacgt"


def test_rna_rejects_thymine_and_dna_rejects_uracil() -> None:
    with pytest.raises(InvalidSequenceError, match="'T' at 3"):
        bind_sequences([Turn("@r.frn")], as_sequence_inputs({"r.frn": "ACTG"}), ALL)
    with pytest.raises(InvalidSequenceError, match="'U' at 1"):
        bind_sequences([Turn("@d.fna")], as_sequence_inputs({"d.fna": "UACG"}), ALL)


def test_empty_sequence() -> None:
    with pytest.raises(EmptySequenceError, match=r"@a\.fna is empty"):
        bind_sequences([Turn("@a.fna?")], as_sequence_inputs({"a.fna": " \n"}), ALL)


def test_unknown_modality_without_suffix() -> None:
    with pytest.raises(UnknownModalityError, match="cannot tell the modality of @seq"):
        bind_sequences([Turn("@seq?")], as_sequence_inputs({"seq": "ACGT"}), ALL)


def test_modality_without_encoder() -> None:
    with pytest.raises(UnknownModalityError, match="no protein encoder.*encoders.protein"):
        bind_sequences([Turn("@p.faa?")], as_sequence_inputs({"p.faa": "MKV"}), [Modality.DNA])


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Is @../../etc/passwd a promoter?", "@../../etc/passwd"),
        ("What about @/etc/passwd.", "@/etc/passwd"),
        ("see @~/x.fna", "@~/x.fna"),
        ("Is @data/x.fna GC-rich?", "@data/x.fna"),
        ("@C:\\seqs\\x.fna", "@C:\\seqs\\x.fna"),
        ("hidden @.x", "@.x"),
    ],
)
def test_tag_like_text_that_is_not_a_tag_is_refused(text: str, shown: str) -> None:
    with pytest.raises(InvalidTagError, match="is not a tag") as caught:
        bind_sequences([Turn(text)], {}, [Modality.DNA])
    assert f"'{shown}'" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ["mail a@b.com", "meet @ noon", "ratio 1/2", "Compare @a.fna/@b.fna.", "@a.fna, ok?"],
)
def test_text_with_at_signs_that_is_fine(text: str) -> None:
    check_tag_syntax(text)
