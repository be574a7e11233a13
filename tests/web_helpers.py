"""Helpers for the web tests: a tiny trained checkpoint, free ports, a server in a thread.

The checkpoint is what a user would serve: trained (one step on the demo tasks),
calibrated and evaluated by the real commands, so it has calibrators, a metrics table
and plots for the Model tab.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from training_helpers import one_thread, train_demo_one_step

from chatnt_core.cli import main


def run_cli(argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, f"chatnt {' '.join(argv)} exited with {exc.code}"


def make_trained_checkpoint(root: Path) -> Path:
    """Train tiny-random one step on the demo tasks, calibrate and evaluate it (~15 s)."""
    from chatnt_core.data.demo import write_demo

    demo = root / "demo"
    write_demo(demo, train_size=6, test_size=6, seed=0)
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        checkpoint = train_demo_one_step(demo, root / "run")
        run_cli(["calibrate", str(checkpoint), "--data", str(demo)])
        run_cli(["evaluate", str(checkpoint), "--data", str(demo), "--max-new-tokens", "2"])
    return checkpoint


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def shown(text: str) -> str:
    """What a browser shows of ``text``: control characters (other than line breaks and
    tabs) cannot be displayed; the page puts U+FFFD in their place."""
    return "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in text)


@contextmanager
def server_thread(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
