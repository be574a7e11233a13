"""``chatnt convert``: other projects' checkpoints as chatnt checkpoints.

Errors are ``ChatNTError`` subclasses, so the main CLI prints them as one line and exits 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from chatnt_core.convert.official import ConvertOptions, convert_official
from chatnt_core.convert.official_rules import Heads

convert_app = typer.Typer(
    help="Convert published checkpoints into chatnt checkpoints.", no_args_is_help=True
)
_DEFAULT = Heads()


@convert_app.command("official-chatnt")
def official_chatnt(
    source: Annotated[
        Path,
        typer.Argument(
            help="the published jax_params/params.joblib, an .npz of the same Haiku names, "
            "or a folder of safetensors files with those names"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="output folder (checkpoint-000000 + latest)")],
    english_tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="the English tokenizer folder; default: english_tokenizer/ beside SOURCE"
        ),
    ] = None,
    bio_tokenizer: Annotated[
        Path | None,
        typer.Option(help="the NT tokenizer folder, checked against ours; default: bio_tokenizer/"),
    ] = None,
    encoder_heads: Annotated[int, typer.Option(min=1, help="NT-v2 attention heads")] = (
        _DEFAULT.encoder
    ),
    projection_heads: Annotated[int, typer.Option(min=1, help="Perceiver attention heads")] = (
        _DEFAULT.projection
    ),
    decoder_heads: Annotated[int, typer.Option(min=1, help="decoder attention heads")] = (
        _DEFAULT.decoder
    ),
    max_context: Annotated[
        int, typer.Option(min=1, help="longest decoder prompt (the official rotary table: 2048)")
    ] = 2048,
) -> None:
    """The published ChatNT (InstaDeepAI/ChatNT, non-commercial licence) as a checkpoint that
    ask, chat, batch, evaluate and ChatNT.from_pretrained load. Sizes come from the arrays;
    head counts default to the published model's."""
    started = time.perf_counter()

    def report(message: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:6.1f}s] {message}", err=True)

    options = ConvertOptions(
        english_tokenizer,
        bio_tokenizer,
        Heads(encoder_heads, projection_heads, decoder_heads),
        max_context,
    )
    path = convert_official(source, out, options, report)
    typer.echo(f"converted {source} into {path}")
    typer.echo(f'ask it: chatnt ask {out} "Is there a TATA box in @seq.fna?" --seq seq.fna=ACGT...')
