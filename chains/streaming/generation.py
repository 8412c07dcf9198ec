"""The one streaming core behind every SSE surface: chain → run (encoded events) → listeners.

A surface configures it with `StreamOptions` and an encoding (an `EventFormat`); the core knows neither which
model is behind the chain nor how the events look on the wire.

A generation is one task: it iterates the chain's text stream (`ChatChain.astream_text`: the model's own token
stream when nothing else listens, plain strings from our models), encodes each event once and appends it to its run
(chains.streaming.run). Listeners — the request that started it, and any that join later with `Last-Event-ID` —
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
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from chains.common.errors import describe_failure
from chains.models.base import Reasoning, StreamEnd, TextStream, UsageMeter, usage_meter
from chains.runnables.chat import ChatChain
from chains.streaming.events import CompletionTokensDetails, DoneEvent, ErrorEvent, EventFormat, StartEvent, Usage
from chains.streaming.record import StreamLabels, StreamObserver, StreamRecord
from chains.streaming.run import CancelReason, Run, RunStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamOptions:
    buffer_size: int = 1
    flush_ms: float | None = 100.0
    timeout: float | None = None
    idle_timeout: float | None = None


SHUTDOWN = ErrorEvent(error="the server is shutting down; try again", type="shutdown")
DRAINING = ("this replica is shutting down (draining after SIGTERM) and takes no new work; try again (another "
            "replica will answer)")


class LiveStreams:
    """The generations in flight in one process, so that a shutdown can end each stream with a terminal event.
    server.py makes one per app and hands it to the runs' serving (which registers each generation) and, in the
    lifespan state, to the request-line protocol (chains.hosting.http_protocol), which calls `shut_down`."""

    def __init__(self) -> None:
        self._generations: weakref.WeakSet[Generation] = weakref.WeakSet()
        self.shutting_down = False
        self.draining = False  # after SIGTERM (chains.hosting.drain): no new work; the live runs may finish

    def add(self, generation: Generation) -> None:
        self._generations.add(generation)

    def __len__(self) -> int:
        return sum(not generation.finished for generation in self._generations)

    def end_all(self, reason: ErrorEvent = SHUTDOWN) -> None:
        """Every generation in flight ends now, with `reason` as its terminal event and a clean close of its
        stream."""
        for generation in list(self._generations):
            generation.interrupt(reason)

    def shut_down(self) -> None:
        """The server starts shutting down: `end_all`, once (every connection is told; the streams end once)."""
        if not self.shutting_down:
            self.shutting_down = True
            self.end_all()


class Generation:
    """One generation in flight: the task that runs the chain and writes its events into the run.

    How it went is told here, never by an encoding: `first_token()` returns once the first token (or reasoning
    piece) was sent (None) or the generation ended without one (its failure, or None when it completed or was
    cancelled empty);
    `failure` is the terminal error, `record` what was measured, both set when the run finishes."""

    def __init__(self, run: Run, chain: ChatChain, chain_input: Any, options: StreamOptions,
                 fmt: EventFormat, labels: StreamLabels = StreamLabels(),
                 observer: StreamObserver | None = None, live: LiveStreams | None = None) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self.run = run
        self.labels = labels
        self.observer = observer
        self.handle = observer.stream_started(labels) if observer is not None else None
        self.first_token_at: float | None = None  # the answer's first token
        self.first_output_at: float | None = None  # the first reasoning piece or answer token
        self.first_reasoning_at: float | None = None
        self.longest_gap = 0.0
        self.cancel_reason: CancelReason | None = None  # set by a cancel (a request, or the disconnect policy)
        self.fmt = fmt
        self.options = options
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.meter = UsageMeter()
        self.texts: list[str] = []  # every token sent: the full response
        self.reasoning: list[str] = []  # every reasoning piece sent: the full reasoning
        self.pending: list[str] = []  # buffered tokens not yet sent (buffer_size > 1)
        self.seq = 0
        self.token_count = 0
        self.interrupted: ErrorEvent | None = None  # why it was stopped early: a timeout, the server's shutdown
        self.flush_after = options.flush_ms / 1000 if options.flush_ms and options.buffer_size > 1 else None
        self.flush_timer: asyncio.TimerHandle | None = None
        self.began = self.last_token = loop.time()  # uvloop's clock: milliseconds, fine for deadlines
        self.started = time.perf_counter()  # for the reported duration
        self.watchdog: asyncio.TimerHandle | None = None
        self.failure: ErrorEvent | None = None
        self.record: StreamRecord | None = None
        self._first_token: asyncio.Future[ErrorEvent | None] = loop.create_future()
        head = fmt.start(run.event_id(0), StartEvent(timestamp=time.time(), run_id=run.id))
        run.append(head or b"")
        run.generation = self
        self.producer = loop.create_task(self._produce(chain, chain_input), name=f"generation-{run.id}")
        self.producer.add_done_callback(self._stopped_before_it_began)
        if live is not None:
            live.add(self)
        if options.timeout is not None or options.idle_timeout is not None:
            self._check_deadlines()

    @property
    def finished(self) -> bool:
        return self.run.finished

    async def first_token(self) -> ErrorEvent | None:
        """Waits for the first token (then None) or the end without one (then the failure, if it failed)."""
        return await asyncio.shield(self._first_token)

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
            self.failure = ErrorEvent(error=message, type=kind)
            terminal = self.fmt.error(self._next_id(), self.failure), "failed", kind
        finally:
            for timer in (self.watchdog, self.flush_timer):
                if timer is not None:
                    timer.cancel()
        self._finish(*terminal)

    def _finish(self, terminal: bytes, status: RunStatus, failure: str | None = None) -> None:
        self.record = self._record(status, failure)
        if not self._first_token.done():
            self._first_token.set_result(self.failure)
        self.run.finish(terminal, status, self.failure.type if self.failure is not None else None)
        if self.observer is not None:
            self.observer.stream_ended(self.handle, self.record)

    def _record(self, status: RunStatus, failure: str | None) -> StreamRecord:
        if status == "completed":
            ending = "done"
        elif status == "cancelled":
            ending = self.cancel_reason or "cancelled"  # none: the event loop closing
        elif self.interrupted is not None:
            ending = self.interrupted.type  # timeout, shutdown
        else:
            ending = failure or "internal_error"
        first, usage, began = self.first_output_at, self._usage(), self.began
        outputs = self.token_count + len(self.reasoning)
        per_token = (self.last_token - first) / (outputs - 1) if first is not None and outputs > 1 else None
        details = usage.completion_tokens_details if usage else None
        return StreamRecord(
            run_id=self.run.id, labels=self.labels, ending=ending, finish_reason=self.finish_reason,
            seconds=self.loop.time() - began,
            time_to_first_token=first - began if first is not None else None,
            time_per_output_token=per_token, longest_gap=self.longest_gap if outputs > 1 else None,
            token_events=self.token_count,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            time_to_first_reasoning=None if self.first_reasoning_at is None else self.first_reasoning_at - began,
            time_to_first_answer=None if self.first_token_at is None else self.first_token_at - began,
            reasoning_events=len(self.reasoning), reasoning_tokens=details.reasoning_tokens if details else None,
            upstream=self.meter.upstream,
        )

    def _stopped_before_it_began(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs its handlers: the run still gets its terminal event.
        if not self.run.finished:
            self._finish(*self._terminal_when_stopped())

    def _terminal_when_stopped(self) -> tuple[bytes, RunStatus]:
        if self.interrupted is not None:  # it says what it had sent until it was stopped
            self.failure = self.interrupted.model_copy(update={"full_response": "".join(self.texts),
                                                               "token_count": self.token_count})
            return self.fmt.error(self._next_id(), self.failure), "failed"
        return self._done("cancelled"), "cancelled"  # a cancel, or the event loop closing

    async def _send_each(self, items: TextStream) -> None:
        # The hot path: one encode and one append per token.
        run, fmt, texts = self.run, self.fmt, self.texts
        event_id, seq, count = run.event_id, self.seq, self.token_count
        try:
            async for text in items:
                if text.__class__ is not str:  # the end, a reasoning piece: one type check on the hot path
                    if isinstance(text, StreamEnd):
                        self._note_end(text)
                        continue
                    if isinstance(text, Reasoning):
                        seq += 1
                        self._send_reasoning(event_id(seq), text)
                        continue
                    text = str(text)  # noqa: PLW2901 - another str subclass (LangChain's TextAccessor): answer text
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
            if text.__class__ is not str:
                if isinstance(text, StreamEnd):
                    self._note_end(text)
                    continue
                if isinstance(text, Reasoning):  # not buffered with the answer: what was buffered goes first
                    self._flush()
                    self._send_reasoning(self._next_id(), text)
                    continue
                text = str(text)  # noqa: PLW2901 - as in _send_each
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
            if self.first_output_at is None:
                self._first_output(now)
                return
        if now - self.last_token > self.longest_gap:
            self.longest_gap = now - self.last_token
        self.last_token = now

    def _first_output(self, now: float) -> None:
        """The first thing the model said, its reasoning or its answer: the stream has begun (no failover after it,
        an HTTP status no longer), and the idle deadline counts from here."""
        self.first_output_at = self.last_token = now
        self._first_token.set_result(None)
        if self.observer is not None:
            self.observer.first_token(self.handle)

    def _send_reasoning(self, event_id: bytes, text: str) -> None:
        """A reasoning piece: its own event, in the run's one sequence of ids (a resume replays it); it counts as
        activity for the idle timeout."""
        now = self.loop.time()
        if self.first_reasoning_at is None:
            self.first_reasoning_at = now
        if self.first_output_at is None:
            self._first_output(now)
        else:
            self.longest_gap = max(self.longest_gap, now - self.last_token)
            self.last_token = now
        self.reasoning.append(text)
        self.run.append(self.fmt.reasoning(event_id, text, len(self.reasoning)))

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
            details = None if end.reasoning_tokens is None else \
                CompletionTokensDetails(reasoning_tokens=end.reasoning_tokens)
            self.usage = Usage(prompt_tokens=end.prompt_tokens, completion_tokens=end.completion_tokens,
                               total_tokens=end.prompt_tokens + end.completion_tokens,
                               completion_tokens_details=details)
        self.finish_reason = end.finish_reason

    def _usage(self) -> Usage | None:
        """What the model reported at its end, else what it counted so far (a stopped generation has no end)."""
        meter = self.meter
        if self.usage is not None or meter.prompt_tokens is None:
            return self.usage
        return Usage(prompt_tokens=meter.prompt_tokens, completion_tokens=meter.completion_tokens,
                     total_tokens=meter.prompt_tokens + meter.completion_tokens, completion_tokens_details=None)

    def _done(self, status: Literal["completed", "cancelled"]) -> bytes:
        duration = time.perf_counter() - self.started
        return self.fmt.done(self._next_id(), DoneEvent(
            status=status, full_response="".join(self.texts), full_reasoning="".join(self.reasoning),
            token_count=self.token_count, duration=duration,
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
             labels: StreamLabels = StreamLabels(), observer: StreamObserver | None = None,
             live: LiveStreams | None = None) -> Generation:
    """Start generating into `run` (created by a store); listeners follow the run."""
    return Generation(run, chain, chain_input, options, fmt, labels, observer, live)
