"""A fault-injecting OpenAI-compatible upstream for the reliability tests, served by uvicorn on 127.0.0.1.

Each `/v1/chat/completions` request takes the next fault from a script (`POST /_script {"faults": [...]}`;
`ok` once the script is empty) and is logged with when its client went away (`GET /_log`).
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
FAULTS = ("ok", "slow", "500", "429", "401", "hang", "stall", "drop", "malformed")

script: list[str] = []
log: list[dict[str, Any]] = []


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return openai_upstream.chunk(MODEL, delta, finish)


async def until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def completions(request: Request) -> Response:
    body = await request.json()
    fault = script.pop(0) if script else "ok"
    entry: dict[str, Any] = {"fault": fault, "started": time.time(), "closed": None, "tokens": 0,
                             "stream": bool(body.get("stream")),
                             "traceparent": request.headers.get("traceparent")}  # the caller's trace, if any
    log.append(entry)
    fast = {"retry-after-ms": "10"}  # the OpenAI client honours it: retries stay quick in tests
    match fault:
        case "500":
            return error(500, "internal failure upstream", "server_error", fast)
        case "429":
            return error(429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": "1", **fast})
        case "401":
            return error(401, "Incorrect API key provided: sk-test****", "invalid_api_key")
        case "hang":
            await until_disconnected(request)
            entry["closed"] = time.time()
            return Response(status_code=499)

    async def events() -> AsyncIterator[bytes]:
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
