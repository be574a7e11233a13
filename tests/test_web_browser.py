"""End to end in headless Chromium: ``chatnt serve`` on a tiny trained checkpoint, driven
through the page as a user would, every assertion on what the page shows.

The server is the real command in its own process on a free loopback port; Chromium is
the system's (``/usr/bin/chromium``, installed by ``.ci/run``), driven by Playwright.
Expected answers are computed here, independently of the server: ``ChatNT.ask`` on the
same checkpoint and ``chatnt batch`` on the same FASTA file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from training_helpers import one_thread
from web_helpers import free_port, run_cli, shown

from chatnt_core.api import ChatNT
from chatnt_core.batch import read_tsv_rows
from chatnt_core.modality import Modality
from chatnt_core.prompt import SequenceInput
from chatnt_core.web.examples import example_sequences

CHROMIUM = Path(os.environ.get("CHATNT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKENS = 16
MAX_LENGTH = 300
QUESTION = "Is there a CTCF binding site in @r1?"
BATCH_QUESTION = "Is there a CTCF binding site in @seq?"
WAIT_MS = 60_000
# what a table shows: each row's cells' text, or the text of each cell
ROWS = "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
CELLS = "cells => cells.map(c => c.textContent)"


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A FASTA of three 200 bp demo sequences (ids r0, r1, r2)."""
    sequences = {f"r{i}": e.sequence for i, e in enumerate(example_sequences())}
    path = tmp_path_factory.mktemp("fasta") / "records.fna"
    path.write_text("".join(f">{k} demo record\n{v}\n" for k, v in sequences.items()))
    return path, sequences


@pytest.fixture(scope="module")
def server(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``chatnt serve`` in its own process; yields the page's URL once it answers."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    argv = [sys.executable, "-c", "from chatnt_core.cli import main; main()", "serve"]
    argv += [str(trained_checkpoint), "--port", str(port)]
    argv += ["--max-sequence-length", str(MAX_LENGTH), "--max-new-tokens", str(TOKENS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"chatnt serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"chatnt serve did not start: {log.read_text()}"
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_page_in_headless_chromium(
    server: str,
    trained_checkpoint: Path,
    records: tuple[Path, dict[str, str]],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (or set CHATNT_CHROMIUM)"
    )
    fasta, sequences = records
    with one_thread():  # the server runs on one thread too: the same arithmetic
        bot = ChatNT.from_pretrained(trained_checkpoint)
        r1 = SequenceInput("r1", sequences["r1"], Modality.DNA)  # the FASTA's records are DNA
        expected = bot.ask(QUESTION, {"r1": r1}, max_new_tokens=TOKENS)
        cli_out = tmp_path / "cli.tsv"
        argv = ["batch", str(trained_checkpoint), "--fasta", str(fasta), "--out", str(cli_out)]
        run_cli([*argv, "--question", BATCH_QUESTION, "--max-new-tokens", str(TOKENS)])
    cli_rows = [line.split("\t") for line in cli_out.read_text().split("\n")[1:-1]]
    assert expected.probability is not None and expected.calibrated

    started = time.perf_counter()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS)
        page.goto(server)

        # Chat: a FASTA upload lists its records as tags, with modality and length.
        page.set_input_files("#fasta-upload input[type=file]", str(fasta))
        page.wait_for_selector("#tag-table >> text=@r2")
        tags = page.eval_on_selector_all("#tag-table tbody tr", ROWS)
        assert tags == [[f"@{k}", "dna", str(len(v)), fasta.name] for k, v in sequences.items()]

        # A typed question about a tag: the answer and its calibrated probability.
        page.fill("#question textarea", QUESTION)
        page.click("#ask")
        page.wait_for_selector("#answer-table")
        probability = f"P(yes) = {expected.probability:.3f} (calibrated)"
        assert page.text_content('[data-field="answer"]') == shown(expected.text)
        assert page.text_content('[data-field="probability"]') == probability
        assert page.text_content('[data-field="task"]') == "demo-ctcf-site"
        assert probability in page.inner_text("#chat") and QUESTION in page.inner_text("#chat")

        # A sequence over the server's limit is refused with the limit's message.
        page.click("text=Paste a sequence")
        page.fill("#paste-name textarea", "long")
        page.fill("#paste textarea", "ACGT" * 76)  # 304 letters
        page.click("#add-paste")
        error = page.wait_for_selector("#seq-status .chatnt-error")
        assert error is not None
        assert (
            "@long is 304 letters long; this server takes sequences of up to 300 letters"
            in error.inner_text()
        )

        # Batch: the table's rows are those of chatnt batch on the same file.
        page.get_by_role("tab", name="Batch").click()
        page.set_input_files("#batch-upload input[type=file]", str(fasta))
        page.wait_for_selector(f"#batch-upload >> text={fasta.name}")
        page.click("#batch-run")
        page.wait_for_selector("#batch-results")
        header = page.eval_on_selector_all("#batch-results th", CELLS)
        rows = page.eval_on_selector_all("#batch-results tbody tr", ROWS)
        assert header == cli_out.read_text().split("\n")[0].split("\t")
        assert rows == [[shown(cell) for cell in row] for row in cli_rows]
        assert len(rows) == 3
        # ... and the table downloads as TSV (the CLI's file, byte for byte) and parquet.
        link = page.wait_for_selector('#batch-downloads a[download="results.parquet"]')
        assert link is not None
        parquet = tmp_path / "page.parquet"
        parquet.write_bytes(httpx.get(str(link.get_attribute("href"))).content)
        assert pq.read_table(parquet).to_pylist() == read_tsv_rows(cli_out)
        tsv_link = page.get_attribute('#batch-downloads a[download="results.tsv"]', "href")
        assert httpx.get(str(tsv_link)).text == cli_out.read_text()

        # Model: what is loaded, with the evaluation's metrics table.
        page.get_by_role("tab", name="Model").click()
        info = page.inner_text("#model-info")
        assert "Calibrated yes/no tasks: demo-ctcf-site" in info
        assert "Evaluation (chatnt evaluate)" in info and "demo-gc-content" in info
        browser.close()
    print(f"browser session: {time.perf_counter() - started:.1f} s")
