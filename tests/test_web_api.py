"""The JSON API on a real server (uvicorn on a loopback port) over a tiny trained
checkpoint: the same answers as ``ChatNT.ask`` and ``chatnt batch``, a 4xx with a one-line
message for each bad input, and no request lost among 50 at once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from web_helpers import run_cli, server_thread

from chatnt_core.api import ChatNT
from chatnt_core.batch import read_tsv_rows
from chatnt_core.cli import main
from chatnt_core.web.limits import Limits
from chatnt_core.web.server import create_app
from chatnt_core.web.service import WebService

TOKENS = 16
LIMITS = Limits(
    max_sequence_length=300,
    max_upload_bytes=20_000,
    max_batch_records=5,
    max_tags=2,
    max_new_tokens=TOKENS,
)
CTCF = "Is there a CTCF binding site in @p.fna?"
SEQS = ["ACGTTGCAAC" * 4, "GGGCCCTTTA" * 6, "CCGCGCATAT" * 3, "TTAGGCAATG" * 5, "ACGGT" * 9]

# tiny models run faster on one thread, and the answers compared come from one thread too
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def service(trained_bot: ChatNT) -> WebService:
    return WebService(trained_bot, LIMITS)


@pytest.fixture(scope="module")
def base(service: WebService) -> Iterator[str]:
    with server_thread(create_app(service)) as url:
        yield url


def post(base: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=120, **kwargs)


def test_ask_answers_as_chatnt_ask(base: str, trained_bot: ChatNT) -> None:
    cases = [
        (CTCF, {"p.fna": SEQS[0]}),  # a calibrated yes/no task
        ("What is the GC content of @p.fna?", {"p.fna": SEQS[1]}),  # a number
        ("Compare @a.fna with @k.faa.", {"a.fna": SEQS[2], "k.faa": "MKVLAAGIVW"}),  # no task
    ]
    for question, sequences in cases:
        response = post(base, "/api/ask", {"question": question, "sequences": sequences})
        assert response.status_code == 200, response.text
        expected = trained_bot.ask(question, sequences, max_new_tokens=TOKENS).to_dict()
        assert response.json() == expected
    first = post(base, "/api/ask", {"question": CTCF, "sequences": {"p.fna": SEQS[0]}}).json()
    assert first["task"] == "demo-ctcf-site" and first["calibrated"] is True
    assert 0.0 < first["probability"] < 1.0
    shorter = {"question": CTCF, "sequences": {"p.fna": SEQS[0]}, "max_new_tokens": 3}
    assert post(base, "/api/ask", shorter).json() == (
        trained_bot.ask(CTCF, {"p.fna": SEQS[0]}, max_new_tokens=3).to_dict()
    )


def test_chat_continues_a_conversation_as_chatnt_chat_does(base: str, trained_bot: ChatNT) -> None:
    sequences = {"p.fna": SEQS[0], "q.fna": SEQS[1]}
    first, second = CTCF, "And what is the GC content of @q.fna and @p.fna?"
    conversation = trained_bot.chat(max_new_tokens=TOKENS)
    expected = [conversation.ask(first, {"p.fna": SEQS[0]}), conversation.ask(second, sequences)]
    one = post(base, "/api/chat", {"question": first, "sequences": {"p.fna": SEQS[0]}}).json()
    body = {"history": one["history"], "question": second, "sequences": sequences}
    two = post(base, "/api/chat", body).json()
    for got, want in zip((one, two), expected):
        assert {k: v for k, v in got.items() if k != "history"} == want.to_dict()
    assert two["history"] == [
        {"user": first, "assistant": expected[0].text},
        {"user": second, "assistant": expected[1].text},
    ]
    forgot = post(base, "/api/chat", {**body, "sequences": {"q.fna": SEQS[1]}})
    assert forgot.status_code == 400
    assert "@p.fna of an earlier turn has no sequence" in forgot.json()["error"]
    extra = post(base, "/api/chat", {**body, "sequences": {**sequences, "z.fna": "AC"}})
    assert "sequence 'z.fna' is not referenced" in extra.json()["error"]


def test_batch_rows_are_those_of_chatnt_batch(
    base: str, trained_checkpoint: Path, tmp_path: Path
) -> None:
    fasta = "".join(f">r{i} record {i}\n{s}\n" for i, s in enumerate(SEQS[:4]))
    path = tmp_path / "records.fna"
    path.write_text(fasta)
    out = tmp_path / "cli.tsv"
    question = "Is there a CTCF binding site in @seq?"
    argv = ["batch", str(trained_checkpoint), "--fasta", str(path), "--question", question]
    run_cli([*argv, "--out", str(out), "--max-new-tokens", str(TOKENS), "--no-progress"])
    response = post(base, "/api/batch", {"question": question, "fasta": fasta})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rows"] == read_tsv_rows(out) and [r["id"] for r in body["rows"]] == [
        "r0",
        "r1",
        "r2",
        "r3",
    ]
    assert body["columns"][:3] == ["id", "answer", "task"]
    as_tsv = post(base, "/api/batch", {"question": question, "fasta": fasta, "format": "tsv"})
    assert as_tsv.status_code == 200 and as_tsv.text == out.read_text()
    assert as_tsv.headers["content-type"].startswith("text/tab-separated-values")


BAD_INPUT = [
    ("/api/ask", {"question": "Is @q.fna bound?", "sequences": {"p.fna": "ACGT"}}, 400,
     "@q.fna has no sequence"),
    ("/api/ask", {"question": CTCF, "sequences": {"p.fna": "ACGTXACGT"}}, 400, "'X' at 5"),
    ("/api/ask", {"question": CTCF, "sequences": {"p.fna": "A" * 301}}, 413,
     "@p.fna is 301 letters long; this server takes sequences of up to 300 letters"),
    ("/api/ask", {"question": "@a @b @c?", "sequences": {"a": "AC", "b": "AC", "c": "AC"}}, 400,
     "names 3 sequences; this server takes up to 2 @tags per question"),
    ("/api/ask", {"question": "Is @../../etc/passwd bound?"}, 400, "is not a tag"),
    ("/api/ask", {"question": "   "}, 400, "the question is empty"),
    ("/api/ask", {"question": CTCF, "sequences": {"p.fna": "AC"}, "max_new_tokens": 500}, 400,
     "max_new_tokens is 500; this server allows 1 to 16"),
    ("/api/ask", {"question": "Hi @r.xyz", "sequences": {"r.xyz": "AC"}}, 400,
     "'.xyz' is not a known suffix"),
    ("/api/ask", {"question": "Hi @r", "sequences": {"r": "AC"}, "modality": "xna"}, 400,
     "modality 'xna' is not one of auto, dna, rna, protein"),
    ("/api/ask", {"sequences": {}}, 422, "question: Field required"),
    ("/api/ask", {"question": CTCF, "path": "/etc/passwd"}, 422, "path: Extra inputs"),
    ("/api/batch", {"question": "Is it bound?", "fasta": ">a\nAC\n"}, 400, "must contain @seq"),
    ("/api/batch", {"question": "Is @seq bound?", "fasta": "ACGT\n"}, 400,
     "line 1: sequence before any '>' header"),
    ("/api/batch", {"question": "Is @seq bound?", "fasta": ">a\nAC\n" * 1 + "".join(
        f">b{i}\nAC\n" for i in range(5))}, 413, "holds 6 records; this server answers up to 5"),
    ("/api/batch", {"question": "Is @seq bound?", "fasta": ">a\n" + "A" * 30_000}, 413,
     "the request's fasta is 30.0 kB; this server takes uploads of up to 20.0 kB: split"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_INPUT)
def test_bad_input_gets_a_4xx_with_a_one_line_message(
    base: str, path: str, body: Any, status: int, message: str
) -> None:
    response = post(base, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in error


def test_a_request_body_over_the_upload_limit_is_refused_before_it_is_read(base: str) -> None:
    response = post(base, "/api/batch", {"question": "@seq", "fasta": "A" * 1_100_000})
    assert response.status_code == 413
    assert "the request body is 1.1 MB; this server takes up to 1.0 MB" in response.json()["error"]


def test_fifty_concurrent_requests_are_all_answered(
    base: str, trained_bot: ChatNT, service: WebService
) -> None:
    expected = [trained_bot.ask(CTCF, {"p.fna": s}, max_new_tokens=TOKENS).to_dict() for s in SEQS]

    def one(i: int) -> tuple[int, int, Any]:
        body = {"question": CTCF, "sequences": {"p.fna": SEQS[i % len(SEQS)]}}
        response = post(base, "/api/ask", body)
        return i, response.status_code, response.json()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    seconds = time.perf_counter() - started
    assert [status for _, status, _ in results] == [200] * 50
    for i, _, answer in results:  # each answer belongs to its own request's sequence
        assert answer == expected[i % len(SEQS)]
    assert service.gate.waiting == 0
    print(f"50 concurrent /api/ask requests: all answered in {seconds:.1f} s")


def test_a_busy_server_refuses_with_503_and_keeps_serving(trained_bot: ChatNT) -> None:
    busy = WebService(trained_bot, Limits(max_queue=1, timeout=1.0, max_new_tokens=TOKENS))
    body = {"question": CTCF, "sequences": {"p.fna": SEQS[0]}}
    with server_thread(create_app(busy)) as url:
        with busy.gate.hold():  # the model is taken (as by a long batch)
            waiting: list[httpx.Response] = []
            first = threading.Thread(target=lambda: waiting.append(post(url, "/api/ask", body)))
            first.start()
            while busy.gate.waiting < 1:
                time.sleep(0.01)
            refused = post(url, "/api/ask", body)
            first.join()
        assert refused.status_code == 503 and "the server is busy" in refused.json()["error"]
        assert waiting[0].status_code == 503
        assert "waited 1 s for the model" in waiting[0].json()["error"]
        assert post(url, "/api/ask", body).status_code == 200


def test_a_batch_past_the_timeout_stops_with_504(
    trained_bot: ChatNT, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chatnt_core.web.service as service_module

    monkeypatch.setattr(service_module, "BATCH_SIZE", 1)
    slow = WebService(trained_bot, Limits(timeout=0.001, max_new_tokens=TOKENS))
    fasta = ">a\nACGT\n>b\nGGCC\n>c\nTTAA\n"
    with server_thread(create_app(slow)) as url:
        response = post(url, "/api/batch", {"question": "Is @seq bound?", "fasta": fasta})
    assert response.status_code == 504
    assert (
        "longer than this server's timeout of 0.001 s (1 of 3 records answered)"
        in (response.json()["error"])
    )


def test_model_endpoint_and_password(base: str, service: WebService) -> None:
    info = httpx.get(f"{base}/api/model").json()
    assert info["trained_checkpoint"] and info["calibrated_tasks"] == ["demo-ctcf-site"]
    assert info["plugins"]["char-encoder"] == "0.1.0"
    assert "| demo-ctcf-site | mcc |" in info["evaluation"]["markdown"]
    assert any(p.endswith("demo-ctcf-site-reliability.png") for p in info["evaluation"]["plots"])
    assert info["training"]["step"] == 1 and info["training"]["samples_seen"] == 4
    assert httpx.get(f"{base}/api/limits").json()["max_tags"] == 2
    body = {"question": CTCF, "sequences": {"p.fna": SEQS[0]}}
    with server_thread(create_app(service, auth=("bio", "s3cret"))) as url:
        assert httpx.get(f"{url}/api/health").status_code == 200
        denied = post(url, "/api/ask", body, auth=("bio", "wrong"))
        assert denied.status_code == 401 and "curl -u NAME:PASSWORD" in denied.json()["error"]
        assert post(url, "/api/ask", body).status_code == 401
        assert post(url, "/api/ask", body, auth=("bio", "s3cret")).status_code == 200
        # the page: its config (and so every event) only after the login form
        assert httpx.get(f"{url}/config").status_code == 401
        with httpx.Client(base_url=url) as browser:
            login = browser.post("/login", data={"username": "bio", "password": "s3cret"})
            assert login.status_code == 200 and browser.get("/config").status_code == 200


def test_serve_without_gradio_says_how_to_install_it(
    trained_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(trained_checkpoint)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err == 'error: the web app needs gradio: pip install "chatnt[web]"\n'


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--port", "TAKEN"], "cannot listen on 127.0.0.1:TAKEN (Address already in use)"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be positive, not 0"),
        (["--username", "lab"], "--username needs a password: set it in the CHATNT_PASSWORD"),
    ],
)
def test_serve_refuses_bad_settings_in_one_line_before_loading(
    options: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    monkeypatch.delenv("CHATNT_PASSWORD", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "no-such-checkpoint", *[o.replace("TAKEN", port) for o in options]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert message.replace("TAKEN", port) in err


def test_chatnt_imports_and_help_need_no_gradio() -> None:
    code = (
        "import sys\n"
        "sys.modules['gradio'] = None  # importing it now raises ImportError\n"
        "import chatnt_core, chatnt_core.cli\n"
        "from chatnt_core.cli import main\n"
        "try:\n"
        "    main(['serve', '--help'])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--max-sequence-length" in result.stdout and "127.0.0.1" in result.stdout


def docs_curl_calls() -> list[list[str]]:
    """Every ``curl`` command of docs/web.md, split as a shell would."""
    import re
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "web.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [shlex.split(line) for b in blocks for line in b.splitlines() if line.startswith("curl")]


def test_every_route_has_a_curl_example_in_the_docs_and_each_runs(base: str) -> None:
    calls = docs_curl_calls()
    paths = {next(a for a in call if a.startswith("http://127.0.0.1:7860/")) for call in calls}
    routes = {"ask", "chat", "batch", "model", "limits", "health"}
    assert {p.removeprefix("http://127.0.0.1:7860/api/") for p in paths} == routes
    for call in calls:
        url = next(a for a in call if a.startswith("http://127.0.0.1:7860/"))
        url = url.replace("http://127.0.0.1:7860", base)
        data = call[call.index("-d") + 1] if "-d" in call else None
        if data is None:
            response = httpx.get(url, timeout=60)
        else:
            headers = {"content-type": "application/json"}
            response = httpx.post(url, content=data, headers=headers, timeout=60)
        assert response.status_code == 200, (call, response.text)
