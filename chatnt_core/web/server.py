"""One FastAPI application: the JSON API under ``/api/`` and the page at ``/``.

Both front ends live in one process around one ``WebService``, so the model is loaded
once and its gate serialises page and API requests alike. Gradio's queue keeps the
page's requests in line (``max_queue`` waiting, one at a time on the model); the gate
does the same for the API and is the single lock both end up taking.

gradio is an optional dependency (``pip install "chatnt[web]"``): nothing imports this
module until ``chatnt serve`` runs, and ``require_gradio`` turns its absence into one
line saying how to install it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from typing import TYPE_CHECKING

from chatnt_core.errors import ChatNTError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from chatnt_core.web.service import WebService

INSTALL_HINT = 'the web app needs gradio: pip install "chatnt[web]"'


def require_gradio() -> None:
    """Raise the one-line install hint when gradio (or FastAPI/uvicorn) is missing."""
    for module in ("gradio", "fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            raise ChatNTError(INSTALL_HINT)


def create_app(service: WebService, auth: tuple[str, str] | None = None) -> FastAPI:
    """The API routes first, then the page mounted at ``/`` (so ``/api/`` stays ours)."""
    require_gradio()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    import gradio as gr
    from fastapi import FastAPI

    from chatnt_core.web.app import CSS, build_blocks
    from chatnt_core.web.http import add_api

    app = FastAPI(
        title="chatnt",
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    add_api(app, service, auth)
    blocks = build_blocks(service)
    blocks.queue(max_size=service.limits.max_queue, default_concurrency_limit=1)
    return gr.mount_gradio_app(
        app,
        blocks,
        path="",
        auth=auth,
        # a hard stop far above the limit; below it the service's check says what to do
        max_file_size=2 * service.limits.max_upload_bytes + 1_000_000,
        footer_links=[],
        css=CSS,
    )


def check_port(host: str, port: int) -> None:
    """A port another program holds is a one-line error before the page is built."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ChatNTError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): pass another --port "
                "(or --host)"
            ) from None


def serve(service: WebService, host: str, port: int, auth: tuple[str, str] | None) -> None:
    """Run until interrupted; the batch results folder is removed on the way out."""
    require_gradio()
    import uvicorn

    app = create_app(service, auth)
    shown = f"[{host}]" if ":" in host else host
    print(f"chatnt serve: http://{shown}:{port}/ (API: /api/, docs: /api/docs)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        shutil.rmtree(service.workdir, ignore_errors=True)
