"""What the page's handlers rest on, without a browser: uploads and pasted text becoming
tags, a conversation that encodes each sequence once, the examples, the Model tab."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from chatnt_core.api import ChatNT
from chatnt_core.errors import ChatNTError
from chatnt_core.modality import Modality
from chatnt_core.prompt import find_tags
from chatnt_core.web.app import Handlers, tags_html
from chatnt_core.web.examples import example_questions, example_sequences
from chatnt_core.web.limits import LimitError, Limits
from chatnt_core.web.model_info import markdown, model_info
from chatnt_core.web.service import WebService

TOKENS = 8
SEQ = "ACGTTGCAAC" * 4

# tiny models run faster on one thread, and the answers compared come from one thread too
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def service(trained_bot: ChatNT) -> WebService:
    limits = Limits(max_sequence_length=100, max_upload_bytes=400, max_new_tokens=TOKENS)
    return WebService(trained_bot, limits)


def test_uploads_become_tags_named_by_record_id(service: WebService, tmp_path: Path) -> None:
    upload = tmp_path / "kinases.faa.gz"  # gzipped, protein by the file's suffix
    upload.write_bytes(gzip.compress(b">sp|P1|KIN one\nMKVLAAG\n>k2.fna\nACGT\n"))
    tagged = service.records_from_upload(upload, "kinases.faa.gz", None)
    assert [(t.tag, t.record, t.modality, t.source) for t in tagged] == [
        ("sp_P1_KIN", "sp|P1|KIN", Modality.PROTEIN, "kinases.faa.gz"),
        ("k2.fna", "k2.fna", Modality.DNA, "kinases.faa.gz"),  # the id's suffix wins
    ]
    plain = tmp_path / "x.txt"
    plain.write_text(">a\nACGU\n")
    assert service.records_from_upload(plain, "x.txt", Modality.RNA)[0].modality == Modality.RNA
    table = tags_html({t.tag: t for t in tagged})
    assert "<td>@sp_P1_KIN</td><td>protein</td><td>7</td><td>kinases.faa.gz</td>" in table


def test_upload_problems_name_the_users_file_and_the_fix(
    service: WebService, tmp_path: Path
) -> None:
    bad = tmp_path / "0f3a9c" / "mine.fa"  # where gradio keeps an upload
    bad.parent.mkdir()
    bad.write_text(">a\nACGT\n>a\nGG\n")
    with pytest.raises(ChatNTError, match=r"^mine.fa, line 3: duplicate id 'a'") as error:
        service.records_from_upload(bad, "mine.fa", None)
    assert str(bad.parent) not in str(error.value)
    bad.write_text(">long\n" + "A" * 101 + "\n")
    with pytest.raises(LimitError, match="@long is 101 letters long; .* up to 100 letters"):
        service.records_from_upload(bad, "mine.fa", None)
    bad.write_text(">big\n" + "A" * 500 + "\n")
    with pytest.raises(LimitError, match=r"mine.fa is 0.5 kB; .* up to 0.4 kB: split the file"):
        service.records_from_upload(bad, "mine.fa", None)
    bad.write_text(">r.xyz\nACGT\n")
    with pytest.raises(ChatNTError, match="'.xyz' is not a known suffix.*choose the modality"):
        service.records_from_upload(bad, "mine.fa", None)


def test_pasted_sequences_and_clashing_tags(service: WebService, tmp_path: Path) -> None:
    handlers = Handlers(service)
    tags, _, status = handlers.paste("acgt\nACGT", "p1", "auto", {})
    assert tags["p1"].sequence.sequence == "acgtACGT" and "1 sequence(s) loaded" in status
    tags, _, _ = handlers.paste(">a\nGG\n>b.faa\nMKV\n", "", "auto", tags)
    assert [t.modality for t in tags.values()] == [Modality.DNA, Modality.DNA, Modality.PROTEIN]
    same, _, status = handlers.paste(">a\nTT\n", "", "auto", tags)
    assert same == tags and "@a from pasted text is already loaded from pasted text" in status
    for text, name, message in [
        ("", "x", "nothing to add"),
        ("ACGT", " ", "give the pasted sequence a name"),
        ("ACGT", "p2", None),
    ]:
        _, _, status = handlers.paste(text, name, "auto", tags)
        assert (message or "sequence(s) loaded") in status


def test_a_conversation_encodes_each_sequence_once_and_answers_as_chatnt_chat(
    service: WebService, trained_bot: ChatNT
) -> None:
    tagged = {t.tag: t for t in service.pasted(f">p.fna\n{SEQ}\n", "", None)}
    first = "Is there a CTCF binding site in @p.fna?"
    second = "What is the GC content of @p.fna?"
    conversation = service.conversation()
    answers = [service.chat_turn(conversation, q, tagged) for q in (first, second)]
    assert conversation.session.cache_size == 1  # @p.fna encoded once for both turns
    reference = trained_bot.chat(max_new_tokens=TOKENS)
    expected = [reference.ask(first, {"p.fna": SEQ}), reference.ask(second)]
    assert answers == expected
    with pytest.raises(ChatNTError, match="@q has no sequence: upload a FASTA with a record 'q'"):
        service.chat_turn(conversation, "Is @q bound?", tagged)
    handlers = Handlers(service)
    history, kept, _, _, status = handlers.ask("Is @q bound?", [], tagged, None)
    assert history == [] and kept == "Is @q bound?" and "@q has no sequence" in status


def test_examples_are_questions_the_demo_cards_recognise(trained_bot: ChatNT) -> None:
    sequences = {e.tag: e for e in example_sequences()}
    assert "CTCF" in sequences["ctcf.fna"].note and "CTCF" not in sequences["no_ctcf.fna"].note
    for question in example_questions():
        match = trained_bot.find_task(question)
        assert match.how == "exact" and match.card is not None
        assert match.card.name.startswith("demo-")
        tags = find_tags(question)
        assert tags and all(tag in sequences for tag in tags)


def test_model_info_reads_the_checkpoint_and_its_evaluation(trained_bot: ChatNT) -> None:
    info = model_info(trained_bot)
    roles = [c["role"] for c in info["assembly"]["components"]]
    assert roles[0] == "encoder (dna)" and roles[-1] == "decoder"
    assert info["training"]["tasks"] and info["training"]["data"][0].endswith("demo")
    text = markdown(info)
    assert "| decoder | hf-causal-lm | hf-decoders |" in text
    assert "**Calibrated yes/no tasks:** demo-ctcf-site" in text
    assert "| demo-ctcf-site | mcc |" in text
    untrained = markdown(model_info(ChatNT.from_config("tiny-random")))
    assert "an untrained assembly: answers are noise" in untrained
    assert "No evaluation yet: run `chatnt evaluate" in untrained
