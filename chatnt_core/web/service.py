"""The loaded model and what the page and the HTTP API do with it, in one place.

The page (``chatnt_core.web.app``) and the JSON API (``chatnt_core.web.http``) are two
front ends to the same functions, so they cannot drift apart: an answer over HTTP is the
answer in the page, and both are ``ChatNT.ask`` / ``chatnt batch`` on the same input.
Nothing here imports gradio or FastAPI.

Where sequences come from is always explicit, as in the CLI: an upload (a FASTA file the
browser sent), pasted text, or a JSON field. A tag is only ever looked up among those
names; no path in a question or a request is opened. Every sequence is checked against
the server's limits (``chatnt_core.web.limits``) before any model work.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatnt_core.batch import check_question, read_tsv_rows, run_batch, write_parquet
from chatnt_core.errors import ChatNTError, PromptError
from chatnt_core.fasta import FastaError, FastaRecord, parse_fasta, read_fasta, tag_name
from chatnt_core.modality import Modality, modality_for_name, modality_from_path
from chatnt_core.prompt import SequenceInput, Turn, find_tags
from chatnt_core.web.limits import Limits, ModelGate

if TYPE_CHECKING:
    from chatnt_core.api import Answer, ChatNT, Conversation

WEB_FIX = "choose the modality in the list"
# The CLI's defaults, so a batch in the page gives the rows ``chatnt batch`` gives.
BATCH_SIZE = 32


@dataclass(frozen=True)
class Tagged:
    """A sequence the user can name in a question, and where it came from."""

    sequence: SequenceInput  # .name is the tag
    source: str  # the uploaded file's name, "pasted text" or "examples"
    record: str  # the FASTA record id (a tag may be a cleaned form of it)

    @property
    def tag(self) -> str:
        return self.sequence.name

    @property
    def modality(self) -> Modality:
        return self.sequence.modality or Modality.DNA


@dataclass(frozen=True)
class BatchResult:
    """A finished web batch: the TSV cells as ``chatnt batch`` writes them, and files."""

    header: list[str]
    cells: list[list[str]]  # one list of TSV cells per record, in FASTA order
    rows: list[dict[str, Any]]  # the same rows with typed values (for JSON and parquet)
    tsv: Path
    parquet: Path


def parse_modality(value: str | None) -> Modality | None:
    """``auto``/empty -> None (from the tag's suffix), else the named modality."""
    if value is None or value in ("", "auto"):
        return None
    try:
        return Modality(value)
    except ValueError:
        names = ", ".join(m.value for m in Modality)
        raise ChatNTError(f"modality '{value}' is not one of auto, {names}") from None


class WebService:
    """The model behind one server, its limits and its gate (one request at a time)."""

    def __init__(self, chatnt: ChatNT, limits: Limits | None = None) -> None:
        self.chatnt = chatnt
        # No encoder outputs kept between requests: a sequence encoded alone and one encoded
        # in a padded batch differ in the last bits, so with a shared cache an answer would
        # depend on what other users asked before. Each conversation still encodes each of
        # its sequences once (its own cache), and every answer is the one ``ChatNT.ask`` or
        # ``chatnt batch`` gives in a fresh process.
        chatnt.model.encoding_caches.clear()
        self.limits = limits or Limits()
        self.gate = ModelGate(self.limits)
        # batch results and example files; removed by the server when it stops
        self.workdir = Path(tempfile.mkdtemp(prefix="chatnt-serve-"))
        self._info: dict[str, Any] | None = None

    # ---- sequences in ----------------------------------------------------------------------

    def records_from_text(
        self, text: str, source: str, default: Modality | None, fallback: Modality
    ) -> list[Tagged]:
        """FASTA text -> tagged records (ids made tags), every record within the limits."""
        self.limits.check_upload(source, len(text.encode("utf-8")))
        records = parse_fasta(
            text.splitlines(),
            source,
            lambda rid: modality_for_name(rid, default, fallback, WEB_FIX),
        )
        return self._tag_records(records, source, default, fallback)

    def records_from_upload(
        self, path: str | Path, name: str, default: Modality | None
    ) -> list[Tagged]:
        """An uploaded FASTA (plain or gzipped); ``name`` is what the user called it."""
        path = Path(path)
        self.limits.check_upload(name, path.stat().st_size)
        fallback = modality_from_path(name) or Modality.DNA
        try:
            records = read_fasta(
                path, lambda rid: modality_for_name(rid, default, fallback, WEB_FIX)
            )
        except FastaError as exc:  # name the file as the user knows it, not the temp copy
            raise FastaError(str(exc).replace(str(path), name)) from None
        return self._tag_records(records, name, default, fallback)

    def _tag_records(
        self,
        records: Sequence[FastaRecord],
        source: str,
        default: Modality | None,
        fallback: Modality,
    ) -> list[Tagged]:
        self.limits.check_records(source, len(records))  # a tag list a page can show
        found: dict[str, Tagged] = {}
        for record in records:
            tag = tag_name(record.id)
            if tag in found:
                raise ChatNTError(
                    f"{source}, line {record.line}: record '{record.id}' would be tagged "
                    f"@{tag}, like '{found[tag].record}'; rename one of them"
                )
            self.limits.check_sequence(tag, len(record.sequence))
            modality = modality_for_name(record.id, default, fallback, WEB_FIX)
            found[tag] = Tagged(SequenceInput(tag, record.sequence, modality), source, record.id)
        return list(found.values())

    def pasted(self, text: str, name: str, default: Modality | None) -> list[Tagged]:
        """Pasted FASTA text, or one bare sequence named ``name``."""
        text = text.strip()
        if not text:
            raise ChatNTError("nothing to add: paste a sequence or FASTA text first")
        if text.startswith(">"):
            return self.records_from_text(text, "pasted text", default, Modality.DNA)
        name = name.strip().lstrip("@")
        if not name:
            raise ChatNTError("give the pasted sequence a name (it becomes its @tag)")
        header = f">{name}\n"
        return self.records_from_text(header + text, "pasted text", default, Modality.DNA)

    def bind(
        self, sequences: Mapping[str, str], default: Modality | None = None
    ) -> dict[str, SequenceInput]:
        """JSON ``{tag: sequence}`` -> checked sequences (API requests)."""
        bound: dict[str, SequenceInput] = {}
        for name, sequence in sequences.items():
            tag = name.strip().lstrip("@")
            letters = "".join(sequence.split())
            self.limits.check_sequence(tag, len(letters))
            modality = modality_for_name(tag, default, Modality.DNA, "give a modality")
            bound[tag] = SequenceInput(tag, letters, modality)
        return bound

    def check_question(self, question: str) -> list[str]:
        """The question's distinct tags, within the tag limit."""
        if not question.strip():
            raise PromptError("the question is empty: type a question, naming sequences as @tags")
        tags = list(dict.fromkeys(find_tags(question)))
        self.limits.check_tags(len(tags))
        return tags

    # ---- answers ---------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        sequences: Mapping[str, SequenceInput],
        *,
        task: str | None = None,
        max_new_tokens: int | None = None,
    ) -> Answer:
        """One question, as ``ChatNT.ask`` answers it (after the limits)."""
        self.check_question(question)
        tokens = self.limits.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.limits.check_new_tokens(tokens)
        with self.gate.hold():
            return self.chatnt.ask(question, sequences, task=task, max_new_tokens=tokens)

    def conversation(self) -> Conversation:
        return self.chatnt.chat(max_new_tokens=self.limits.max_new_tokens)

    def chat_turn(
        self, conversation: Conversation, message: str, tags: Mapping[str, Tagged]
    ) -> Answer:
        """The next turn of a page's conversation; each sequence is encoded once in it."""
        used = self.check_question(message)
        missing = [t for t in used if t not in tags and t not in conversation.sequences]
        if missing:
            raise PromptError(
                f"@{missing[0]} has no sequence: upload a FASTA with a record '{missing[0]}' "
                "or paste it under that name"
            )
        new = {t: tags[t].sequence for t in used if t not in conversation.sequences}
        with self.gate.hold():
            return conversation.ask(message, new)

    def continue_chat(
        self,
        history: Sequence[tuple[str, str]],
        question: str,
        sequences: Mapping[str, SequenceInput],
        *,
        task: str | None = None,
    ) -> Answer:
        """The next answer of a conversation whose turns so far the client sends back (the
        API keeps no sessions); ``sequences`` binds every tag of the history and question,
        and each is encoded once for this answer."""
        self.check_question(question)
        earlier = {t for user, _ in history for t in find_tags(user)}
        unused = [t for t in sequences if t not in earlier and t not in find_tags(question)]
        if unused:
            raise PromptError(
                f"sequence '{unused[0]}' is not referenced in the conversation: add "
                f"@{unused[0]} or drop the sequence"
            )
        missing = sorted(t for t in earlier if t not in sequences)
        if missing:
            raise PromptError(
                f"@{missing[0]} of an earlier turn has no sequence: send it in 'sequences'"
            )
        conversation = self.conversation()
        conversation.session.turns = [Turn(user, answer) for user, answer in history]
        conversation.session.sequences = {t: sequences[t] for t in earlier}
        new = {t: s for t, s in sequences.items() if t not in earlier}
        with self.gate.hold():
            return conversation.ask(question, new, task=task)

    def batch_records(
        self, fasta: str | Path, name: str, modality: Modality | None
    ) -> tuple[list[FastaRecord], Modality]:
        """An uploaded batch FASTA, read as ``chatnt batch`` reads it: one modality for
        every record (``modality``, else the file name's suffix, else DNA)."""
        path = Path(fasta)
        self.limits.check_upload(name, path.stat().st_size)
        chosen = modality or modality_from_path(name) or Modality.DNA
        try:
            records = read_fasta(path, chosen)
        except FastaError as exc:  # name the file as the user knows it, not the temp copy
            raise FastaError(str(exc).replace(str(path), name)) from None
        self._check_batch(records, name)
        return records, chosen

    def batch_records_from_text(
        self, text: str, modality: Modality | None
    ) -> tuple[list[FastaRecord], Modality]:
        """FASTA text sent in a request; ``modality`` (default DNA) for every record."""
        source = "the request's fasta"
        self.limits.check_upload(source, len(text.encode("utf-8")))
        chosen = modality or Modality.DNA
        records = parse_fasta(text.splitlines(), source, chosen)
        self._check_batch(records, source)
        return records, chosen

    def _check_batch(self, records: Sequence[FastaRecord], source: str) -> None:
        self.limits.check_records(source, len(records))
        for record in records:
            self.limits.check_sequence(record.id, len(record.sequence))

    def batch(
        self,
        records: Sequence[FastaRecord],
        question: str,
        modality: Modality,
        *,
        workdir: Path | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> BatchResult:
        """``chatnt batch`` on the records, into a fresh folder, as TSV and parquet.

        Progress is reported as (records answered, records); the request's deadline is
        checked after every batch, so a batch that runs too long stops with a message.
        """
        if not question.strip():
            raise PromptError("the question is empty: type one question naming each record as @seq")
        check_question(question)
        self._check_batch(records, "the FASTA")
        folder = Path(tempfile.mkdtemp(prefix="chatnt-batch-", dir=workdir))
        out = folder / "results.tsv"
        total = len(records)
        with self.gate.hold() as deadline:

            def after_batch(count: int) -> None:
                done = min(count * BATCH_SIZE, total)
                if on_progress is not None:
                    on_progress(done, total)
                if done < total:
                    deadline.check(f"{done} of {total} records answered")

            run_batch(
                self.chatnt,
                records,
                question,
                out,
                modality=modality,
                batch_size=BATCH_SIZE,
                max_new_tokens=self.limits.max_new_tokens,
                progress=False,
                on_batch=after_batch,
            )
        lines = out.read_text(encoding="utf-8").split("\n")[:-1]
        rows = read_tsv_rows(out)
        parquet = folder / "results.parquet"
        write_parquet(rows, parquet)
        cells = [line.split("\t") for line in lines[1:]]
        return BatchResult(lines[0].split("\t"), cells, rows, out, parquet)

    # ---- the model -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What is loaded (``chatnt_core.web.model_info``), gathered once."""
        if self._info is None:
            from chatnt_core.web.model_info import model_info

            self._info = model_info(self.chatnt)
        return self._info
