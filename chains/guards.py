"""Pure ASGI middleware that guards the model routes. Pure ASGI on purpose: Starlette's BaseHTTPMiddleware
breaks disconnect detection on streams."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from chains.errors import RETRY_AFTER_SECONDS

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
