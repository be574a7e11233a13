"""The page: Chat, Batch and Model tabs (Gradio Blocks) over one ``WebService``.

Every handler is a thin adapter: it turns the page's inputs into a ``WebService`` call
and the result (or the one-line ``ChatNTError`` message) into what the page shows. The
work and the rules (limits, where sequences may come from, the gate in front of the
model) live in ``chatnt_core.web.service``, shared with the JSON API.

Tables and messages are plain HTML with every value escaped, not Markdown: answers of a
model and record ids may hold ``*`` or ``_``, which Markdown would eat, and what the page
shows must be exactly what ``chatnt batch`` and ``ChatNT.ask`` return.
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from chatnt_core.errors import ChatNTError
from chatnt_core.modality import Modality
from chatnt_core.web.examples import example_fasta, example_questions, example_sequences
from chatnt_core.web.model_info import markdown as model_markdown
from chatnt_core.web.service import Tagged, WebService, parse_modality

if TYPE_CHECKING:
    from chatnt_core.api import Answer, Conversation

MODALITIES = ["auto", "dna", "rna", "protein"]
DNA = Modality.DNA
DEFAULT_BATCH_QUESTION = "Is there a CTCF binding site in @seq?"
CSS = """
.chatnt-table table { border-collapse: collapse; font-size: 0.9em; }
.chatnt-table th, .chatnt-table td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
.chatnt-table td { overflow-wrap: anywhere; white-space: pre-wrap; }
#answer-table { width: 100%; table-layout: fixed; }
#answer-table th { width: 8em; }
.chatnt-error { color: #b00020; font-weight: 600; }
.chatnt-note { color: #555; }
"""
Tags = dict[str, Tagged]


# ---- rendering ---------------------------------------------------------------------------


def shown(text: str) -> str:
    """``text`` with each character a page cannot show (NUL and other control characters,
    which an undertrained model does emit) replaced by U+FFFD, so the page shows the same
    text in every browser; line breaks and tabs stay."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)


def error_html(exc: Exception) -> str:
    return f'<div class="chatnt-error">⚠ {html.escape(str(exc))}</div>'


def note_html(text: str) -> str:
    return f'<div class="chatnt-note">{html.escape(text)}</div>'


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(shown(str(cell)))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return (
        f'<div class="chatnt-table"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def tags_html(tags: Tags) -> str:
    if not tags:
        return note_html("No sequences yet: upload a FASTA file, paste one, or load the examples.")
    rows = [
        (f"@{t.tag}", t.modality.value, len(t.sequence.sequence), t.source) for t in tags.values()
    ]
    return table_html(["tag", "modality", "length", "from"], rows, "tag-table")


def probability_text(answer: Answer) -> str | None:
    """``P(yes) = 0.812 (calibrated)``; the mark says when the number is not calibrated."""
    if answer.probability is None:
        return None
    kind = "calibrated" if answer.calibrated else "uncalibrated"
    return f"P(yes) = {answer.probability:.3f} ({kind})"


def parsed_text(answer: Answer) -> str:
    if answer.task is None:
        return "no task recognised: no label or probability"
    if not answer.parseable:
        return f"task {answer.task}: the answer could not be parsed"
    parsed = answer.label if answer.label is not None else f"{answer.value:g}"
    return f"task {answer.task}: {parsed}"


def answer_message(answer: Answer) -> str:
    """The assistant's bubble: the words, then what they mean."""
    details = [parsed_text(answer)]
    probability = probability_text(answer)
    if probability:
        details.append(probability)
    return f"{shown(answer.text)}\n\n[{' · '.join(details)}]"


def answer_html(answer: Answer) -> str:
    """The last answer's fields, one per row (the values the API returns)."""
    fields = [
        ("answer", answer.text),
        ("task", answer.task or ""),
        ("parsed", parsed_text(answer)),
        ("probability", probability_text(answer) or ""),
    ]
    rows = "".join(
        f'<tr><th>{name}</th><td data-field="{name}">{html.escape(shown(value))}</td></tr>'
        for name, value in fields
    )
    return f'<div class="chatnt-table"><table id="answer-table">{rows}</table></div>'


# ---- handlers ----------------------------------------------------------------------------


def _merge(tags: Tags, new: Sequence[Tagged]) -> Tags:
    merged = dict(tags)
    for item in new:
        known = merged.get(item.tag)
        if known is not None and known.sequence.sequence != item.sequence.sequence:
            raise ChatNTError(
                f"@{item.tag} from {item.source} is already loaded from {known.source} with "
                "another sequence: rename one of the records"
            )
        merged.setdefault(item.tag, item)
    return merged


def _file_path(value: Any) -> str:
    return value if isinstance(value, str) else str(getattr(value, "name", value))


class Handlers:
    """The page's event handlers, bound to one service."""

    def __init__(self, service: WebService) -> None:
        self.service = service

    def upload(self, files: Any, modality: str, tags: Tags) -> tuple[Tags, str, str]:
        try:
            default = parse_modality(modality)
            for value in files or []:
                path = _file_path(value)
                found = self.service.records_from_upload(path, Path(path).name, default)
                tags = _merge(tags, found)
        except ChatNTError as exc:
            return tags, tags_html(tags), error_html(exc)
        return tags, tags_html(tags), note_html(f"{len(tags)} sequence(s) loaded")

    def paste(self, text: str, name: str, modality: str, tags: Tags) -> tuple[Tags, str, str]:
        try:
            tags = _merge(tags, self.service.pasted(text, name, parse_modality(modality)))
        except ChatNTError as exc:
            return tags, tags_html(tags), error_html(exc)
        return tags, tags_html(tags), note_html(f"{len(tags)} sequence(s) loaded")

    def examples(self, tags: Tags) -> tuple[Tags, str, str]:
        fasta = "".join(f">{e.tag}\n{e.sequence}\n" for e in example_sequences())
        try:
            tags = _merge(tags, self.service.records_from_text(fasta, "examples", None, DNA))
        except ChatNTError as exc:
            return tags, tags_html(tags), error_html(exc)
        notes = "; ".join(f"@{e.tag}: {e.note}" for e in example_sequences())
        return tags, tags_html(tags), note_html(f"Example sequences loaded ({notes})")

    def ask(
        self,
        message: str,
        history: list[dict[str, Any]] | None,
        tags: Tags,
        conversation: Conversation | None,
    ) -> tuple[list[dict[str, Any]], str, Conversation | None, str, str]:
        history = list(history or [])
        try:
            conversation = conversation or self.service.conversation()
            answer = self.service.chat_turn(conversation, message, tags)
        except ChatNTError as exc:
            return history, message, conversation, gr.skip(), error_html(exc)
        history += [
            {"role": "user", "content": message},
            {"role": "assistant", "content": answer_message(answer)},
        ]
        return history, "", conversation, answer_html(answer), ""

    def batch(
        self,
        file: Any,
        question: str,
        modality: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how gradio asks for a bar
    ) -> tuple[str, str, list[str] | None]:
        if not file:
            return error_html(ChatNTError("upload a FASTA file first")), "", None
        path = _file_path(file)
        try:
            records, chosen = self.service.batch_records(
                path, Path(path).name, parse_modality(modality)
            )

            def report(done: int, total: int) -> None:
                progress((done, total), desc="answering", unit="records")

            result = self.service.batch(
                records, question, chosen, workdir=self.service.workdir, on_progress=report
            )
        except ChatNTError as exc:
            return error_html(exc), "", None
        table = table_html(result.header, result.cells, "batch-results")
        status = note_html(f"{len(result.cells)} records answered ({chosen.value})")
        return status, table, [str(result.tsv), str(result.parquet)]


def example_batch_file(service: WebService) -> str:
    """The example sequences as a FASTA file the batch tab can take."""
    path = Path(tempfile.mkdtemp(dir=service.workdir)) / "examples.fna"
    path.write_text(example_fasta(), encoding="utf-8")
    return str(path)


def limits_note(service: WebService) -> str:
    limits = service.limits
    return (
        f"Limits of this server: sequences up to {limits.max_sequence_length:,} letters, "
        f"uploads up to {limits.max_upload_bytes / 1e6:.1f} MB, "
        f"{limits.max_batch_records:,} records per batch, {limits.max_tags} @tags per "
        f"question, {limits.timeout:g} s per request, answers up to "
        f"{limits.max_new_tokens} tokens."
    )


# ---- the page ----------------------------------------------------------------------------


def build_blocks(service: WebService) -> gr.Blocks:
    """The three tabs; queued so one request at a time reaches the model."""
    handlers = Handlers(service)
    model = {"concurrency_id": "model", "concurrency_limit": 1}
    # uploads and results in Gradio's cache are removed a day after they were made
    with gr.Blocks(title="chatnt", analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
        gr.Markdown(
            "# chatnt\nAsk English questions about DNA, RNA and protein sequences. Name a "
            "sequence in a question as `@tag`."
        )
        with gr.Tab("Chat"):
            tags = gr.State({})
            conversation = gr.State(None)
            with gr.Row():
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(
                        label="Conversation", elem_id="chat", height=420, render_markdown=False
                    )
                    question = gr.Textbox(
                        label="Question (name sequences as @tags)",
                        placeholder="Is there a CTCF binding site in @ctcf.fna?",
                        elem_id="question",
                    )
                    with gr.Row():
                        send = gr.Button("Ask", variant="primary", elem_id="ask")
                        reset = gr.Button("New conversation", elem_id="new-conversation")
                    chat_status = gr.HTML(elem_id="chat-status")
                    last = gr.HTML(elem_id="last-answer")
                    gr.Examples(example_questions(), inputs=question, label="Example questions")
                with gr.Column(scale=2):
                    modality = gr.Dropdown(
                        MODALITIES, value="auto", label="Modality of new sequences"
                    )
                    upload = gr.File(
                        label="Upload FASTA files (each record becomes a @tag named by its id)",
                        file_count="multiple",
                        elem_id="fasta-upload",
                    )
                    with gr.Accordion("Paste a sequence", open=False):
                        paste_name = gr.Textbox(label="Name (its @tag)", elem_id="paste-name")
                        paste = gr.Textbox(
                            label="Sequence, or FASTA text", lines=3, elem_id="paste"
                        )
                        add = gr.Button("Add", elem_id="add-paste")
                    load_examples = gr.Button("Load example sequences", elem_id="load-examples")
                    seq_status = gr.HTML(elem_id="seq-status")
                    tag_list = gr.HTML(tags_html({}), elem_id="tags")
            seq_outputs = [tags, tag_list, seq_status]
            upload.upload(handlers.upload, [upload, modality, tags], seq_outputs)
            add.click(handlers.paste, [paste, paste_name, modality, tags], seq_outputs)
            load_examples.click(handlers.examples, [tags], seq_outputs)
            ask_inputs = [question, chatbot, tags, conversation]
            ask_outputs = [chatbot, question, conversation, last, chat_status]
            send.click(handlers.ask, ask_inputs, ask_outputs, **model)  # type: ignore[arg-type]
            question.submit(handlers.ask, ask_inputs, ask_outputs, **model)  # type: ignore[arg-type]
            cleared = [chatbot, conversation, last, chat_status]
            reset.click(lambda: ([], None, "", ""), None, cleared)
        with gr.Tab("Batch"):
            gr.Markdown(
                "One question for every record of a FASTA file: write `@seq` where the record "
                "goes. The rows are those of `chatnt batch` on the same file."
            )
            with gr.Row():
                batch_file = gr.File(label="FASTA file", elem_id="batch-upload")
                with gr.Column():
                    batch_question = gr.Textbox(
                        DEFAULT_BATCH_QUESTION,
                        label="Question (with @seq)",
                        elem_id="batch-question",
                    )
                    batch_modality = gr.Dropdown(
                        MODALITIES, value="auto", label="Modality of every record"
                    )
                    with gr.Row():
                        run = gr.Button("Run", variant="primary", elem_id="batch-run")
                        use_example = gr.Button("Use the example FASTA", elem_id="batch-example")
            batch_status = gr.HTML(elem_id="batch-status")
            batch_table = gr.HTML(elem_id="batch-table")
            downloads = gr.File(
                label="Download (TSV, Parquet)", file_count="multiple", elem_id="batch-downloads"
            )
            use_example.click(lambda: example_batch_file(service), None, batch_file)
            run.click(
                handlers.batch,
                [batch_file, batch_question, batch_modality],
                [batch_status, batch_table, downloads],
                **model,  # type: ignore[arg-type]
            )
        with gr.Tab("Model"):
            info = service.info()
            gr.Markdown(model_markdown(info), elem_id="model-info")
            plots = (info.get("evaluation") or {}).get("plots") or []
            if plots:
                gr.Gallery(plots, label="Evaluation plots", columns=3, elem_id="model-plots")
        gr.Markdown(limits_note(service), elem_id="limits")
    return blocks
