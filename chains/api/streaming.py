"""The one streaming core behind every SSE surface: chain → run (encoded events) → listeners.

A surface configures it with `StreamOptions` and an encoding (an `EventFormat`); the core knows neither which
model is behind the chain nor how the events look on the wire.

A generation is one task: it iterates the chain's text stream (`ChatChain.astream_text`: the model's own token
stream when nothing else listens, plain strings from our models), encodes each event once and appends it to its run
(chains.api.runs.run). Listeners — the request that started it, and any that join later with `Last-Event-ID` —
follow the run, each from its own position, and send everything new in one write. Buffering (`buffer_size`
tokens per event, flushed after `flush_ms`) and the timeouts are timers, nothing per token but the time of the
last token. The generation stops when it ends, times out, is cancelled (`POST …/cancel`, or its last listener
left and the run's disconnect policy says so), or the server shuts down; whatever stops it, the run gets a
terminal event, and the chain is cancelled with it: the local model stops decoding, an upstream stream closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from chains.api.errors import describe_failure
from chains.api.events import DoneEvent, ErrorEvent, EventFormat, StartEvent, Usage
from chains.api.runs.run import CancelReason, Listener, Run, RunStatus, new_run_id
from chains.chat import ChatChain
from chains.middleware.scope import BODY_SEND
from chains.models.base import StreamEnd, TextStream, UsageMeter, usage_meter

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamOptions:
    buffer_size: int = 1
    flush_ms: float | None = 100.0
    timeout: float | None = None
    idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class StreamLabels:
    """Which surface a generation serves: bounded values only (never user text, never a run id)."""

    route: str = "/chat"
    chain: str = "system-prompt"


@dataclass(slots=True)
class StreamRecord:
    """What the core measured of one generation, handed to the observer once, at its end."""

    run_id: str
    labels: StreamLabels
    ending: str  # done, cancelled, disconnect, timeout, shutdown, or the error type
    finish_reason: str | None
    seconds: float  # from the request to the terminal event
    time_to_first_token: float | None
    time_per_output_token: float | None  # mean gap between tokens after the first (OTel's definition)
    longest_gap: float | None  # the longest silence between two tokens
    token_events: int
    prompt_tokens: int | None
    completion_tokens: int | None


class StreamObserver(Protocol):
    """Metrics, traces and logs (chains.observability) see each generation begin and end; nothing per token."""

    def stream_started(self, labels: StreamLabels) -> object:
        """Returns a handle (e.g. a span) given back at the end."""
        ...

    def first_token(self, handle: object) -> None: ...

    def stream_ended(self, handle: object, record: StreamRecord) -> None: ...


# Generations in flight in this process, so that a shutdown can end each stream with a terminal event.
_live: weakref.WeakSet[Generation] = weakref.WeakSet()
SHUTDOWN = ErrorEvent(error="the server is shutting down; try again", type="shutdown")
HEARTBEAT = b": heartbeat\n\n"


class Generation:
    """One generation in flight: the task that runs the chain and writes its events into the run."""

    def __init__(self, run: Run, chain: ChatChain, chain_input: Any, options: StreamOptions,
                 fmt: EventFormat, labels: StreamLabels = StreamLabels(),
                 observer: StreamObserver | None = None) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.run = run
        self.labels = labels
        self.observer = observer
        self.handle = observer.stream_started(labels) if observer is not None else None
        self.first_token_at: float | None = None
        self.longest_gap = 0.0
        self.cancel_reason: CancelReason | None = None  # set by a cancel (a request, or the disconnect policy)
        self.fmt = fmt
        self.options = options
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.meter = UsageMeter()
        self.texts: list[str] = []  # every token sent: the full response
        self.pending: list[str] = []  # buffered tokens not yet sent (buffer_size > 1)
        self.seq = 0
        self.token_count = 0
        self.interrupted: ErrorEvent | None = None  # why it was stopped early: a timeout, the server's shutdown
        self.flush_after = options.flush_ms / 1000 if options.flush_ms and options.buffer_size > 1 else None
        self.flush_timer: asyncio.TimerHandle | None = None
        self.began = self.last_token = loop.time()  # uvloop's clock: milliseconds, fine for deadlines
        self.started = time.perf_counter()  # for the reported duration
        self.watchdog: asyncio.TimerHandle | None = None
        head = fmt.start(run.event_id(0), StartEvent(timestamp=time.time(), run_id=run.id))
        run.append(head or b"")
        run.generation = self
        self.producer = loop.create_task(self._produce(chain, chain_input), name=f"generation-{run.id}")
        self.producer.add_done_callback(self._stopped_before_it_began)
        _live.add(self)
        if options.timeout is not None or options.idle_timeout is not None:
            self._check_deadlines()

    @property
    def finished(self) -> bool:
        return self.run.finished

    async def _produce(self, chain: ChatChain, chain_input: Any) -> None:
        usage_meter.set(self.meter)  # this task's context: the model counts into it
        terminal: tuple[bytes, RunStatus] | tuple[bytes, RunStatus, str]
        try:
            async with aclosing(chain.astream_text(chain_input)) as items:
                if self.options.buffer_size == 1:
                    await self._send_each(items)
                else:
                    await self._send_grouped(items)
            self._flush()
            terminal = self._done("completed"), "completed"
        except asyncio.CancelledError:
            self._flush()
            terminal = self._terminal_when_stopped()
        except Exception as exc:  # noqa: BLE001 - becomes the stream's error event
            self._flush()
            kind, message, _ = describe_failure(exc)
            if kind != "internal_error":  # an internal error has been logged in full already
                log.warning("generation failed: %s", message)
            terminal = self.fmt.error(self._next_id(), ErrorEvent(error=message, type=kind)), "failed", kind
        finally:
            for timer in (self.watchdog, self.flush_timer):
                if timer is not None:
                    timer.cancel()
        self._finish(*terminal)

    def _finish(self, terminal: bytes, status: RunStatus, failure: str | None = None) -> None:
        self.run.finish(terminal, status)
        if self.observer is not None:
            self.observer.stream_ended(self.handle, self._record(status, failure))

    def _record(self, status: RunStatus, failure: str | None) -> StreamRecord:
        if status == "completed":
            ending = "done"
        elif status == "cancelled":
            ending = self.cancel_reason or "cancelled"  # none: the event loop closing
        elif self.interrupted is not None:
            ending = self.interrupted.type  # timeout, shutdown
        else:
            ending = failure or "internal_error"
        first, tokens, usage = self.first_token_at, self.token_count, self._usage()
        per_token = (self.last_token - first) / (tokens - 1) if first is not None and tokens > 1 else None
        return StreamRecord(
            run_id=self.run.id, labels=self.labels, ending=ending, finish_reason=self.finish_reason,
            seconds=self.loop.time() - self.began,
            time_to_first_token=first - self.began if first is not None else None,
            time_per_output_token=per_token, longest_gap=self.longest_gap if tokens > 1 else None,
            token_events=tokens,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
        )

    def _stopped_before_it_began(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs its handlers: the run still gets its terminal event.
        if not self.run.finished:
            self._finish(*self._terminal_when_stopped())

    def _terminal_when_stopped(self) -> tuple[bytes, RunStatus]:
        if self.interrupted is not None:
            return self.fmt.error(self._next_id(), self.interrupted), "failed"
        return self._done("cancelled"), "cancelled"  # a cancel, or the event loop closing

    async def _send_each(self, items: TextStream) -> None:
        # The hot path: one encode and one append per token.
        run, fmt, texts = self.run, self.fmt, self.texts
        event_id, seq, count = run.event_id, self.seq, self.token_count
        try:
            async for text in items:
                if isinstance(text, StreamEnd):
                    self._note_end(text)
                    continue
                texts.append(text)
                seq += 1
                count += 1
                self._token_time()
                run.append(fmt.tokens(event_id(seq), text, count))
        finally:  # however it ends (a cancel, a failure), the terminal event follows the last token sent
            self.seq, self.token_count = seq, count

    async def _send_grouped(self, items: TextStream) -> None:
        pending, buffer_size, loop = self.pending, self.options.buffer_size, self.loop
        async for text in items:
            if isinstance(text, StreamEnd):
                self._note_end(text)
                continue
            pending.append(text)
            self._token_time()
            if len(pending) >= buffer_size:
                self._flush()
            elif self.flush_after is not None and self.flush_timer is None:
                self.flush_timer = loop.call_later(self.flush_after, self._flush)

    def _token_time(self) -> None:
        now = self.loop.time()
        if self.first_token_at is None:
            self.first_token_at = now
            if self.observer is not None:
                self.observer.first_token(self.handle)
        elif now - self.last_token > self.longest_gap:
            self.longest_gap = now - self.last_token
        self.last_token = now

    def _flush(self) -> None:
        """Send the buffered tokens as one event (buffering, or before a terminal event)."""
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        if not self.pending:
            return
        text = "".join(self.pending)
        self.token_count += len(self.pending)
        self.pending.clear()
        self.texts.append(text)
        self.run.append(self.fmt.tokens(self._next_id(), text, self.token_count))

    def _next_id(self) -> bytes:
        self.seq += 1
        return self.run.event_id(self.seq)

    def _note_end(self, end: StreamEnd) -> None:
        if end.prompt_tokens is not None and end.completion_tokens is not None:
            self.usage = Usage(prompt_tokens=end.prompt_tokens, completion_tokens=end.completion_tokens,
                               total_tokens=end.prompt_tokens + end.completion_tokens)
        self.finish_reason = end.finish_reason

    def _usage(self) -> Usage | None:
        """What the model reported at its end, else what it counted so far (a stopped generation has no end)."""
        meter = self.meter
        if self.usage is not None or meter.prompt_tokens is None:
            return self.usage
        return Usage(prompt_tokens=meter.prompt_tokens, completion_tokens=meter.completion_tokens,
                     total_tokens=meter.prompt_tokens + meter.completion_tokens)

    def _done(self, status: RunStatus) -> bytes:
        duration = time.perf_counter() - self.started
        return self.fmt.done(self._next_id(), DoneEvent(
            status=status, full_response="".join(self.texts), token_count=self.token_count, duration=duration,
            tokens_per_second=self.token_count / duration if duration > 0 else 0.0, usage=self._usage(),
            finish_reason="cancelled" if status == "cancelled" else self.finish_reason,
        ))

    def _check_deadlines(self) -> None:
        # Runs at the earliest deadline and re-arms itself when a token has moved the idle deadline on, so the
        # hot path only records the time of the last token.
        options, now = self.options, self.loop.time()
        deadlines: list[tuple[float, str]] = []
        if options.timeout is not None:
            deadlines.append((self.began + options.timeout, f"Timeout after {options.timeout:g}s"))
        if options.idle_timeout is not None:
            deadlines.append((self.last_token + options.idle_timeout, f"No token for {options.idle_timeout:g}s"))
        due, message = min(deadlines)
        if now >= due:
            self.interrupt(ErrorEvent(error=message, type="timeout"))
        elif not self.finished:
            self.watchdog = self.loop.call_at(due, self._check_deadlines)

    def interrupt(self, reason: ErrorEvent) -> None:
        """End early with `reason` as the terminal event (unless the generation has finished already)."""
        if not self.finished and self.interrupted is None and self.cancel_reason is None:
            self.interrupted = reason
            self.producer.cancel()

    def cancel(self, reason: CancelReason = "cancelled") -> bool:
        """End early as cancelled: the terminal event carries what was sent and used until now."""
        if self.finished or self.interrupted is not None or self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        self.producer.cancel()
        return True


def generate(run: Run, chain: ChatChain, chain_input: Any, options: StreamOptions, fmt: EventFormat,
             labels: StreamLabels = StreamLabels(), observer: StreamObserver | None = None) -> Generation:
    """Start generating into `run` (created by a store); listeners follow the run."""
    return Generation(run, chain, chain_input, options, fmt, labels, observer)


def token_events(chain: ChatChain, chain_input: Any, options: StreamOptions, fmt: EventFormat) -> AsyncIterator[bytes]:
    """One generation's encoded events, for a caller that keeps no run: a run of its own, cancelled when the
    caller stops iterating."""
    run = Run(new_run_id(), None, "cancel", max_events=1_000_000)
    listener = Listener(run)
    generate(run, chain, chain_input, options, fmt)
    return listener


def end_all_streams(reason: ErrorEvent = SHUTDOWN) -> None:
    """Every generation in flight ends now, with `reason` as its terminal event and a clean close of its stream.
    The hosting layer calls it when the server starts shutting down (chains.hosting.http_protocol)."""
    for generation in list(_live):
        generation.interrupt(reason)


class TokenStreamResponse(StreamingResponse):
    """A `text/event-stream` of pre-encoded events that owns its heartbeat and its disconnect watch.

    The heartbeat is a comment sent only when nothing else was sent for `heartbeat_seconds` (one timer per
    stream, nothing per event). The disconnect watch reads the request channel while the events flow, so a
    client that goes away ends the stream at once, not at the next failed write: the events' iterator (a run's
    listener) is closed, and the run's disconnect policy decides about the generation. Ours rather than sse-starlette's response, whose private lock and state we
    had to override. The content type is exactly `text/event-stream` (SSE is UTF-8 by definition; Starlette would
    append a charset).
    """

    def __init__(self, events: AsyncIterator[bytes], heartbeat_seconds: float, run_id: str | None = None) -> None:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if run_id is not None:
            headers["X-Run-Id"] = run_id
        super().__init__(events, headers=headers)
        self.heartbeat_seconds = heartbeat_seconds
        self.last_sent = 0.0
        self.finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self.last_sent = asyncio.get_running_loop().time()
        chunks = scope.get(BODY_SEND, send)  # past the middleware, which watch only the start and the end
        tasks = (asyncio.ensure_future(self._send_events(chunks, send)),
                 asyncio.ensure_future(self._watch_disconnect(receive)), asyncio.ensure_future(self._heartbeat(chunks)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Closed even if the sending task was cancelled before it began: a listener leaving is what lets
            # the run's disconnect policy act.
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
        sending = tasks[0]
        if sending in done and not sending.cancelled() and sending.exception() is not None:
            raise sending.exception()  # type: ignore[misc]

    async def _send_events(self, send_chunk: Send, send: Send) -> None:
        loop = asyncio.get_running_loop()
        async with aclosing(self.body_iterator) as events:  # type: ignore[type-var]
            async for chunk in events:
                await send_chunk({"type": "http.response.body", "body": chunk, "more_body": True})
                self.last_sent = loop.time()
        self.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _heartbeat(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.last_sent + self.heartbeat_seconds - loop.time())
            if self.finished:
                return
            if loop.time() - self.last_sent >= self.heartbeat_seconds:
                await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                self.last_sent = loop.time()
