"""What the runs tests share: reading a stream over HTTP and dropping it where a test says, and the counts a
server reports about its runs."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.support.servers import LiveServer
from tests.support.sse import Event, SSEDecoder


def read_events(server: LiveServer, method: str, path: str, stop_after_tokens: int | None = None,
                **kwargs: Any) -> tuple[httpx.Response, list[Event]]:
    """Events as they arrive; with `stop_after_tokens`, the connection is dropped right after that many tokens
    (0: right after the start event). A response other than 200 comes back read, with no events."""
    events: list[Event] = []
    decoder = SSEDecoder()
    with httpx.stream(method, server.url + path, timeout=30, **kwargs) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        for text in response.iter_text():
            for event in decoder.feed(text, time.monotonic()):
                events.append(event)
                if stop_after_tokens is not None and event.event in ("start", "message") and sum(
                        e.event == "message" for e in events) == stop_after_tokens:
                    return response, events  # leaving the block drops the connection here
        events += decoder.end()
    return response, events


def tokens(events: list[Event]) -> list[str]:
    return [e.json()["token"] for e in events if e.event == "message"]


def runs_started(server: LiveServer, **kwargs: Any) -> int:
    """Generations this server (this worker) has started: a resume must not add one."""
    return httpx.get(server.url + "/health", timeout=10, **kwargs).json()["runs"]["started"]
