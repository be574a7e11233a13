"""``chatnt train CONFIG [--resume DIR]``, mounted by ``chatnt_core.cli``.

The same command runs on one CPU, one GPU, or many processes: launch it with
``accelerate launch --config_file registry/training/accelerate-ddp.yaml -m chatnt_core.cli
train CONFIG`` (or ``torchrun``) and every process runs it; Accelerate reads the process
group from the environment.
"""

from __future__ import annotations

from typing import Annotated

import typer


def train_command(
    config: Annotated[str, typer.Argument(help="a training YAML file or a shipped name")],
    resume: Annotated[
        str | None,
        typer.Option(help="a checkpoint directory, or an output directory (uses its 'latest')"),
    ] = None,
) -> None:
    """Train a model from a training config; --resume continues a run exactly."""
    from chatnt_core.training.config import load_train_config
    from chatnt_core.training.trainer import Trainer

    trainer = Trainer(load_train_config(config), resume=resume)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        loss = "-" if result.loss is None else f"{result.loss:.4f}"
        typer.echo(f"done: step {result.step}, loss {loss}, checkpoint {result.checkpoint}")
