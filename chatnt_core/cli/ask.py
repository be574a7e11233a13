"""``chatnt ask``, ``chatnt chat`` and ``chatnt batch``: the commands for people.

Mounted by ``chatnt_core.cli``; heavy imports (torch, the model, Accelerate) happen inside
the commands so ``chatnt --help`` stays fast.

Where sequences come from is always explicit: ``--seq NAME=VALUE`` reads VALUE as a file
only because the user typed that path, and ``--fasta FILE`` binds the records of FILE. A
tag in a question is only ever looked up among those names, never opened as a path, so a
prompt cannot make the CLI read a file the user did not name.

A tag's modality is its suffix (``@p.fna`` DNA, ``@p.faa`` protein, see
``chatnt_core.modality``), else ``--modality``, else the suffix of the FASTA file it came
from (``kinases.faa``), else DNA; a file-like suffix that names no modality (``@r.xyz``)
is an error rather than a silent DNA.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chatnt_core.errors import ChatNTError
from chatnt_core.inference.precision import Precision
from chatnt_core.modality import Modality, modality_for_name, modality_from_path

if TYPE_CHECKING:
    from chatnt_core.api import Answer, Conversation
    from chatnt_core.prompt import SequenceInput

CHECKPOINT_HELP = "a checkpoint directory (or a config/preset for an untrained assembly)"
SeqOption = Annotated[
    list[str] | None,
    typer.Option("--seq", help="NAME=SEQUENCE or NAME=FILE (one FASTA record), once per tag"),
]
ModalityOption = Annotated[
    Modality | None,
    typer.Option(
        help="modality of tags and records whose name has no known suffix "
        "(default: the FASTA file's suffix, else dna)"
    ),
]
TaskOption = Annotated[
    str | None,
    typer.Option(help="task card name or YAML; default: the card the question matches, if any"),
]
MaxTokensOption = Annotated[int, typer.Option(min=1)]
TemperatureOption = Annotated[float, typer.Option(min=0.0, help="0 = greedy")]
SeedOption = Annotated[int | None, typer.Option(help="seed for temperature sampling")]
PrecisionOption = Annotated[
    Precision | None,
    typer.Option(
        help="decoder weights: bf16 (about 2x faster on CPUs with native bfloat16, several "
        "times slower on others; answers may differ by rounding) or fp32; default: as the "
        "checkpoint's config loads them (float32 unless it sets a dtype)"
    ),
]

CHAT_HELP = """commands:
  /seqs     list the sequences you can tag: @name, modality, length, source
  /history  show the conversation so far
  /reset    start a new conversation (sequences stay loaded)
  /help     this text
  /quit     leave (end of input also leaves)
anything else is a question; name sequences as @tags."""


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows: an inline sequence
        return False


def parse_seq_option(value: str, default: Modality | None) -> SequenceInput:
    """``NAME=SEQUENCE`` or ``NAME=FILE``; the file must hold exactly one FASTA record."""
    from chatnt_core.fasta import read_fasta
    from chatnt_core.prompt import SequenceInput

    name, sep, payload = value.partition("=")
    name = name.strip().lstrip("@")
    if not sep or not name or not payload:
        raise ChatNTError(f"--seq '{value}' is not NAME=SEQUENCE or NAME=FILE")
    path = Path(payload)
    is_file = _is_file(path)
    fallback = (modality_from_path(path) if is_file else None) or Modality.DNA
    modality = modality_for_name(name, default, fallback)
    if is_file:
        records = read_fasta(path, modality)
        if len(records) > 1:
            raise ChatNTError(
                f"{path} holds {len(records)} FASTA records; --seq takes one per name "
                "(use 'chatnt chat --fasta' or 'chatnt batch' for several)"
            )
        payload = records[0].sequence
    elif any(char in payload for char in "/\\."):
        raise ChatNTError(f"--seq {name}=...: file '{payload}' does not exist")
    return SequenceInput(name, payload, modality)


def parse_seq_options(
    values: list[str] | None, default: Modality | None
) -> dict[str, SequenceInput]:
    """Every ``--seq`` by tag name; a name given twice is an error, not a silent override."""
    found: dict[str, SequenceInput] = {}
    for value in values or []:
        item = parse_seq_option(value, default)
        if item.name in found:
            raise ChatNTError(f"--seq {item.name} is given twice; give each @tag one sequence")
        found[item.name] = item
    return found


NO_TASK_LINE = "no task card matched this question{why}: no label or probability; pass --task NAME"


def describe(answer: Answer, explain_no_task: bool = True) -> str | None:
    """The line under an answer: task (and how it was matched), parsed label/value and
    probability; without a task, why none matched (None if ``explain_no_task`` is off)."""
    if answer.task is None:
        if not explain_no_task:
            return None
        return NO_TASK_LINE.format(why=f" ({answer.match_note})" if answer.match_note else "")
    parts = [f"task: {answer.task}"]
    if answer.task_match == "similar" and answer.match_score is not None:
        parts[0] += f" (closest match, score {answer.match_score:.2f})"
    if not answer.parseable:
        parts.append("parsed: (not parseable)")
    elif answer.label is not None:
        parts.append(f"label: {answer.label}")
    if answer.parseable and answer.value is not None:
        parts.append(f"value: {answer.value:g}")
    if answer.probability is not None:
        kind = "calibrated" if answer.calibrated else "uncalibrated"
        parts.append(f"probability: {answer.probability:.3f} ({kind})")
    return ", ".join(parts)


def ask_command(
    checkpoint: Annotated[str, typer.Argument(help=CHECKPOINT_HELP)],
    question: Annotated[str, typer.Argument(help="the question, naming sequences as @tags")],
    seq: SeqOption = None,
    modality: ModalityOption = None,
    task: TaskOption = None,
    max_new_tokens: MaxTokensOption = 128,
    temperature: TemperatureOption = 0.0,
    seed: SeedOption = None,
    precision: PrecisionOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the answer as JSON")] = False,
) -> None:
    """Answer one question; prints the answer and, for a known task, its parsed value.

    The task card is the one the question matches (its question pools, exactly or
    closely), else ``--task``; a line says when no card matched.
    """
    from chatnt_core.api import ChatNT

    sequences = parse_seq_options(seq, modality)
    bot = ChatNT.load(checkpoint, precision=precision)
    answer = bot.ask(
        question,
        sequences,
        task=task,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )
    if as_json:
        typer.echo(json.dumps(answer.to_dict()))
        return
    typer.echo(answer.text)
    details = describe(answer)
    if details:
        typer.echo(details)


# ---- chat ---------------------------------------------------------------------------------


def _chat_sequences(
    fasta: Path | None, seq: list[str], default: Modality | None
) -> tuple[dict[str, SequenceInput], dict[str, str]]:
    """Tag name -> sequence, from the FASTA records (by id) and the --seq options; and
    tag name -> where it came from (the record id, or ``--seq``)."""
    from chatnt_core.fasta import read_fasta, tag_name
    from chatnt_core.prompt import SequenceInput

    found: dict[str, SequenceInput] = {}
    origin: dict[str, str] = {}
    if fasta is not None:
        fallback = modality_from_path(fasta) or Modality.DNA
        for record in read_fasta(fasta, lambda rid: modality_for_name(rid, default, fallback)):
            tag = tag_name(record.id)
            if tag in found:
                raise ChatNTError(
                    f"{fasta}, line {record.line}: record '{record.id}' would be tagged "
                    f"@{tag}, like '{origin[tag]}'; rename one of them"
                )
            modality = modality_for_name(record.id, default, fallback)
            found[tag] = SequenceInput(tag, record.sequence, modality)
            origin[tag] = record.id
    for value in seq:
        item = parse_seq_option(value, default)
        if item.name in found:
            raise ChatNTError(f"--seq {item.name}: @{item.name} is already bound")
        found[item.name] = item
        origin[item.name] = "--seq"
    return found, origin


def _chat_command_line(
    line: str, chat: Conversation, tags: dict[str, SequenceInput], origin: dict[str, str]
) -> bool:
    """Run one /command; False means leave."""
    command = line.split()[0].lower()
    if command in ("/quit", "/exit"):
        return False
    if command == "/help":
        typer.echo(CHAT_HELP)
    elif command == "/seqs":
        if not tags:
            typer.echo("no sequences: start chat with --fasta FILE or --seq NAME=SEQ")
        for name, item in tags.items():
            modality = item.modality.value if item.modality else "?"
            typer.echo(f"@{name}\t{modality}\t{len(item.sequence)}\t{origin[name]}")
    elif command == "/history":
        if not chat.turns:
            typer.echo("(no turns yet)")
        for turn in chat.turns:
            typer.echo(f"user: {turn.user}")
            typer.echo(f"assistant: {turn.assistant}")
    elif command == "/reset":
        chat.reset()
        typer.echo("conversation reset")
    else:
        typer.echo(f"unknown command {command}; /help lists the commands", err=True)
    return True


def chat_command(
    checkpoint: Annotated[str, typer.Argument(help=CHECKPOINT_HELP)],
    fasta: Annotated[
        Path | None, typer.Option(help="FASTA whose records are tags by id (>prom1 is @prom1)")
    ] = None,
    seq: SeqOption = None,
    modality: ModalityOption = None,
    task: TaskOption = None,
    max_new_tokens: MaxTokensOption = 128,
    temperature: TemperatureOption = 0.0,
    seed: SeedOption = None,
    precision: PrecisionOption = None,
) -> None:
    """Multi-turn chat on standard input, one message per line (/help for commands)."""
    from chatnt_core.api import ChatNT
    from chatnt_core.prompt import find_tags

    tags, origin = _chat_sequences(fasta, seq or [], modality)
    bot = ChatNT.load(checkpoint, precision=precision)
    chat = bot.chat(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo(f"{len(tags)} sequence(s) loaded; /help lists the commands")
    while True:
        if interactive:
            typer.echo("you> ", nl=False)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not _chat_command_line(line, chat, tags, origin):
                break
            continue
        bound = {t: tags[t] for t in dict.fromkeys(find_tags(line)) if t in tags}
        try:
            answer = chat.ask(line, bound, task=task)
        except ChatNTError as exc:  # a bad message should not end the conversation
            typer.echo(f"error: {exc}", err=True)
            continue
        typer.echo(answer.text)
        details = describe(answer, explain_no_task=bool(bound))  # a general question needs none
        if details:
            typer.echo(details)


# ---- batch --------------------------------------------------------------------------------


def batch_command(
    checkpoint: Annotated[str, typer.Argument(help=CHECKPOINT_HELP)],
    fasta: Annotated[Path, typer.Option(help="the records to ask about")],
    question: Annotated[str, typer.Option(help="the question; @seq stands for each record")],
    out: Annotated[Path, typer.Option(help="results.tsv or results.parquet (resumable)")],
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    modality: Annotated[
        Modality | None,
        typer.Option(help="modality of every record (default: the FASTA file's suffix, else dna)"),
    ] = None,
    task: TaskOption = None,
    max_new_tokens: MaxTokensOption = 128,
    temperature: TemperatureOption = 0.0,
    seed: SeedOption = None,
    precision: PrecisionOption = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """One row per FASTA record (id, answer, parsed value, probability); rerun to resume.

    Under ``torchrun``/``accelerate launch`` the records are shared between processes and
    rank 0 merges one output file.
    """
    from chatnt_core.api import ChatNT
    from chatnt_core.batch import check_question, output_format, process_state, run_batch
    from chatnt_core.fasta import read_fasta

    output_format(out)
    check_question(question)
    modality = modality or modality_from_path(fasta) or Modality.DNA
    records = read_fasta(fasta, modality)  # every malformation fails before the model loads
    state = process_state()
    bot = ChatNT.load(checkpoint, device=state.device, precision=precision)
    try:
        report = run_batch(
            bot,
            records,
            question,
            out,
            modality=modality,
            batch_size=batch_size,
            task=task,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            progress=progress,
            state=state,
        )
    except KeyboardInterrupt:
        typer.echo(
            "interrupted: the rows written so far are kept; rerun the same command to resume",
            err=True,
        )
        raise typer.Exit(130) from None
    if state.is_main_process:
        status = "complete" if report.complete else "incomplete (rerun to resume)"
        rate = report.answered / report.seconds if report.seconds > 0 else 0.0
        typer.echo(
            f"{report.out}: {report.total} records, {report.skipped} already done, "
            f"{report.answered} answered here in {report.seconds:.1f} s "
            f"({rate:.2f} records/s); {status}"
        )
