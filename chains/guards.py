"""Pure ASGI middleware that guards the model routes. Pure ASGI on purpose: Starlette's BaseHTTPMiddleware
breaks disconnect detection on streams."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.errors import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)

_MODEL_ENDPOINTS = ("/invoke", "/batch", "/stream", "/stream_log", "/stream_events")


def runs_the_model(path: str) -> bool:
    """LangServe's generation endpoints and the /chat routes; not schemas, docs, playgrounds or /health."""
    return path.startswith("/chat") or path.rstrip("/").endswith(_MODEL_ENDPOINTS)


class ModelAdmission:
    """Refuses model requests with 503 + Retry-After while the local model's wait queue is full, before a
    stream is opened (a request that slips past between check and start gets an `overloaded` error event)."""

    def __init__(self, app: ASGIApp, saturated: Callable[[], bool]) -> None:
        self.app = app
        self.saturated = saturated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and runs_the_model(scope["path"]) and self.saturated():
            response = JSONResponse(
                {"error": "the local model is busy: its wait queue is full", "type": "overloaded"},
                status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class EndStreamsCleanly:
    """LangServe's stream endpoints send their `event: error` and then re-raise, which makes uvicorn cut the
    connection mid-body. This ends such a response properly instead (the error is logged, not lost)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "complete": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if not state["started"] or state["complete"]:
                raise
            log.warning("%s failed after its response started; ending it cleanly", scope["path"], exc_info=True)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
