"""``chatnt evaluate`` and ``chatnt calibrate``, mounted by ``chatnt_core.cli``.

Both validate what is cheap to validate (data folder, task names, option values) before
loading the model, so a typo fails in a second with one ``error:`` line rather than after
the checkpoint is built. torch, datasets and matplotlib are imported inside the commands
so ``chatnt --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from chatnt_core.cli.ask import PrecisionOption
from chatnt_core.inference.precision import set_precision


def _task_list(tasks: str | None) -> list[str] | None:
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    return names or None


def _check_data(
    data: Path, split: str, tasks: list[str] | None, card_files: list[Path] | None = None
) -> dict[str, Any]:
    """Fail fast on a missing split or an unknown task; returns the task cards (the known
    ones plus those of ``card_files``, which replace a known card of the same name)."""
    from chatnt_core.data.tasks import load_card_file, load_task_cards
    from chatnt_core.evaluation.data import open_split, unknown_task_error

    cards = load_task_cards()
    for path in card_files or []:
        card = load_card_file(path, require_matching_name=False)
        cards[card.name] = card
    for name in tasks or []:
        if name not in cards:
            raise unknown_task_error(name, cards)
    open_split(data, split)
    return cards


def _load(
    checkpoint: str, device: str | None = None, precision: str | None = None
) -> tuple[Path, Any]:
    """The checkpoint directory and its model, on ``device`` (default: CUDA if present)."""
    import torch

    from chatnt_core.errors import ChatNTError
    from chatnt_core.training.checkpoint import load_model_from_checkpoint, resolve_checkpoint

    directory = resolve_checkpoint(checkpoint)
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch_device = torch.device(target)
    except RuntimeError:
        raise ChatNTError(
            f"--device '{target}' is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    model = load_model_from_checkpoint(directory).to(torch_device)
    return directory, model if precision is None else set_precision(model, precision)


def evaluate_command(
    checkpoint: Annotated[
        str, typer.Argument(help="a checkpoint directory, or a training output directory")
    ],
    data: Annotated[Path, typer.Option(help="dataset folder with test/ (and train/)")],
    max_per_task: Annotated[
        int, typer.Option(min=1, help="test examples sampled per task (paper: 5000)")
    ] = 5000,
    batch_size: Annotated[int, typer.Option(min=1, help="questions per generation batch")] = 32,
    out: Annotated[
        Path | None, typer.Option(help="report folder (default: CHECKPOINT/evaluation)")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="longest answer in tokens")] = 40,
    tasks: Annotated[
        str | None, typer.Option(help="comma-separated task names (default: all in the data)")
    ] = None,
    task: Annotated[
        list[Path] | None,
        typer.Option(
            "--task",
            help="a task card YAML file (repeatable): its task is scored with this card, "
            "whether or not a plugin or the registry knows it",
        ),
    ] = None,
    calibrate_on: Annotated[
        str | None,
        typer.Option(help="'train': fit missing calibrators on the data's train split first"),
    ] = None,
    calibration_size: Annotated[
        int | None,
        typer.Option(min=1, help="train examples per task for --calibrate-on (default: max)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the per-task sample")] = 0,
    device: Annotated[
        str | None, typer.Option(help="torch device (default: cuda if available, else cpu)")
    ] = None,
    precision: PrecisionOption = None,
) -> None:
    """Score a checkpoint on a dataset's test split with each task's paper metric."""
    from chatnt_core.errors import ChatNTError

    if calibrate_on not in (None, "train"):
        raise ChatNTError(f"--calibrate-on takes 'train', not '{calibrate_on}'")
    names = _task_list(tasks)
    cards = _check_data(data, "test", names, task)
    if calibrate_on == "train":
        _check_data(data, "train", None)

    from chatnt_core.evaluation.calibrate import load_calibration
    from chatnt_core.evaluation.evaluate import evaluate_model
    from chatnt_core.evaluation.shard import launch_shard

    # Under torchrun / accelerate launch every process answers its share of the batches
    # (evaluation/shard.py); the main process writes the report.
    shard, state = launch_shard()
    main = state is None or state.is_main_process
    if state is not None and device is None:
        device = str(state.device)
    directory, model = _load(checkpoint, device, precision)
    out_dir = out if out is not None else directory / "evaluation"
    report = evaluate_model(
        model,
        data,
        out_dir if main else None,
        tasks=names,
        max_per_task=max_per_task,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        calibrations=load_calibration(directory),
        calibrate_on=calibrate_on,
        calibration_size=calibration_size,
        cards=cards,
        progress=main,
        model_name=str(directory),
        shard=shard,
    )
    if state is not None:
        state.wait_for_everyone()
    if not main:
        return
    typer.echo((out_dir / "metrics.md").read_text(encoding="utf-8"), nl=False)
    typer.echo(f"report: {out_dir} ({len(report.tasks)} tasks)")


def calibrate_command(
    checkpoint: Annotated[
        str, typer.Argument(help="a checkpoint directory, or a training output directory")
    ],
    data: Annotated[Path, typer.Option(help="dataset folder with train/")],
    max_per_task: Annotated[
        int, typer.Option(min=1, help="training examples per task (paper: 10000)")
    ] = 10_000,
    split: Annotated[
        str,
        typer.Option(help="split to fit on: train (paper) or one of unseen sequences"),
    ] = "train",
    formulation: Annotated[
        str,
        typer.Option(
            help="how answer-phrasing scores become P(yes): paper (perplexities, Methods "
            "§3) or candidate_softmax (likelihood mass on the positive phrasings)"
        ),
    ] = "paper",
    batch_size: Annotated[int, typer.Option(min=1, help="questions per scoring batch")] = 32,
    tasks: Annotated[
        str | None, typer.Option(help="comma-separated binary tasks (default: all binary)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the per-task sample")] = 0,
    device: Annotated[
        str | None, typer.Option(help="torch device (default: cuda if available, else cpu)")
    ] = None,
) -> None:
    """Fit a Platt calibrator per binary task; store them in CHECKPOINT/calibration.json."""
    from chatnt_core.calibration import FORMULATIONS
    from chatnt_core.errors import ChatNTError

    if formulation not in FORMULATIONS:
        raise ChatNTError(f"--formulation {formulation}: use one of {', '.join(FORMULATIONS)}")
    names = _task_list(tasks)
    cards = _check_data(data, split, names)

    from chatnt_core.evaluation.calibrate import fit_calibrators, save_calibration

    directory, model = _load(checkpoint, device)
    fitted, skipped = fit_calibrators(
        model,
        data,
        cards,
        tasks=names,
        max_per_task=max_per_task,
        batch_size=batch_size,
        seed=seed,
        progress=True,
        split=split,
        formulation=formulation,
    )
    for name, why in skipped.items():
        typer.echo(f"skipped {name}: {why}", err=True)
    if not fitted:
        raise ChatNTError(f"no binary task in {data}/train could be calibrated")
    path = save_calibration(directory, fitted, data)
    for name, entry in fitted.items():
        c = entry.calibrator
        typer.echo(
            f"{name}: {entry.n_examples} examples ({entry.n_positive} positive), "
            f"{entry.formulation} P(yes), coef {c.coef:.3f}, intercept {c.intercept:.3f}"
        )
    typer.echo(f"calibrators: {path}")
