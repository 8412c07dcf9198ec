"""Refuses model requests while the model's wait queue has no room for them, or their client holds its share."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from chains.common.errors import ModelShareExceeded
from chains.common.responses import refuse
from chains.common.scope import API_KEY_ID, MODEL_RUNS, client_address, runs_the_model
from chains.models.base import AdmissionQueue, ModelClient, model_client


class ModelAdmission:
    """Refuses model requests, before anything starts, when the local model has no room for them: 503 + Retry-After
    when its places are taken (one running, LOCAL_QUEUE_SIZE waiting; a /batch needs a place for each input), 429
    + Retry-After when this client (its address, or its key) holds LOCAL_QUEUE_PER_CLIENT of them already. The
    client is set for the request (`model_client`): the generations it starts, a run that outlives it included,
    hold their places in its name. A request that slips past between check and start gets the same refusal as an
    error event, or as the status of its whole batch."""

    def __init__(self, app: ASGIApp, queue: AdmissionQueue) -> None:
        self.app = app
        self.queue = queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not runs_the_model(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        client = ModelClient(client_address(scope), scope.get(API_KEY_ID))
        runs = scope.get(MODEL_RUNS, 1)
        refusal = self.queue.refusal(client, runs)
        if refusal is not None:
            if isinstance(refusal, ModelShareExceeded):
                response = refuse(429, "too_many_runs", str(refusal))
            else:
                free = self.queue.free_places()
                what = f"a batch of {runs} inputs needs {runs} places, {free} are free" if runs > 1 else \
                    "its wait queue is full"
                response = refuse(503, "overloaded", f"the local model is busy: {what}")
            await response(scope, receive, send)
            return
        token = model_client.set(client)
        try:
            await self.app(scope, receive, send)
        finally:
            model_client.reset(token)
