"""Refuses model requests while the model's wait queue has no room for them, or their client holds its share: the
local model's queue, or the upstreams' concurrency cap and its queue."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.common.errors import ModelOverloadedError, ModelShareExceeded
from chains.common.responses import refuse
from chains.common.scope import API_KEY_ID, MODEL_RUNS, client_address, runs_the_model
from chains.models.base import AdmissionQueue, ModelClient, admitted

# How long a streaming request's unclaimed places stay held after it ends: a run whose client hung up at once
# may not have reached the model yet (LangChain's first steps take a few event-loop turns).
CLAIM_GRACE_SECONDS = 2.0


class ModelAdmission:
    """Admits model requests to a queued model, before anything starts: 503 + Retry-After when its places are
    taken (the local model: one running, LOCAL_QUEUE_SIZE waiting; the upstreams: OPENAI_MAX_CONCURRENCY each
    and OPENAI_QUEUE_SIZE waiting, `upstream_busy`; a /batch needs a place for each input), 429 + Retry-After when
    this client (its address, or its key) holds LOCAL_QUEUE_PER_CLIENT of them already. An admitted request holds
    its places (`admitted`), in its client's name, until its generations claim them, a run that outlives the
    request included: requests that arrive together cannot all pass before any generation starts."""

    def __init__(self, app: ASGIApp, queue: AdmissionQueue) -> None:
        self.app = app
        self.queue = queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not runs_the_model(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        runs = scope.get(MODEL_RUNS, 1)
        try:
            reservation = self.queue.reserve(ModelClient(client_address(scope), scope.get(API_KEY_ID)), runs)
        except ModelShareExceeded as exc:
            await refuse(429, "too_many_runs", str(exc))(scope, receive, send)
            return
        except ModelOverloadedError as exc:  # UpstreamBusy too
            free = self.queue.free_places()
            what = f"a batch of {runs} inputs needs {runs} places, {free} are free" if runs > 1 else \
                "its wait queue is full"
            await refuse(503, exc.kind, f"{exc.model} is busy: {what}")(scope, receive, send)
            return
        status = 0

        async def watching_send(message: Message) -> None:  # the start and the end only: chunks go past
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = admitted.set(reservation)
        try:
            await self.app(scope, receive, watching_send)
        finally:
            admitted.reset(token)
            if reservation.left:  # places no generation claimed (yet)
                if status == 200:  # a stream: its run may still be on its way to the model
                    asyncio.get_running_loop().call_later(CLAIM_GRACE_SECONDS, reservation.release)
                else:
                    reservation.release()
