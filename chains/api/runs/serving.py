"""Starting, joining and cancelling runs: what every streaming surface calls, whatever its encoding.

A request that starts a stream gets a new run from the store, a generation writing into it, and a response
following it. A request that carries `Last-Event-ID` (an EventSource reconnecting on its own) joins the run that
id names instead: no second generation. Every refusal is one of the shared error types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.responses import Response

from chains.api.runs.protocol import RunCaller
from chains.api.sse import TokenStreamResponse
from chains.common.responses import refuse
from chains.runnables.chat import ChatChain
from chains.streaming.events import EventFormat
from chains.streaming.generation import Generation, LiveStreams, StreamOptions, generate
from chains.streaming.record import StreamLabels, StreamObserver
from chains.streaming.run import InvalidEventId, Listener, OnDisconnect, parse_event_id
from chains.streaming.store import (
    CancelOutcome,
    RunInfo,
    RunNotFound,
    RunOver,
    RunStore,
    RunStoreFull,
    RunStoreUnavailable,
    TooManyRuns,
)


def run_refusal(exc: Exception) -> JSONResponse:
    """A store's refusal as the shared error body."""
    match exc:
        case RunNotFound():
            return refuse(404, "not_found", str(exc))
        case InvalidEventId():
            return refuse(400, "invalid_event_id", str(exc))
        case RunStoreFull():
            return refuse(503, "run_store_full", str(exc))
        case RunStoreUnavailable():
            return refuse(503, "run_store_unavailable", str(exc))
        case TooManyRuns():
            return refuse(429, "too_many_runs", str(exc))
    raise exc


RUN_ERRORS = (RunNotFound, InvalidEventId, RunStoreFull, RunStoreUnavailable, TooManyRuns)


@dataclass(frozen=True)
class RunServing:
    store: RunStore
    heartbeat_seconds: float
    observer: StreamObserver | None = None  # metrics, traces and logs (chains.observability), when installed
    live: LiveStreams | None = None  # the process's generations in flight, ended at shutdown

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """The app's lifespan: the store's connections close with it."""
        yield
        await self.store.close()

    async def start(self, chain: ChatChain, chain_input: Any, options: StreamOptions, fmt: EventFormat,
                    caller: RunCaller, labels: StreamLabels = StreamLabels()) -> Response:
        """A new run streamed to the caller, or the run its `Last-Event-ID` names, resumed."""
        if caller.last_event_id is not None:
            try:
                run_id, _ = parse_event_id(caller.last_event_id)
            except InvalidEventId as exc:
                return run_refusal(exc)
            return await self.join(run_id, caller.owner, caller.last_event_id)
        try:
            generation, listener = await self.open(chain, chain_input, options, fmt, caller.owner,
                                                   caller.on_disconnect, labels, caller.address)
        except RUN_ERRORS as exc:
            return run_refusal(exc)
        return TokenStreamResponse(listener, self.heartbeat_seconds, generation.run.id)

    async def open(self, chain: ChatChain, chain_input: Any, options: StreamOptions, fmt: EventFormat,
                   owner: str | None, on_disconnect: OnDisconnect, labels: StreamLabels,
                   address: str | None = None) -> tuple[Generation, Listener]:
        """A new run in the store, its generation, and its first listener (joined before the generation can end,
        so the disconnect policy sees it). The run counts against its key's and its address's budgets. Raises the
        store's refusals (RUN_ERRORS)."""
        run = await self.store.create(owner, on_disconnect, address)
        listener = Listener(run)
        return generate(run, chain, chain_input, options, fmt, labels, self.observer, self.live), listener

    async def join(self, run_id: str, owner: str | None, last_event_id: str | None) -> Response:
        try:
            events = await self.store.listen(run_id, owner, last_event_id)
        except RunOver:
            return Response(status_code=204)  # SSE: an EventSource stops reconnecting
        except RUN_ERRORS as exc:
            return run_refusal(exc)
        return TokenStreamResponse(events, self.heartbeat_seconds, run_id)

    async def cancel(self, run_id: str, owner: str | None) -> CancelOutcome | JSONResponse:
        try:
            return await self.store.cancel(run_id, owner)
        except RUN_ERRORS as exc:
            return run_refusal(exc)

    async def info(self, run_id: str, owner: str | None) -> RunInfo | JSONResponse:
        try:
            return await self.store.info(run_id, owner)
        except RUN_ERRORS as exc:
            return run_refusal(exc)
