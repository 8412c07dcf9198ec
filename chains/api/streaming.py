"""The one streaming core behind every SSE surface: chain → buffer → timeouts → encoded events.

A surface configures it with `StreamOptions` and an encoding (an `EventFormat`); the core knows neither which
model is behind the chain nor how the events look on the wire.

A producer task iterates the chain's message chunks (`ChatChain.astream_messages`: the model's own token stream
when nothing else listens) and appends each token to a list; the response's generator wakes when a
group is ready (`buffer_size` tokens), when the oldest waiting token has waited `flush_ms`, or at the end, and
encodes each event once. Timeouts cost nothing per token: a single timer re-arms itself from the time of the
last token and cancels the producer only when a deadline has really passed. When the client goes away,
`TokenStreamResponse` (its disconnect watch) cancels the generator, whose `finally` cancels the
producer, and with it the chain: the local model stops decoding, an upstream HTTP stream is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessageChunk
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from chains.api.errors import describe_failure
from chains.api.events import DoneEvent, ErrorEvent, EventFormat, StartEvent, Usage
from chains.chat import ChatChain

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamOptions:
    buffer_size: int = 1
    flush_ms: float | None = 100.0
    timeout: float | None = None
    idle_timeout: float | None = None


# Generations in flight in this process, so that a shutdown can end each stream with a terminal event.
_live: weakref.WeakSet[_Generation] = weakref.WeakSet()
SHUTDOWN = ErrorEvent(error="the server is shutting down; try again", type="shutdown")
HEARTBEAT = b": heartbeat\n\n"


class _Generation:
    """One generation in flight: the producer task, the tokens it has produced and not yet sent, the timers."""

    def __init__(self, chain: ChatChain, chain_input: Any, options: StreamOptions) -> None:
        self.loop = asyncio.get_running_loop()
        self.options = options
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.pending: list[str] = []
        self.wake = asyncio.Event()
        self.finished = False
        self.failure: Exception | None = None
        self.interrupted: ErrorEvent | None = None  # why it was stopped early: a timeout, the server's shutdown
        self.flush_due = False
        self.flush_after = options.flush_ms / 1000 if options.flush_ms and options.buffer_size > 1 else None
        self.flush_timer: asyncio.TimerHandle | None = None
        self.began = self.last_token = self.loop.time()  # uvloop's clock: milliseconds, fine for deadlines
        self.started = time.perf_counter()  # for the reported duration
        self.producer = self.loop.create_task(self._produce(chain, chain_input), name="token-producer")
        self.watchdog: asyncio.TimerHandle | None = None
        if options.timeout is not None or options.idle_timeout is not None:
            self._check_deadlines()

    async def _produce(self, chain: ChatChain, chain_input: Any) -> None:
        pending, buffer_size, loop = self.pending, self.options.buffer_size, self.loop
        try:
            async with aclosing(chain.astream_messages(chain_input)) as chunks:
                async for chunk in chunks:
                    if chunk.content:
                        pending.append(chunk.text)
                        self.last_token = loop.time()
                        if len(pending) >= buffer_size:
                            self.wake.set()
                        elif self.flush_after is not None and self.flush_timer is None:
                            self.flush_timer = loop.call_later(self.flush_after, self._flush_now)
                    if chunk.response_metadata or chunk.usage_metadata:  # only on the last chunks
                        self._note_metadata(chunk)
        except Exception as exc:  # noqa: BLE001 - becomes the stream's error event
            self.failure = exc
        finally:
            self.finished = True
            self.wake.set()

    def _note_metadata(self, chunk: AIMessageChunk) -> None:
        usage = chunk.usage_metadata
        if usage:
            self.usage = Usage(prompt_tokens=usage["input_tokens"], completion_tokens=usage["output_tokens"],
                               total_tokens=usage["total_tokens"])
        self.finish_reason = chunk.response_metadata.get("finish_reason") or self.finish_reason

    def _flush_now(self) -> None:
        self.flush_due = True
        self.wake.set()

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
        if not self.finished and self.interrupted is None:
            self.interrupted = reason
            self.producer.cancel()
            self.wake.set()

    def take_ready(self) -> list[str]:
        """Tokens to send now: whole groups, or everything once finished or the flush time has come."""
        pending, flush = self.pending, self.finished or self.flush_due
        ready = len(pending) if flush else len(pending) - len(pending) % self.options.buffer_size
        batch = pending[:ready]
        del pending[:ready]
        if self.flush_timer is not None and (ready or self.flush_due):
            self.flush_timer.cancel()
            self.flush_timer = None
        self.flush_due = False
        if pending and self.flush_after is not None and self.flush_timer is None:
            self.flush_timer = self.loop.call_later(self.flush_after, self._flush_now)
        return batch

    def stop(self) -> None:
        self.producer.cancel()  # cancels chain.astream: the model stops decoding or its HTTP stream closes
        for timer in (self.watchdog, self.flush_timer):
            if timer is not None:
                timer.cancel()


async def token_events(chain: ChatChain, chain_input: Any, options: StreamOptions,
                       fmt: EventFormat) -> AsyncIterator[bytes]:
    """Encoded SSE events for one generation: start, tokens (grouped by the options), then done or error."""
    event_id = 0
    head = fmt.start(event_id, StartEvent(timestamp=time.time()))
    if head is not None:
        yield head
    generation = _Generation(chain, chain_input, options)
    _live.add(generation)
    buffer_size = options.buffer_size
    sent: list[str] = []
    token_count = 0
    try:
        while not generation.finished or generation.pending:
            await generation.wake.wait()
            generation.wake.clear()
            if generation.interrupted is not None:
                event_id += 1
                yield fmt.error(event_id, generation.interrupted)
                return
            batch = generation.take_ready()
            # The hot path: one encode per event, and one write for all the events that are ready now (a paced
            # model makes that one event; a burst of tokens goes out in one write, each still its own event).
            if buffer_size == 1:
                encoded = [fmt.tokens(event_id + i, text, token_count + i) for i, text in enumerate(batch, 1)]
                event_id += len(batch)
                token_count += len(batch)
            else:
                encoded = []
                for i in range(0, len(batch), buffer_size):
                    group = batch[i:i + buffer_size]
                    event_id += 1
                    token_count += len(group)
                    encoded.append(fmt.tokens(event_id, "".join(group), token_count))
            if encoded:
                yield encoded[0] if len(encoded) == 1 else b"".join(encoded)
            sent += batch
        event_id += 1
        if generation.failure is not None:
            kind, message, _ = describe_failure(generation.failure)
            if kind != "internal_error":  # an internal error has been logged in full already
                log.warning("generation failed: %s", message)
            yield fmt.error(event_id, ErrorEvent(error=message, type=kind))
            return
        duration = time.perf_counter() - generation.started
        yield fmt.done(event_id, DoneEvent(
            full_response="".join(sent), token_count=token_count, duration=duration,
            tokens_per_second=token_count / duration if duration > 0 else 0.0,
            usage=generation.usage, finish_reason=generation.finish_reason,
        ))
    finally:
        # Normal end, timeout, or the client went away (this generator is cancelled or closed).
        generation.stop()


def end_all_streams(reason: ErrorEvent = SHUTDOWN) -> None:
    """Every generation in flight ends now, with `reason` as its terminal event and a clean close of its stream.
    The hosting layer calls it when the server starts shutting down (chains.hosting.http_protocol)."""
    for generation in list(_live):
        generation.interrupt(reason)


class TokenStreamResponse(StreamingResponse):
    """A `text/event-stream` of pre-encoded events that owns its heartbeat and its disconnect watch.

    The heartbeat is a comment sent only when nothing else was sent for `heartbeat_seconds` (one timer per
    stream, nothing per event). The disconnect watch reads the request channel while the events flow, so a
    client that goes away cancels the stream at once, not at the next failed write: the events' generator is
    closed, and with it the generation. Ours rather than sse-starlette's response, whose private lock and state we
    had to override. The content type is exactly `text/event-stream` (SSE is UTF-8 by definition; Starlette would
    append a charset).
    """

    def __init__(self, events: AsyncIterator[bytes], heartbeat_seconds: float) -> None:
        super().__init__(events, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
        self.heartbeat_seconds = heartbeat_seconds
        self.last_sent = 0.0
        self.finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self.last_sent = asyncio.get_running_loop().time()
        tasks = (asyncio.ensure_future(self._send_events(send)), asyncio.ensure_future(self._watch_disconnect(receive)),
                 asyncio.ensure_future(self._heartbeat(send)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # the events' generator has closed after this
        sending = tasks[0]
        if sending in done and not sending.cancelled() and sending.exception() is not None:
            raise sending.exception()  # type: ignore[misc]

    async def _send_events(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        async with aclosing(self.body_iterator) as events:  # type: ignore[type-var]
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
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
