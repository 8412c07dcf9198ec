"""Baselines served by uvicorn beside our app, measured in the same run.

- `ceiling`: a bare Starlette `StreamingResponse` of pre-encoded SSE bytes — the most a stream can move here.
  With BENCH_DELAY_MS it paces its events, the ceiling for the concurrency benchmark.
- `tutorial`: the tutorial's `/chat` handler as written (json.dumps f-strings over `llm.astream`), over the same
  scripted model our server runs with CHAT_PROVIDER=fake.
- `ours_without_a_store`: our app with runs that no store keeps (B1's baseline for the run stores).
- `ours_unobserved`: our app with no observer and no request middleware counting (B1's and B3's baseline for what
  metrics and tracing cost).

Run: `uvicorn bench.apps:ceiling` or `uvicorn bench.apps:tutorial`, with BENCH_TOKENS and BENCH_DELAY_MS set.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import cast

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from langchain_core.messages import HumanMessage, SystemMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from chains.models.fake import ScriptedChatModel

TOKENS = int(os.environ.get("BENCH_TOKENS", "5000"))
DELAY = float(os.environ.get("BENCH_DELAY_MS", "0")) / 1000


async def _ceiling_stream(request: Request) -> StreamingResponse:
    events = [b'id: %d\ndata: {"token":"tok","token_count":%d}\n\n' % (i, i) for i in range(1, TOKENS + 1)]

    async def body() -> AsyncIterator[bytes]:
        for event in events:
            if DELAY:
                await asyncio.sleep(DELAY)
            yield event

    return StreamingResponse(body(), media_type="text/event-stream")


async def _health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


ceiling = Starlette(routes=[Route("/stream", _ceiling_stream, methods=["GET", "POST"]), Route("/health", _health)])

# --- the tutorial's section 2 handler, verbatim but for the model ------------------------------------------------
tutorial = FastAPI()
llm = ScriptedChatModel(reply_tokens=TOKENS, token_delay_ms=DELAY * 1000)


@tutorial.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@tutorial.post("/chat")
async def chat(message: str, system_prompt: str = "你是一个有用的助手") -> StreamingResponse:
    """完整的 Token 流式聊天"""
    async def generate() -> AsyncIterator[str]:
        try:
            start_data = {"status": "started", "timestamp": time.time()}
            yield f"event: start\ndata: {json.dumps(start_data)}\n\n"
            messages = [SystemMessage(content=system_prompt), HumanMessage(content=message)]
            full_response = ""
            token_count = 0
            start_time = time.time()
            async for chunk in llm.astream(messages):
                if chunk.content:
                    full_response += chunk.content  # type: ignore[operator]  # the tutorial's line: text content
                    token_count += 1
                    token_data = {"token": chunk.content, "token_count": token_count}
                    yield f"data: {json.dumps(token_data)}\n\n"
            duration = time.time() - start_time
            done_data = {
                "status": "completed", "full_response": full_response, "token_count": token_count,
                "duration": duration, "tokens_per_second": token_count / duration if duration > 0 else 0,
            }
            yield f"event: done\ndata: {json.dumps(done_data)}\n\n"
        except Exception as e:  # noqa: BLE001 - the tutorial's handler as it is written (the bench's baseline)
            error_data = {"error": str(e), "type": "generation_error"}
            yield f"event: error\ndata: {json.dumps(error_data)}\n\n"

    return StreamingResponse(generate(), media_type="text/event-stream")


# --- ours, with runs that no store keeps: B1's baseline for what keeping runs costs ---------------------------------
def ours_without_a_store() -> Starlette:
    """An app factory (`uvicorn --factory bench.apps:ours_without_a_store`): our app as `make run` builds it, but its
    runs are kept by no store (no resume, no cancel by id, no bounds). The stream is the same code: a generation
    writing into a run, a listener following it. B1 compares it with the in-memory and the Redis store."""
    import server
    from chains.common.settings import load_settings
    from chains.streaming.run import OnDisconnect, Run, new_run_id
    from chains.streaming.store import MemoryRunStore, RunLimits

    class UnkeptRuns(MemoryRunStore):
        async def create(self, owner: str | None, on_disconnect: OnDisconnect, address: str | None = None,
                         encoding: str = "") -> Run:
            return Run(new_run_id(), owner, on_disconnect, self.limits.max_events, address=address,
                       encoding=encoding)

    server.build_run_store = lambda settings: UnkeptRuns(RunLimits())
    return server.create_app(load_settings())


# --- ours, observing nothing: B1's and B3's baseline for what metrics and tracing cost --------------------------------
def ours_unobserved() -> Starlette:
    """An app factory (`uvicorn --factory bench.apps:ours_unobserved`): our app as `make run` builds it, but with
    nothing recorded — no stream observer (no metrics, span or log line per generation: `server.observe` gives
    None) and no `ObserveRequests` middleware (no request counted or traced). `/metrics` is still mounted and
    reads nothing. B1 and B3 compare it with our app as it is (metrics on) and with OTEL_TRACES_EXPORTER=memory
    (metrics and tracing on, spans exported to the in-process sink)."""
    import server
    from chains.common.settings import load_settings
    from chains.middleware.observe import ObserveRequests

    install = server.install_middleware

    def install_unobserved(app: FastAPI, *args: object, **kwargs: object) -> None:
        install(app, *args, **kwargs)  # type: ignore[arg-type]
        app.user_middleware = [m for m in app.user_middleware if cast(object, m.cls) is not ObserveRequests]

    server.observe = lambda *args, **kwargs: None  # type: ignore[assignment]
    server.install_middleware = install_unobserved
    return server.create_app(load_settings())

