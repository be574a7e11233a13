"""``chatnt serve``: the web page and the JSON API on one port.

Imported by ``chatnt_core.cli`` on every ``chatnt`` run, so it imports neither gradio nor
torch at module level: ``chatnt --help`` works without the ``web`` extra, and
``chatnt serve`` without it is a one-line error saying what to install.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from chatnt_core.cli.ask import PrecisionOption
from chatnt_core.errors import ChatNTError

PASSWORD_VARIABLE = "CHATNT_PASSWORD"


def _auth(username: str | None) -> tuple[str, str] | None:
    """(username, password) with the password from the environment, never the command
    line (where every user of the machine could read it in the process list)."""
    if username is None:
        return None
    password = os.environ.get(PASSWORD_VARIABLE, "")
    if not password:
        raise ChatNTError(
            f"--username needs a password: set it in the {PASSWORD_VARIABLE} environment variable"
        )
    return username, password


def serve_command(
    checkpoint: Annotated[
        str, typer.Argument(help="a checkpoint directory (or a config/preset, untrained)")
    ],
    host: Annotated[
        str, typer.Option(help="address to listen on; 0.0.0.0 makes the page public")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 7860,
    username: Annotated[
        str | None,
        typer.Option(help=f"ask for this username and the password in ${PASSWORD_VARIABLE}"),
    ] = None,
    max_sequence_length: Annotated[int, typer.Option(help="letters per sequence")] = 12_000,
    max_upload_mb: Annotated[float, typer.Option(help="size of one upload or request")] = 10.0,
    max_batch_records: Annotated[int, typer.Option(help="records per batch")] = 1000,
    max_tags: Annotated[int, typer.Option(help="distinct @tags per question")] = 8,
    max_queue: Annotated[int, typer.Option(help="requests waiting for the model")] = 64,
    timeout: Annotated[
        float, typer.Option(help="seconds a request may wait, and a batch may run")
    ] = 300.0,
    max_new_tokens: Annotated[int, typer.Option(help="longest answer in tokens")] = 128,
    precision: PrecisionOption = None,
) -> None:
    """Serve the chat, batch and model pages and the JSON API (one model, one request at
    a time). Binds to 127.0.0.1 unless --host says otherwise."""
    from chatnt_core.web.limits import Limits
    from chatnt_core.web.server import check_port, require_gradio

    require_gradio()  # before the model loads: a missing extra is the cheapest error
    limits = Limits(
        max_sequence_length=max_sequence_length,
        max_upload_bytes=int(max_upload_mb * 1_000_000),
        max_batch_records=max_batch_records,
        max_tags=max_tags,
        max_queue=max_queue,
        timeout=timeout,
        max_new_tokens=max_new_tokens,
    )
    auth = _auth(username)
    check_port(host, port)

    from chatnt_core.api import ChatNT
    from chatnt_core.web.server import serve
    from chatnt_core.web.service import WebService

    bot = ChatNT.load(checkpoint, precision=precision)
    serve(WebService(bot, limits), host, port, auth)
