"""One run: a generation's events kept as encoded bytes, and the listeners that follow them.

The generation (chains.streaming.generation) appends each event once, already encoded; every listener — the request that
started the run, a browser that reconnected with `Last-Event-ID`, a page that was reloaded — reads the same bytes
from its own position and then waits for more. A listener never drives the generation: when the last one leaves,
the run's disconnect policy decides (`cancel` at once, `continue` to the end, or wait some seconds for a rejoin).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable
from typing import Literal, Protocol

from chains.streaming.events import ErrorEvent

OnDisconnect = Literal["cancel", "continue"] | float
RunStatus = Literal["running", "completed", "cancelled", "failed"]
# Why a run was cancelled: a cancel request, or its last listener left (the disconnect policy).
CancelReason = Literal["cancelled", "disconnect"]

# 16 random bytes, URL-safe base64: 22 characters, 128 bits.
_RUN_ID = r"[A-Za-z0-9_-]{22}"
RUN_ID_PATTERN = re.compile(_RUN_ID)
EVENT_ID_PATTERN = re.compile(rf"({_RUN_ID}):(\d{{1,9}})")


def new_run_id() -> str:
    return secrets.token_urlsafe(16)


class InvalidEventId(ValueError):
    """A `Last-Event-ID` that names no event of the run: malformed, another run's, or beyond its events."""


def parse_event_id(value: str) -> tuple[str, int]:
    """`<run id>:<seq>` → (run id, seq)."""
    match = EVENT_ID_PATTERN.fullmatch(value.strip())
    if match is None:
        raise InvalidEventId(f"Last-Event-ID {value[:80]!r} is not an event id of this server (<run id>:<number>)")
    return match[1], int(match[2])


class Reader(Protocol):
    """A listener as its run counts it: connected now, at `position` (the seq of the next event it needs); a run
    keeps what a reader has not read yet. A `Listener` here, or a listener on another replica
    (chains.streaming.redis_mirror.RemoteReader)."""

    @property
    def position(self) -> int: ...


class Stoppable(Protocol):
    """What a run needs of its generation: ways to stop it early, as cancelled or with a terminal error."""

    def cancel(self, reason: CancelReason = "cancelled") -> bool: ...

    def interrupt(self, reason: ErrorEvent) -> None: ...


class Run:
    """The events of one generation, in order; `seq` n is the n-th event (0: the start)."""

    __slots__ = (
        "_grace",
        "_max_events",
        "_on_end",
        "_waiters",
        "address",
        "created",
        "encoding",
        "ended",
        "events",
        "first_seq",
        "generation",
        "id",
        "mirror",
        "on_disconnect",
        "owner",
        "prefix",
        "readers",
        "reason",
        "status",
    )

    def __init__(self, run_id: str, owner: str | None, on_disconnect: OnDisconnect, max_events: int,
                 on_end: Callable[[Run], None] | None = None, address: str | None = None,
                 encoding: str = "") -> None:
        self.id = run_id
        self.encoding = encoding  # its EventFormat's name: how another process ends it if this one is lost
        self.owner = owner  # the API key's fingerprint when keys are set: only that key sees the run
        self.address = address  # the client address that started it: its live runs count against that address
        self.prefix = run_id.encode() + b":"
        self.events: list[bytes] = []
        self.first_seq = 0  # seq of events[0]: a run longer than max_events keeps its newest ones
        self.status: RunStatus = "running"
        self.reason: str | None = None  # a failed run's error type (timeout, shutdown, replica_lost, …)
        self.created = time.time()
        self.ended: float | None = None
        self.readers: list[Reader] = []  # the listeners connected now
        self.on_disconnect = on_disconnect
        self.generation: Stoppable | None = None  # set when it generates in this process
        # The store's write-behind (Redis): called after each append and at the end; None in memory.
        self.mirror: Callable[[Run], None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._grace: asyncio.TimerHandle | None = None
        self._max_events = max_events
        self._on_end = on_end

    # -- the generation's side -----------------------------------------------------------------------------

    def event_id(self, seq: int) -> bytes:
        return b"%b%d" % (self.prefix, seq)

    @property
    def next_seq(self) -> int:
        return self.first_seq + len(self.events)

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def append(self, event: bytes) -> None:
        events = self.events
        events.append(event)
        if len(events) > self._max_events:
            self._forget_oldest()
        if self._waiters:
            self._wake()
        if self.mirror is not None:
            self.mirror(self)

    def finish(self, terminal: bytes, status: RunStatus, reason: str | None = None) -> None:
        """The last event; listeners get it and end."""
        if self.finished:
            return
        self.status = status  # before the append, so that a listener woken by it sees the end
        self.reason = reason
        self.ended = time.time()
        self.append(terminal)
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.generation = None
        if self._on_end is not None:
            self._on_end(self)

    def _forget_oldest(self) -> None:
        # Keep the newest half (a block at a time keeps appending amortized O(1)), but never what a listener
        # connected now has not read yet: a slow reader holds its events (a run's length is bounded by
        # MAX_TOKENS anyway).
        drop = len(self.events) - self._max_events // 2
        for reader in self.readers:
            drop = min(drop, reader.position - self.first_seq)
        if drop > 0:
            del self.events[:drop]
            self.first_seq += drop

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def cancel(self, reason: CancelReason = "cancelled") -> bool:
        """Stop the generation; its terminal event (status cancelled) reaches every listener. False if the run has
        ended already or does not generate in this process."""
        return not self.finished and self.generation is not None and self.generation.cancel(reason)

    # -- the listeners' side -------------------------------------------------------------------------------

    async def changed(self) -> None:
        """Returns after the next append."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    @property
    def listeners(self) -> int:
        return len(self.readers)

    def joined(self, reader: Reader) -> None:
        self.readers.append(reader)
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def left(self, reader: Reader) -> None:
        self.readers.remove(reader)
        if len(self.events) > self._max_events:  # what this reader held back
            self._forget_oldest()
        if self.readers or self.finished:
            return
        policy = self.on_disconnect
        if policy == "cancel":
            self.cancel("disconnect")
        elif policy != "continue":
            self._grace = asyncio.get_running_loop().call_later(float(policy), self._grace_over)

    def _grace_over(self) -> None:
        self._grace = None
        if not self.listeners:
            self.cancel("disconnect")


class Listener:
    """Follows a run from after `seq` (-1: from its start): what was kept, then live events until the terminal one.
    Each step returns everything new in one piece (one write)."""

    __slots__ = ("closed", "position", "run")

    def __init__(self, run: Run, after: int = -1) -> None:
        self.run = run
        self.position = after + 1  # the seq of the next event to send
        self.closed = False
        run.joined(self)

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> bytes:
        run = self.run
        while not self.closed:
            start = max(self.position - run.first_seq, 0)
            events = run.events
            if start < len(events):
                self.position = run.first_seq + len(events)
                return events[start] if start == len(events) - 1 else b"".join(events[start:])
            if run.finished:
                break
            await run.changed()
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.run.left(self)
