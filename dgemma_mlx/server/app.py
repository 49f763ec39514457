"""The ASGI app: OpenAI's routes over the scheduler, on Starlette.

Starlette (the toolkit FastAPI is built on, maintained by the same people, already installed with
mlx-lm's dependencies) gives routing, streaming responses that notice a client leaving, and
lifespan hooks, and nothing we would have to fight: requests are parsed by `protocol.py`, so every
error is an OpenAI error object with our own message, which FastAPI's automatic validation would
answer in its own shape. uvicorn serves it (cli/serve.py).

Each request becomes one `Job` on the scheduler; its events arrive on an asyncio queue fed from the
model thread. A client that disconnects cancels its job, which frees its rows before the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..generation_config import GenerationConfig
from .protocol import ApiError, Limits, Parsed, finite_json, parse_chat, parse_completion
from .scheduler import Admitted, Committed, Failed, JobSpec, PassFrame, QueueFull, Scheduler, ShuttingDown
from .streaming import FINISH, ChoiceText, ChunkWriter, sse, usage


@dataclass
class ServerState:
    """What every handler reads: the one model, its scheduler and the server's limits."""

    scheduler: Scheduler
    tokenizer: Any
    served_name: str
    config: GenerationConfig
    vocab_size: int
    limits: Limits
    api_key: str | None = None
    max_body_bytes: int = 4 << 20
    created: int = 0


def build_state(
    model: Any,
    tokenizer: Any,
    served_name: str,
    *,
    max_batch: int = 16,
    max_queue: int = 64,
    prefix_entries: int = 16,
    max_prompt_tokens: int = 8192,
    api_key: str | None = None,
    max_body_bytes: int = 4 << 20,
) -> ServerState:
    """Everything the handlers need for one loaded model (the scheduler not started yet)."""
    from ..api import resolve_config
    from .prefix_cache import PrefixCache

    config = resolve_config(model, tokenizer)
    scheduler = Scheduler(
        model, config, max_batch=max_batch, max_queue=max_queue, prefix_cache=PrefixCache(prefix_entries)
    )
    return ServerState(
        scheduler=scheduler,
        tokenizer=tokenizer,
        served_name=served_name,
        config=config,
        vocab_size=model.vocab_size,
        limits=Limits(max_prompt_tokens=max_prompt_tokens, max_n=max_batch),
        api_key=api_key,
        max_body_bytes=max_body_bytes,
    )


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# -- request plumbing -----------------------------------------------------------------------------------
def check_key(request: Request, state: ServerState) -> None:
    """Bearer auth, compared in constant time; nothing to check when the server has no key."""
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="missing_api_key",
        )
    if not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refused past `limit` bytes (by its header or as it arrives)."""
    declared = request.headers.get("content-length")
    too_big = ApiError(
        413, f"The request body is larger than this server accepts ({limit} bytes).", code="request_too_large"
    )
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_big
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means "
            "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
            "payload.)",
        ) from None
    if not finite_json(value):
        raise ApiError(400, "the JSON body holds a number that is not finite")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class Exchange:
    """One request's conversation with the scheduler: its job, queue, and each choice's text."""

    def __init__(self, state: ServerState, parsed: Parsed, kind: str):
        self.state, self.parsed, self.kind = state, parsed, kind
        self.writer = ChunkWriter(kind, state.served_name)
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        spec = JobSpec(parsed.prompts, parsed.seeds, parsed.config, parsed.max_tokens, parsed.stream_passes)
        try:
            self.job = state.scheduler.submit(
                spec, lambda e: loop.call_soon_threadsafe(self.queue.put_nowait, e)
            )
        except QueueFull:
            raise ApiError(
                429,
                "The server is busy: too many requests are waiting. Retry shortly.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            ) from None
        except ShuttingDown:
            raise ApiError(
                503, "The server is shutting down.", type="server_error", code="shutting_down"
            ) from None
        n = len(parsed.prompts)
        self.texts = [ChoiceText(state.tokenizer, parsed.stop, kind == "chat") for _ in range(n)]
        self.results: list[Committed | None] = [None] * n
        self.finishes: list[str | None] = [None] * n
        self.admitted: Admitted | None = None

    async def admitted_or_error(self) -> None:
        """Wait until the prompt is encoded (so an error still gets its own HTTP status)."""
        event = await self.queue.get()
        if isinstance(event, Failed):
            raise _failure(event)
        assert isinstance(event, Admitted)
        self.admitted = event

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """("delta", (choice, reasoning, content, finish)) and ("pass", frame) until every choice ends."""
        while None in self.finishes:
            event = await self.queue.get()
            if isinstance(event, Failed):
                raise _failure(event)
            if isinstance(event, PassFrame):
                if self.finishes[event.choice] is None:
                    yield "pass", event
                continue
            if not isinstance(event, Committed) or self.finishes[event.choice] is not None:
                continue
            text = self.texts[event.choice]
            reasoning, content = text.update(event.tokens, event.final)
            finish = None
            if text.stopped:
                self.job.stop_choice(event.choice)
                finish = FINISH["stop"]
            elif event.final:
                finish = FINISH[event.reason or "eos"]
            if finish is not None:
                self.results[event.choice] = event
                self.finishes[event.choice] = finish
            yield "delta", (event.choice, reasoning, content, finish)

    def usage(self) -> dict[str, Any]:
        prompt = self.admitted.prompt_tokens if self.admitted else 0
        cached = self.admitted.cached_tokens if self.admitted else 0
        return usage(prompt, cached, self.results, self.parsed.seed)


def _failure(event: Failed) -> ApiError:
    kind = "server_error" if event.status >= 500 else "invalid_request_error"
    return ApiError(event.status, event.message, type=kind)


async def _watch_disconnect(request: Request, exchange: Exchange) -> None:
    """Cancel the job when the client goes away (for responses that are not streamed)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            exchange.job.cancel()  # its rows leave before the next pass; nothing more will arrive
            exchange.queue.put_nowait(Failed("the client disconnected", 499))
            return


# -- the routes -----------------------------------------------------------------------------------------
async def _generate(request: Request, kind: str) -> Response:
    state: ServerState = request.app.state.dgemma
    check_key(request, state)
    body = await read_json(request, state.max_body_bytes)
    if kind == "chat":
        parsed = parse_chat(body, state.served_name, state.tokenizer, state.config, state.limits)
    else:
        parsed = parse_completion(
            body, state.served_name, state.tokenizer, state.config, state.limits, state.vocab_size
        )
    exchange = Exchange(state, parsed, kind)
    watcher = asyncio.create_task(_watch_disconnect(request, exchange))
    try:
        await exchange.admitted_or_error()
        if parsed.stream:
            watcher.cancel()
            return StreamingResponse(
                _stream(exchange),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        async for _ in exchange.events():
            pass
        finishes = [f or "stop" for f in exchange.finishes]
        return JSONResponse(exchange.writer.whole(exchange.texts, finishes, exchange.usage()))
    except BaseException:
        exchange.job.cancel()
        raise
    finally:
        watcher.cancel()


async def _stream(exchange: Exchange) -> AsyncIterator[bytes]:
    """SSE: a role chunk per choice, a delta per committed canvas, pass frames if asked, the finish
    reasons, usage, [DONE]. An error after the first byte is an OpenAI error object in the stream."""
    writer, state = exchange.writer, exchange.state
    try:
        for i in range(len(exchange.texts)):
            yield sse(writer.delta(i, role=exchange.kind == "chat"))
        try:
            async for what, value in exchange.events():
                if what == "pass":
                    yield sse(writer.pass_frame(value, state.tokenizer))
                    continue
                choice, reasoning, content, finish = value
                if reasoning or content:
                    yield sse(writer.delta(choice, reasoning, content))
                if finish is not None:
                    yield sse(writer.delta(choice, finish=finish))
        except ApiError as e:
            yield sse(e.body())
            yield sse("[DONE]")
            return
        yield sse(writer.usage_chunk(exchange.usage()))
        yield sse("[DONE]")
    finally:
        exchange.job.cancel()  # a no-op once every choice has finished; frees rows if the client left


async def chat_completions(request: Request) -> Response:
    return await _generate(request, "chat")


async def completions(request: Request) -> Response:
    return await _generate(request, "completion")


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.served_name, "object": "model", "created": state.created, "owned_by": "dgemma-mlx"}


async def list_models(request: Request) -> Response:
    state: ServerState = request.app.state.dgemma
    check_key(request, state)
    return JSONResponse({"object": "list", "data": [_model_card(state)]})


async def get_model(request: Request) -> Response:
    state: ServerState = request.app.state.dgemma
    check_key(request, state)
    name = request.path_params["name"]
    if name != state.served_name:
        raise ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_card(state))


async def health(request: Request) -> Response:
    """Liveness and load, without auth (no request content is shown)."""
    state: ServerState = request.app.state.dgemma
    snapshot = state.scheduler.snapshot()
    status = "draining" if snapshot["draining"] else "ok"
    return JSONResponse(
        {"status": status, "model": state.served_name, **snapshot},
        status_code=503 if status == "draining" else 200,
    )


# -- errors ---------------------------------------------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(ApiError(exc.status_code, message, code=code))


async def _internal_error(request: Request, exc: Exception) -> Response:
    traceback.print_exception(exc)  # for the server's log; the client gets one line
    return error_response(ApiError(500, "internal server error", type="server_error"))


def create_app(state: ServerState) -> Starlette:
    """The Starlette app serving `state`'s model; the scheduler is started and stopped by the caller."""
    state.created = state.created or int(time.time())
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
    app.state.dgemma = state
    with contextlib.suppress(AttributeError):
        app.router.redirect_slashes = False
    return app
