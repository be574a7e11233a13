"""The JSON API: the page's functions for programs, one ``curl`` away.

Gradio's own API needs its client (a call is two requests and an event stream); a
pipeline or a notebook wants one POST with JSON in and JSON out. These routes call the
same ``WebService`` functions as the page, behind the same gate and limits, so an answer
here is the answer in the page and the answer of ``ChatNT.ask``.

Errors are JSON ``{"error": "..."}`` with a one-line message naming the problem and the
fix: 400 for a bad question or sequence, 401 without the right password, 413 for input
over a limit, 422 for a malformed request, 503 when the queue is full or the wait too
long, 504 when a batch ran past the timeout. Nothing a client sends is opened as a path.
"""

from __future__ import annotations

import secrets
import shutil
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field

from chatnt_core.errors import ChatNTError
from chatnt_core.web.limits import LimitError
from chatnt_core.web.service import WebService, parse_modality

# Room for JSON quoting around the largest upload a request may carry.
BODY_OVERHEAD = 1_000_000
# Module level: FastAPI resolves the handlers' (string) annotations in this namespace.
BASIC = HTTPBasic(auto_error=False)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskRequest(_Strict):
    question: str = Field(description="the question, naming sequences as @tags")
    sequences: dict[str, str] = Field(default_factory=dict, description="tag -> sequence")
    modality: str | None = Field(None, description="for tags with no suffix: dna, rna, protein")
    task: str | None = Field(None, description="task card name (default: matched)")
    max_new_tokens: int | None = Field(None, description="at most the server's limit")


class ChatTurn(_Strict):
    user: str
    assistant: str


class ChatRequest(_Strict):
    history: list[ChatTurn] = Field(default_factory=list, description="the turns so far")
    question: str = Field(description="the next message, naming sequences as @tags")
    sequences: dict[str, str] = Field(
        default_factory=dict, description="tag -> sequence, for every tag of the conversation"
    )
    modality: str | None = Field(None, description="for tags with no suffix: dna, rna, protein")
    task: str | None = Field(None, description="task card name (default: matched)")


class BatchRequest(_Strict):
    question: str = Field(description="one question; @seq stands for each record")
    fasta: str = Field(description="FASTA text")
    modality: str | None = Field(None, description="of every record (default dna)")
    format: Literal["json", "tsv"] = "json"


def _one_line(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "malformed request (" + "; ".join(problems) + "): see docs/web.md for the fields"


def add_api(app: FastAPI, service: WebService, auth: tuple[str, str] | None = None) -> None:
    """Mount the ``/api/`` routes (and their error handlers) on ``app``."""

    def check_auth(
        credentials: Annotated[HTTPBasicCredentials | None, Depends(BASIC)],
    ) -> None:
        if auth is None:
            return
        ok = credentials is not None and all(
            secrets.compare_digest(given.encode(), wanted.encode())
            for given, wanted in zip((credentials.username, credentials.password), auth)
        )
        if not ok:
            raise LimitError(
                "this server needs a username and password: pass them with "
                "curl -u NAME:PASSWORD (HTTP basic auth)",
                status=401,
            )

    guarded = [Depends(check_auth)]
    limit = service.limits.max_upload_bytes + BODY_OVERHEAD

    @app.exception_handler(ChatNTError)
    async def user_error(request: Request, exc: ChatNTError) -> JSONResponse:
        status = exc.status if isinstance(exc, LimitError) else 400
        headers = {"WWW-Authenticate": "Basic"} if status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _one_line(exc)}, status_code=422)

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Any) -> Response:
        length = request.headers.get("content-length", "")
        if request.url.path.startswith("/api/") and length.isdigit() and int(length) > limit:
            error = LimitError(
                f"the request body is {int(length) / 1e6:.1f} MB; this server takes up to "
                f"{limit / 1e6:.1f} MB: send fewer or shorter sequences"
            )
            return JSONResponse({"error": str(error)}, status_code=413)
        response: Response = await call_next(request)
        return response

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Up, and which model; no password needed (for load balancers)."""
        return {"status": "ok", "waiting": service.gate.waiting}

    @app.get("/api/limits", dependencies=guarded)
    def limits() -> dict[str, Any]:
        return service.limits.to_dict()

    @app.get("/api/model", dependencies=guarded)
    def model() -> dict[str, Any]:
        return service.info()

    @app.post("/api/ask", dependencies=guarded)
    def ask(body: AskRequest) -> dict[str, Any]:
        """One question about the given sequences: ``ChatNT.ask``'s answer as JSON."""
        sequences = service.bind(body.sequences, parse_modality(body.modality))
        answer = service.ask(
            body.question, sequences, task=body.task, max_new_tokens=body.max_new_tokens
        )
        return answer.to_dict()

    @app.post("/api/chat", dependencies=guarded)
    def chat(body: ChatRequest) -> dict[str, Any]:
        """The next turn of a conversation the client keeps: the answer, and the history
        to send with the turn after."""
        sequences = service.bind(body.sequences, parse_modality(body.modality))
        history = [(turn.user, turn.assistant) for turn in body.history]
        answer = service.continue_chat(history, body.question, sequences, task=body.task)
        turns = [*body.history, ChatTurn(user=body.question, assistant=answer.text)]
        return {**answer.to_dict(), "history": [turn.model_dump() for turn in turns]}

    @app.post("/api/batch", dependencies=guarded, response_model=None)
    def batch(body: BatchRequest) -> dict[str, Any] | PlainTextResponse:
        """One question over every record: ``chatnt batch``'s rows as JSON or TSV."""
        records, modality = service.batch_records_from_text(
            body.fasta, parse_modality(body.modality)
        )
        result = service.batch(records, body.question, modality, workdir=service.workdir)
        text = result.tsv.read_text(encoding="utf-8")
        shutil.rmtree(result.tsv.parent, ignore_errors=True)  # all of it is in the reply
        if body.format == "tsv":
            return PlainTextResponse(text, media_type="text/tab-separated-values")
        return {"columns": result.header, "rows": result.rows}
