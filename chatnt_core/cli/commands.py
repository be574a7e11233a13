"""The ``chatnt`` command line.

User mistakes (``ChatNTError``) print one ``error: ...`` line on stderr and exit 1, with no
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from chatnt_core.cli.ask import ask_command, batch_command, chat_command
from chatnt_core.cli.convert import convert_app
from chatnt_core.cli.models import models_app
from chatnt_core.config import load_config, resolve_config
from chatnt_core.data.cli import data_app
from chatnt_core.errors import ChatNTError, ConfigError
from chatnt_core.evaluation.cli import calibrate_command, evaluate_command
from chatnt_core.plugins import ComponentKind, get_registry
from chatnt_core.presets import preset_names
from chatnt_core.training.cli import train_command
from chatnt_core.web.cli import serve_command

app = typer.Typer(
    help="ChatNT: ask English questions about DNA, RNA and protein sequences.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Validate, show and list model configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(convert_app, name="convert")
app.command("train")(train_command)
app.command("ask")(ask_command)
app.command("chat")(chat_command)
app.command("batch")(batch_command)
app.command("evaluate")(evaluate_command)
app.command("calibrate")(calibrate_command)
app.command("serve")(serve_command)


def _console() -> Console:
    """A console that does not wrap tables when the output is piped or captured."""
    return Console(width=None if sys.stdout.isatty() else 160)


def _schema(model: type[Any]) -> dict[str, Any]:
    """A params model's JSON schema; {} for one that has none (e.g. bare ``BaseModel``)."""
    try:
        schema: dict[str, Any] = model.model_json_schema()
    except Exception:  # a plugin's odd model must not break the listing
        return {}
    return schema


def _plugin_listing() -> dict[str, Any]:
    from chatnt_core.data.tasks import task_cards_with_origins

    registry = get_registry()
    components = [
        {
            "kind": kind.value,
            "name": entry.name,
            "plugin": entry.plugin,
            "version": entry.version,
            "params_schema": _schema(entry.params_model),
        }
        for kind in ComponentKind
        if kind != ComponentKind.TASK
        for entry in (registry.entries[kind][name] for name in registry.names(kind))
    ]
    broken = [
        {"plugin": b.name, "error": b.error, "traceback": b.traceback} for b in registry.broken
    ]
    try:
        cards, origins = task_cards_with_origins(registry)
    except ChatNTError as exc:  # e.g. a plugin's invalid card: list the rest of the plugins
        cards, origins = {}, {}
        broken.append({"plugin": "task cards", "error": str(exc), "traceback": ""})
    tasks = [
        {
            "name": name,
            "origin": origins[name],
            "modality": card.modality.value,
            "kind": card.kind,
            "metric": card.metric,
        }
        for name, card in cards.items()
    ]
    return {
        "plugins": registry.plugins,
        "components": components,
        "tasks": tasks,
        "broken": broken,
    }


@app.command()
def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List every registered component (kind, name, plugin, version), every task card
    (shipped or registered by a plugin) and broken plugins."""
    listing = _plugin_listing()
    if as_json:
        typer.echo(json.dumps(listing, indent=2))
        return
    table = Table("kind", "name", "plugin", "version", "params")
    for item in listing["components"]:
        fields = ", ".join(item["params_schema"].get("properties", {})) or "-"
        table.add_row(item["kind"], item["name"], item["plugin"], item["version"], fields)
    console = _console()
    console.print(table)
    cards = Table("task card", "modality", "kind", "metric", "from")
    for item in listing["tasks"]:
        cards.add_row(item["name"], item["modality"], item["kind"], item["metric"], item["origin"])
    console.print(cards)
    debug = os.environ.get("CHATNT_DEBUG", "") not in ("", "0")
    for item in listing["broken"]:
        console.print(f"[red]broken plugin[/red] {item['plugin']}: {item['error']}")
        if debug:
            console.print(item["traceback"], markup=False, highlight=False)
    if listing["broken"] and not debug:
        console.print("CHATNT_DEBUG=1 chatnt plugins shows the broken plugins' tracebacks")


@config_app.command("validate")
def config_validate(
    source: Annotated[str, typer.Argument(help="a YAML file or a preset name")],
) -> None:
    """Check a config without loading any weights: structure, names, then each params block.
    Every problem of the file is listed, not only the first."""
    config = load_config(source)
    try:
        resolved = resolve_config(config)
    except ConfigError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    parts = [*resolved.encoders.values(), *resolved.projections.values(), resolved.decoder]
    summary = ", ".join(f"{p.path}={p.config.name}" for p in parts)
    typer.echo(f"ok: {source} ({summary})")


@config_app.command("show")
def config_show(
    source: Annotated[str, typer.Argument(help="a YAML file or a preset name")],
) -> None:
    """Print the fully resolved config (defaults filled in) as YAML that validate accepts."""
    typer.echo(resolve_config(load_config(source)).to_yaml(), nl=False)


@config_app.command("list")
def config_list() -> None:
    """List the shipped presets."""
    for name in preset_names():
        typer.echo(name)


@app.command()
def generate(
    source: Annotated[str, typer.Argument(help="a YAML config or preset name")],
    question: Annotated[str, typer.Argument(help="the question, naming sequences as @tags")],
    seq: Annotated[
        list[str] | None, typer.Option(help="NAME=SEQUENCE or NAME=FILE, once per tag")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    seed: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Assemble a model from a config and answer one question (weights as the config says)."""
    from chatnt_core.cli.ask import parse_seq_options
    from chatnt_core.modality import Modality
    from chatnt_core.model import ChatNTModel

    sequences = parse_seq_options(seq, Modality.DNA)
    started = time.perf_counter()
    model = ChatNTModel.from_config(source).eval()
    built = time.perf_counter()
    answer = model.generate(
        [question], [sequences], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )[0]
    done = time.perf_counter()
    typer.echo(answer)
    typer.echo(f"[assembled in {built - started:.1f}s, answered in {done - built:.2f}s]", err=True)


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="where data, checkpoint and report go")] = Path(
        "runs/quickstart"
    ),
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="train a tiny byte-level decoder from random weights instead of using the "
            "frozen pretrained SmolLM2 (no download)",
        ),
    ] = False,
    steps: Annotated[
        int | None, typer.Option(min=1, help="training updates (default: the config's)")
    ] = None,
    warmup_steps: Annotated[
        int | None,
        typer.Option(
            min=1, help="updates of each warm-up (encoder, label anchors; default: the config's)"
        ),
    ] = None,
    train_size: Annotated[int, typer.Option(min=10, help="demo training examples per task")] = 2000,
    test_size: Annotated[int, typer.Option(min=10, help="demo test examples per task")] = 200,
    eval_per_task: Annotated[int, typer.Option(min=10, help="examples scored per task")] = 200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Demo data -> train -> calibrate -> evaluate -> checks and example chats (offline, CPU).

    By default a frozen pretrained LLM (SmolLM2-135M-Instruct, fetched once into the model
    store) learns to read DNA through a trained English-aware Perceiver.
    """
    from chatnt_core.quickstart import QuickstartSettings, run_quickstart

    settings = QuickstartSettings(
        out, steps, warmup_steps, train_size, test_size, eval_per_task, seed, from_scratch
    )
    if (out / "run").exists():
        raise ChatNTError(f"{out}/run already exists: pass another --out or remove it")
    run_quickstart(settings)


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="chatnt")
    except ChatNTError as exc:
        if os.environ.get("CHATNT_DEBUG", "") not in ("", "0"):
            raise  # the full traceback, for bug reports and plugin authors
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
