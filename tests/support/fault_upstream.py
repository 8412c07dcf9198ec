"""A fault-injecting OpenAI-compatible upstream for the reliability tests, served by uvicorn on 127.0.0.1.

Each `/v1/chat/completions` request takes the next fault from a script (`POST /_script {"faults": [...]}`;
`ok` once the script is empty) and is logged (`GET /_log`): its fault, when it started and when its client went
away (`closed`: when its answer ended; `left`: when a stream's client went before its end), the tokens sent,
whether it streamed and asked for usage, and how many requests were open here when it arrived, itself included
(`in_flight`: what a capped caller must keep at or below its cap).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support import openai_upstream
from tests.support.openai_upstream import DONE, error, models_route, usage_chunk

MODEL = "fault"
TOKENS = ["Hello", ",", " I", " am", " a", " scripted", " upstream", ".", "\n", "你好"]
FAULTS = ("ok", "slow", "500", "503", "429", "401", "hang", "stall", "drop", "malformed")

# fault → the error it answers at once: (status, message, OpenAI's error code)
ERRORS: dict[str, tuple[int, str, str]] = {
    "500": (500, "internal failure upstream", "server_error"),
    "503": (503, "the upstream is overloaded", "service_unavailable"),
    "429": (429, "Rate limit reached", "rate_limit_exceeded"),
    "401": (401, "Incorrect API key provided: sk-test****", "invalid_api_key"),
}

script: list[str] = []
log: list[dict[str, Any]] = []
open_requests = 0  # requests whose answer is not over yet (a stream: until its generator ends)


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return openai_upstream.chunk(MODEL, delta, finish)


async def until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def completions(request: Request) -> Response:
    global open_requests
    body = await request.json()
    fault = script.pop(0) if script else "ok"
    open_requests += 1
    entry: dict[str, Any] = {"fault": fault, "started": time.time(), "closed": None, "tokens": 0,
                             "stream": bool(body.get("stream")),
                             "include_usage": bool((body.get("stream_options") or {}).get("include_usage")),
                             "in_flight": open_requests, "left": None,
                             "traceparent": request.headers.get("traceparent")}  # the caller's trace, if any
    log.append(entry)
    fast = {"retry-after-ms": "10"}  # the OpenAI client honours it: retries stay quick in tests
    if fault in ERRORS:
        open_requests -= 1
        status, message, code = ERRORS[fault]
        headers = {"Retry-After": "1", **fast} if status == 429 else fast if status >= 500 else None
        return error(status, message, code, headers)
    if fault == "hang":
        try:
            await until_disconnected(request)
        finally:
            open_requests -= 1
        entry["closed"] = time.time()
        return Response(status_code=499)

    counted = True  # among the open requests

    def over() -> None:
        """The request no longer counts as open here (once, whichever comes first: its client left, it ended)."""
        global open_requests
        nonlocal counted
        if counted:
            counted = False
            open_requests -= 1

    async def watch() -> None:
        # The generator hears of its client leaving only when its next token is cancelled, up to a token's delay
        # later: this is when the connection went, so that `in_flight` counts what was open then.
        await until_disconnected(request)
        if entry["closed"] is None:
            entry["left"] = time.time()
        over()

    async def events() -> AsyncIterator[bytes]:
        watcher = asyncio.create_task(watch())
        try:
            yield chunk({"role": "assistant", "content": ""})
            count = 400 if fault == "slow" else len(TOKENS)
            for i in range(count):
                if fault in ("stall", "drop", "malformed") and i == 3:
                    if fault == "stall":
                        await asyncio.sleep(3600)
                    if fault == "drop":
                        raise ConnectionAbortedError("scripted drop")  # uvicorn cuts the connection
                    yield b"data: {\"id\": \"chatcmpl-fault\", \"choices\": [{\"delta\": {\"content\": \n\n"
                    return
                if fault == "slow":
                    await asyncio.sleep(0.05)
                entry["tokens"] += 1
                yield chunk({"content": TOKENS[i % len(TOKENS)]})
            yield chunk({}, finish="stop")
            yield usage_chunk(MODEL, body, prompt=7, completion=count)
            yield DONE
        finally:
            entry["closed"] = time.time()
            over()
            watcher.cancel()

    return StreamingResponse(events(), media_type="text/event-stream")


async def set_script(request: Request) -> JSONResponse:
    faults = (await request.json())["faults"]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        return JSONResponse({"error": f"unknown faults {sorted(unknown)}"}, 400)
    script[:] = faults
    log.clear()
    return JSONResponse({"script": script})


async def get_log(request: Request) -> JSONResponse:
    return JSONResponse(log)


app = Starlette(routes=[
    Route("/v1/chat/completions", completions, methods=["POST"]),
    models_route(MODEL),
    Route("/_script", set_script, methods=["POST"]),
    Route("/_log", get_log),
])
