"""Starting, joining and cancelling runs: what every streaming surface calls, whatever its encoding.

A request that starts a stream gets a new run from the store, a generation writing into it, and a response
following it. A request that carries `Last-Event-ID` (an EventSource reconnecting on its own) joins the run that
id names instead: no second generation. Every refusal is one of the shared error types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.responses import Response

from chains.api.runs.protocol import RunCaller
from chains.api.sse import TokenStreamResponse
from chains.common.errors import STATUS_OF
from chains.common.responses import ErrorResponse, refuse
from chains.common.settings import Settings
from chains.runnables.chat import ChatChain
from chains.streaming.events import ErrorEvent, EventFormat
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


def token_by_token(settings: Settings) -> StreamOptions:
    """The options of a surface that streams every token as it comes (`/v1`, `/api/chat`), within the server's
    generation time limits."""
    return StreamOptions(buffer_size=1, flush_ms=None, timeout=settings.stream_timeout,
                         idle_timeout=settings.stream_idle_timeout)


def failure_refusal(failure: ErrorEvent) -> ErrorResponse:
    """A generation that failed before it said anything, as the HTTP error of its type."""
    return refuse(STATUS_OF[failure.type], failure.type, failure.error)


async def stream_once_begun(generation: Generation, events: Listener, heartbeat_seconds: float) -> Response:
    """The stream, once the first token is there; a failure before it is an HTTP error with its status (429 with
    `Retry-After`, 502, 503, 504), which OpenAI's clients raise and retry."""
    try:
        failure = await generation.first_token()
    except BaseException:  # the client left while it waited (a cancelled request)
        await events.aclose()
        raise
    if failure is not None:
        await events.aclose()
        return failure_refusal(failure)
    # The listener has read nothing yet: the response replays the run from its start and follows it.
    return TokenStreamResponse(events, heartbeat_seconds, generation.run.id)


async def whole_reply(generation: Generation, events: Listener) -> bytes | ErrorResponse:
    """Every event of the run, encoded, once it has ended; or the HTTP error of its failure."""
    async with aclosing(events):
        body = b"".join([piece async for piece in events])
    return failure_refusal(generation.failure) if generation.failure is not None else body


@dataclass(frozen=True)
class RunServing:
    store: RunStore
    heartbeat_seconds: float
    observer: StreamObserver | None = None  # metrics, traces and logs (chains.observability), when installed
    live: LiveStreams | None = None  # the process's generations in flight, ended at shutdown

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """The app's lifespan: the store opens (with Redis: this replica's lease, its reaper) and closes with it."""
        await self.store.open()
        try:
            yield
        finally:
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
        run = await self.store.create(owner, on_disconnect, address, fmt.name)
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
