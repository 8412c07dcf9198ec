"""Refuses model requests while the model's wait queue has no room for them."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from chains.common.responses import refuse
from chains.common.scope import MODEL_RUNS, runs_the_model


class ModelAdmission:
    """Refuses model requests with 503 + Retry-After when the local model has no room for them (one running,
    LOCAL_QUEUE_SIZE waiting; a /batch needs a place for each input), before anything starts. A request that
    slips past between check and start gets an `overloaded` error event, or a 503 that cancels its whole batch."""

    def __init__(self, app: ASGIApp, free_places: Callable[[], int]) -> None:
        self.app = app
        self.free_places = free_places

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and runs_the_model(scope["path"]) and scope["method"] != "OPTIONS":
            runs, free = scope.get(MODEL_RUNS, 1), self.free_places()
            if runs > free:
                what = f"a batch of {runs} inputs needs {runs} places, {free} are free" if runs > 1 else \
                    "its wait queue is full"
                response = refuse(503, "overloaded", f"the local model is busy: {what}")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
