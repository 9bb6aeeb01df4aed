"""The HTTP face of `cvgen serve`: an OpenAI-compatible API on FastAPI, each request steered by
its own `control_vectors` or `preset`.

Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (a JSON answer, or with
`"stream": true` Server-Sent Events of OpenAI's chunks ending in `data: [DONE]`), `GET
/v1/models`, `GET /v1/control-vectors` (the pack's axes, classes, safe scales, presets and the
server's default), `GET /health`, and `GET /`, the pack's page with its "try it" panel.

Every refusal is OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`,
its message naming the field: 400 for a bad field or body, 401 for a missing or wrong key, 403
for another site's page, 404 for an unknown path, 413 for a body over the bound, 503 when the
queue is full. `cvgen.serve.guard` checks the key, the origin and the body's size before
anything is parsed. Prompts are built off the event loop; a client that goes away cancels its
job, streamed or not.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cvgen import __version__
from cvgen.common.errors import CvgenError
from cvgen.engine.binding import EngineError
from cvgen.pack.steering import Selection, SteeringError, selection_object
from cvgen.serve.generation import Finished
from cvgen.serve.guard import ASGIApp, BodyTooLarge, Guard, error_response
from cvgen.serve.prompts import PromptFieldError
from cvgen.serve.requests import (
    ChatRequest,
    CommonRequest,
    CompletionRequest,
    RequestFieldError,
    chat_prompt,
    completion_prompt,
    make_job,
)
from cvgen.serve.service import Busy, Service, Ticket


def create_app(
    service: Service,
    *,
    api_key: str | None,
    page: Callable[[], str] | None = None,
    loopback: bool = True,
) -> ASGIApp:
    """The ASGI app of `service` (see the module docstring); `page` renders `GET /`;
    `loopback`: the server listens on a loopback address, so only loopback Host names pass."""
    app = FastAPI(title="cvgen serve", version=__version__, docs_url=None, redoc_url=None)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": service.waiting, "served": service.served}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": service.model_id, "object": "model", "created": 0, "owned_by": "cvgen"}
        return {"object": "list", "data": [model]}

    @app.get("/v1/control-vectors")
    async def control_vectors() -> dict[str, Any]:
        return service.steering.description(service.default)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(http: Request) -> Response:
        request = await _parsed(http, ChatRequest)
        prompt = await run_in_threadpool(chat_prompt, service, request)
        return await _answer(service, http, request, prompt, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(http: Request) -> Response:
        request = await _parsed(http, CompletionRequest)
        prompt = await run_in_threadpool(completion_prompt, service, request)
        return await _answer(service, http, request, prompt, chat=False)

    if page is not None:
        html = page()

        @app.get("/", response_class=HTMLResponse)
        async def index() -> HTMLResponse:
            return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    guard = Guard(
        app, api_key=api_key, max_body_bytes=service.settings.max_body_bytes, loopback=loopback
    )
    return guard


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(CvgenError)
    async def refused(_: Request, exc: CvgenError) -> JSONResponse:
        if isinstance(exc, Busy):
            return error_response(503, str(exc), kind="server_busy")
        if isinstance(exc, SteeringError | RequestFieldError | PromptFieldError):
            return error_response(400, str(exc), param=exc.field)
        if isinstance(exc, EngineError):
            return error_response(500, str(exc), kind="server_error")
        return error_response(400, str(exc))

    @app.exception_handler(ClientGone)
    async def gone(_: Request, exc: ClientGone) -> JSONResponse:
        return error_response(499, "the client went away", kind="client_closed")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"{type(exc).__name__}: {exc}", kind="server_error")

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, "body: larger than the server's --max-body-bytes", param="body")


Parsed = TypeVar("Parsed", bound=CommonRequest)


async def _parsed(http: Request, kind: type[Parsed]) -> Parsed:
    """The body as `kind`, whatever its Content-Type says (curl's -d sends a form type): bad
    JSON and bad fields become `RequestValidationError`s, answered as 400s."""
    body = await http.body()
    try:
        data = json.loads(body)
    except RecursionError:
        raise RequestFieldError("body", "not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of over 4300 digits
        raise RequestFieldError("body", f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestFieldError("body", "must be a JSON object")
    try:  # JSON may spell a lone UTF-16 surrogate ("\ud800"), which no UTF-8 text holds
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestFieldError("body", "holds an unpaired UTF-16 surrogate") from None
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    """The first problem pydantic found, as a 400 naming the field (`body` for bad JSON)."""
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": ("body",), "msg": "invalid"}
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "") or first.get("msg", "")
        return error_response(400, f"body: not valid JSON ({detail})", param="body")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = ".".join(location) or "body"
    value = first.get("input")
    shown = json.dumps(value)[:60] if _jsonable(value) else repr(value)[:60]
    message = f"{field}: {first.get('msg', 'invalid')}"
    if location:
        message += f" (got {shown})"
    return error_response(400, message, param=field)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


async def _answer(
    service: Service, http: Request, request: CommonRequest, prompt: list[int], *, chat: bool
) -> Response:
    limit = request.max_completion_tokens if isinstance(request, ChatRequest) else None
    job, selection = make_job(
        service, request, prompt, limit if limit is not None else request.max_tokens
    )
    ticket = service.submit(job, stream=request.stream)
    shape = _Shape(service.model_id, chat=chat, selection=selection)
    if not request.stream:
        finished = await _unless_gone(http, ticket)
        return JSONResponse(shape.whole(finished))
    include_usage = bool(request.stream_options and request.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        if chat:
            yield shape.event(shape.chunk({"role": "assistant", "content": ""}, None))
        try:
            async for item in ticket.events():
                if isinstance(item, Finished):
                    yield shape.event(shape.last_chunk(item))
                    if include_usage:
                        yield shape.event(shape.usage_chunk(item))
                else:
                    yield shape.event(shape.chunk({"content": item} if chat else item, None))
        except Exception as exc:  # the stream has begun: the error is its last event
            message = str(exc) if isinstance(exc, CvgenError) else f"{type(exc).__name__}: {exc}"
            error = {"message": message, "type": "server_error", "param": None, "code": None}
            yield shape.event({"error": error})
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _unless_gone(http: Request, ticket: Ticket) -> Finished:
    """The job's result; a client that disconnects first cancels the job (a stream's client
    is watched by Starlette; a plain request's, here)."""

    async def gone() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    result = asyncio.ensure_future(ticket.result())
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not result.done():
        ticket.job.cancelled.set()
        result.cancel()
        raise ClientGone()
    return result.result()


class ClientGone(Exception):
    """The client of a plain request went away before its answer."""


class _Shape:
    """OpenAI's answer objects for one request."""

    def __init__(self, model: str, *, chat: bool, selection: Selection):
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.cvgen = {"control_vectors": selection_object(selection)}

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def usage(finished: Finished) -> dict[str, int]:
        total = finished.prompt_tokens + finished.completion_tokens
        return {
            "prompt_tokens": finished.prompt_tokens,
            "completion_tokens": finished.completion_tokens,
            "total_tokens": total,
        }

    @staticmethod
    def reason(finished: Finished) -> str:
        return "length" if finished.finish_reason == "length" else "stop"

    def whole(self, finished: Finished) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": finished.text},
                "finish_reason": self.reason(finished),
            }
            kind = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": finished.text,
                "logprobs": None,
                "finish_reason": self.reason(finished),
            }
            kind = "text_completion"
        answer = self._head(kind)
        answer.update(choices=[choice], usage=self.usage(finished), cvgen=self.cvgen)
        return answer

    def chunk(self, delta: dict[str, Any] | str, reason: str | None) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
            answer = self._head("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}
            answer = self._head("text_completion")
        answer["choices"] = [choice]
        return answer

    def last_chunk(self, finished: Finished) -> dict[str, Any]:
        chunk = self.chunk({} if self.chat else "", self.reason(finished))
        chunk["cvgen"] = self.cvgen
        return chunk

    def usage_chunk(self, finished: Finished) -> dict[str, Any]:
        answer = self._head("chat.completion.chunk" if self.chat else "text_completion")
        answer.update(choices=[], usage=self.usage(finished), cvgen=self.cvgen)
        return answer

    @staticmethod
    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
