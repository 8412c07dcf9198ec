"""SIGTERM drains the replica before it exits, whatever its connections.

At the signal, the replica says it is not ready (`/health/ready` 503 `draining`: a load balancer or Kubernetes
stops sending it work) and refuses new work (503 `draining` + `Retry-After`, chains.middleware.draining), while
its live runs go on streaming, connected or not, for up to `DRAIN_SECONDS`. Those still live then end with their
terminal `shutdown` event (written to the run store, so listeners through other replicas are told too). Only then
is uvicorn told to exit (its own shutdown: connections closed, the lifespan's end, the store's last flush). A second
SIGTERM exits at once. uvicorn alone would end the streams only through the connections open at that moment.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from chains.streaming.generation import LiveStreams

log = logging.getLogger(__name__)

POLL = 0.05  # how often the drain looks whether the live runs have ended

SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class Drain:
    """Owns SIGTERM for the app's life (uvicorn's handler is called once the drain is over)."""

    def __init__(self, live: LiveStreams, seconds: float) -> None:
        self.live = live
        self.seconds = seconds
        self.previous: SignalHandler = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None

    def install(self) -> bool:
        """Takes SIGTERM over (only the main thread may; an app served otherwise keeps uvicorn's handling)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self.loop = asyncio.get_running_loop()
        self.previous = signal.signal(signal.SIGTERM, self._on_signal)
        return True

    def uninstall(self) -> None:
        if self.loop is not None and signal.getsignal(signal.SIGTERM) == self._on_signal:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
        self.loop = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.live.draining or self.loop is None:  # the second one: exit now
            self._exit(signum, frame)
            return
        self.live.draining = True  # at once: readiness and the refusals read it
        self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.drain(), name="drain")

    async def drain(self) -> None:
        """Waits for the live runs to end, up to `seconds`; ends the rest; then lets uvicorn exit."""
        live = self.live
        live.draining = True
        began = time.monotonic()
        log.warning("SIGTERM: draining; %d live run(s) may stream for up to %gs", len(live), self.seconds)
        deadline = began + self.seconds
        while len(live) and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        left = len(live)
        if left:
            live.shut_down()  # their terminal event: shutdown
            log.warning("drain: %d run(s) still live after %gs ended with a shutdown event", left, self.seconds)
        log.warning("drain: over after %.1fs; exiting", time.monotonic() - began)
        self._exit(signal.SIGTERM, None)

    def _exit(self, signum: int, frame: FrameType | None) -> None:
        previous = self.previous
        if callable(previous):
            previous(signum, frame)
        else:  # nobody handled it before us: the default, which ends the process
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)


@asynccontextmanager
async def draining(live: LiveStreams, seconds: float) -> AsyncIterator[Drain]:
    """For the app's lifespan: SIGTERM drains while the app runs."""
    drain = Drain(live, seconds)
    drain.install()
    try:
        yield drain
    finally:
        drain.uninstall()
        if drain.task is not None and not drain.task.done():
            drain.task.cancel()
