"""The HTTP side: FastAPI routes in OpenAI's shapes, server-sent events, errors, and uvicorn
in the foreground (the CLI) or in a thread (tests, bench/serve_load.py)."""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .engine import Completion, Engine
from .schemas import ApiError, ChatRequest, RecommendRequest, error_body, validation_error

log = logging.getLogger("sidlib.serve")


def build_app(engine: Engine) -> FastAPI:
    """The server's routes over a loaded engine (whoever loaded it closes it: several apps, e.g.
    a test's servers, may share one)."""
    app = FastAPI(title="sidlib", description="A SID-speaking chat model, OpenAI-compatible")
    app.state.engine = engine
    _error_handlers(app)
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "items": len(engine.table), "queued": engine.queued}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": created,
                                            "owned_by": "sidlib"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> Any:
        check_chat(engine, req)  # what needs no tokenizer is refused before the queue
        if req.stream:
            return await _stream(engine, req)
        done = await engine.run(engine.complete, req, None, None, None)
        return completion_body(engine, done)

    @app.post("/v1/recommend")
    async def recommend(req: RecommendRequest) -> dict[str, Any]:
        history, k, ban = engine.check_recommend(req)
        items = await engine.run(engine.recommend, history, k, ban)
        return {"object": "recommendation", "model": engine.name, "k": k, "exclude_seen": ban, "history": history,
                "items": items}

    return app


def check_chat(engine: Engine, req: ChatRequest) -> None:
    engine.check_model(req.model)
    if req.n != 1:
        raise ApiError(f"n={req.n}: this server returns one choice a request (n=1)", param="n", code="invalid_value")
    engine.max_new(req)
    req.stop_strings()


# --------------------------------------------------------------------------- response bodies


def _ids() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())


def _extras(done: Completion) -> dict[str, Any]:
    # sidlib's fields beside OpenAI's in a choice: the items the reply names, and how it was made
    return {"items": done.items, "constrained": done.constrained, "assisted": done.gen.assisted}


def _usage(done: Completion) -> dict[str, int]:
    g = done.gen
    return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens}


def completion_body(engine: Engine, done: Completion) -> dict[str, Any]:
    cid, created = _ids()
    choice = {"index": 0, "message": {"role": "assistant", "content": done.gen.raw}, "logprobs": None,
              "finish_reason": done.gen.finish, **_extras(done)}
    return {"id": cid, "object": "chat.completion", "created": created, "model": engine.name,
            "choices": [choice], "usage": _usage(done)}


# --------------------------------------------------------------------------- streaming


async def _stream(engine: Engine, req: ChatRequest) -> StreamingResponse:
    """Server-sent events: `data: {chat.completion.chunk}` lines, then `data: [DONE]`.

    The reply runs on the worker; its callbacks hand events to this loop. The response starts
    only once the prompt is accepted (its turn came, it fits the context), so a bad request is
    still a plain 4xx, never a stream that fails."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancel = threading.Event()

    def put(kind: str, value: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    job = asyncio.ensure_future(engine.run(engine.complete, req, lambda n: put("start", n),
                                           lambda text: put("text", text), cancel))
    first = asyncio.ensure_future(events.get())
    await asyncio.wait({job, first}, return_when=asyncio.FIRST_COMPLETED)
    if not first.done():
        first.cancel()  # a cancelled get leaves its item in the queue
        if events.empty():  # the job ended before the prompt was accepted: its error is the answer
            job.result()
            raise RuntimeError("a chat job ended without starting")  # unreachable: complete() starts or raises
    cid, created = _ids()
    usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": engine.name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}]}
        if usage:
            body["usage"] = None
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def sse() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                got = asyncio.ensure_future(events.get())
                await asyncio.wait({job, got}, return_when=asyncio.FIRST_COMPLETED)
                if got.done():
                    kind, text = got.result()
                    if kind == "text":  # ("start", n) is only still here when the job was quick
                        yield chunk({"content": text})
                    continue
                got.cancel()
                while not events.empty():  # deltas put just before the job finished
                    kind, text = events.get_nowait()
                    if kind == "text":
                        yield chunk({"content": text})
                break
            try:
                done = job.result()
            except Exception as e:  # noqa: BLE001 - the stream has started: the error goes in it
                if not isinstance(e, ApiError):
                    log.exception("streamed reply failed")
                err = e if isinstance(e, ApiError) else ApiError(f"generation failed: {type(e).__name__}: {e}",
                                                                 status=500, type="server_error")
                yield f"data: {json.dumps(err.body())}\n\n"
            else:
                yield chunk({}, done.gen.finish, **_extras(done))
                if usage:
                    yield "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                                 "model": engine.name, "choices": [], "usage": _usage(done)}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()  # a client that left mid-reply: the worker stops at its next token

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# --------------------------------------------------------------------------- errors


def _error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape; FastAPI's 422 for a body that fails validation becomes
    OpenAI's 400."""

    @app.exception_handler(ApiError)
    async def api_error(_req: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, e: RequestValidationError) -> JSONResponse:
        err = validation_error(list(e.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_req: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def crash(_req: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse(error_body(f"the server failed on this request: {type(e).__name__}: {e}",
                                       "server_error"), status_code=500)


# --------------------------------------------------------------------------- running it


class ServerThread:
    """uvicorn serving an app from a thread (tests, bench): `start` returns once it listens (port 0
    = a free port, read back from the socket), `stop` asks it to exit as SIGINT would and waits."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, name="sidlib-uvicorn", daemon=True)
        self.host, self.port = host, port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn's handlers: finish what runs, then exit)."""
    log.info("serving %s (%d items) on http://%s:%d", engine.name, len(engine.table), host, port)
    try:
        uvicorn.run(build_app(engine), host=host, port=port, log_level=log_level)
    finally:
        engine.close()  # uvicorn has let the requests in flight finish
