"""``chatnt data``: build instruction datasets from user files, or write the built-in demo.

Errors are ``ChatNTError`` subclasses, so the main CLI prints them as one line and exits 1.
The builder (and with it ``datasets``) is imported inside the commands, so other ``chatnt``
commands do not pay for it at start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

data_app = typer.Typer(
    help="Build instruction datasets from task cards and labelled sequences.",
    no_args_is_help=True,
)


@contextmanager
def _progress_bars() -> Iterator[Callable[[str, Path], Callable[[int], None]] | None]:
    """One bar per split, measured in bytes read (rows for Parquet); none when piped."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:

        def start(split: str, path: Path) -> Callable[[int], None]:
            total: float | None = None
            if path.suffix.lower() in {".parquet", ".pq"}:
                import pyarrow.parquet as pq

                total = pq.ParquetFile(path).metadata.num_rows
            elif path.is_file():
                total = path.stat().st_size
            task = progress.add_task(f"{split}: {path.name}", total=total)
            return lambda done: progress.update(task, completed=done)

        yield start


@data_app.command("build")
def build(
    task: Annotated[
        str, typer.Option(help="task card name (registry/tasks/NAME.yaml) or a card YAML path")
    ],
    train: Annotated[Path, typer.Option(help="train split: CSV, TSV, Parquet or FASTA")],
    test: Annotated[Path, typer.Option(help="test split: CSV, TSV, Parquet or FASTA")],
    out: Annotated[Path, typer.Option(help="output folder (train/, test/, manifest.json)")],
    sequence_column: Annotated[
        str, typer.Option(help="sequence column (comma-separated for multi-sequence cards)")
    ] = "sequence",
    label_column: Annotated[
        str, typer.Option(help="label column; holds the number for regression tasks")
    ] = "label",
    id_column: Annotated[
        str, typer.Option(help="record-id column of the label table (with --labels/--fasta)")
    ] = "id",
    labels: Annotated[
        Path | None, typer.Option(help="label table keyed by record id, for FASTA --train/--test")
    ] = None,
    fasta: Annotated[
        Path | None,
        typer.Option(help="FASTA with the sequences; --train/--test are then id+label tables"),
    ] = None,
    multi_turn: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="fraction of train rows given a second turn")
    ] = 0.0,
    multi_sequence: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="fraction of train rows paired into two-sequence turns"
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="seed for question, answer and pairing draws")] = 0,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="skip bad rows into the reject file, not fail")
    ] = False,
    reject_file: Annotated[
        Path | None, typer.Option(help="TSV for skipped rows (default OUT/rejects.tsv)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a dataset already in --out")
    ] = False,
) -> None:
    """Turn labelled sequences and a task card into an instruction dataset.

    Splits stay as given; questions come from the card's train or test pool.

    Multi-turn and multi-sequence examples are added to the train split only.
    """
    from chatnt_core.data.builder import BuildOptions, build_dataset, is_fasta
    from chatnt_core.data.tasks import get_task_card

    card = get_task_card(task)
    options = BuildOptions(
        sequence_column=sequence_column,
        label_column=label_column,
        id_column=id_column,
        labels=labels,
        fasta=fasta,
        multi_turn=multi_turn,
        multi_sequence=multi_sequence,
        seed=seed,
        skip_bad=skip_bad,
        reject_file=reject_file,
        overwrite=overwrite,
    )
    if labels is not None and not (is_fasta(train) and is_fasta(test)):
        typer.echo("note: --labels is only read for FASTA --train/--test files", err=True)
    started = time.perf_counter()
    with _progress_bars() as bars:
        report = build_dataset(card, train, test, out, options, progress=bars)
    elapsed = time.perf_counter() - started
    for split, item in report.splits.items():
        extra = f", {item.rejected} rejected" if item.rejected else ""
        typer.echo(
            f"{split}: {item.records} records from {item.rows_used} rows "
            f"({item.multi_turn} multi-turn, {item.multi_sequence} multi-sequence{extra})"
        )
    if report.reject_file:
        typer.echo(f"rejected rows: {report.reject_file}")
    typer.echo(f"wrote {out} for task '{card.name}' in {elapsed:.1f}s")


@data_app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="output folder (train/, test/, manifest.json)")],
    train_size: Annotated[int, typer.Option(min=1, help="train examples per demo task")] = 1000,
    test_size: Annotated[int, typer.Option(min=1, help="test examples per demo task")] = 200,
    seed: Annotated[int, typer.Option(help="same seed, same dataset")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a dataset already in --out")
    ] = False,
) -> None:
    """Write the built-in demo tasks (synthetic sequences with JASPAR binding sites)."""
    from chatnt_core.data.demo import write_demo

    started = time.perf_counter()
    manifest = write_demo(out, train_size, test_size, seed, overwrite=overwrite)
    splits = manifest["splits"]
    typer.echo(
        f"wrote {out}: {splits['train']['records']} train and {splits['test']['records']} test "
        f"records over {len(manifest['tasks'])} tasks in {time.perf_counter() - started:.1f}s"
    )
    typer.echo(f"motifs: {manifest['motifs']['attribution']}", err=True)
