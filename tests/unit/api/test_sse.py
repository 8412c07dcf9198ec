"""chains.api.sse's TokenStreamResponse in-process: a run's events as a `text/event-stream`, a heartbeat only after
a silence, the events' iterator closed as soon as the client leaves (so the run's disconnect policy can act), and a
failure of the events raised to the middleware that answers it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from chains.api.sse import HEARTBEAT, TokenStreamResponse
from tests.support.asgi import Client, call, scope


class Events:
    """Pre-encoded events, `gap` seconds apart, that record whether they were closed."""

    def __init__(self, count: int, gap: float = 0.0, fail: bool = False) -> None:
        self.count, self.gap, self.fail = count, gap, fail
        self.closed = False
        self._stream = self._events()

    async def _events(self) -> AsyncIterator[bytes]:
        for n in range(self.count):
            if n:
                await asyncio.sleep(self.gap)
            yield b"data: %d\n\n" % n
        if self.fail:
            raise RuntimeError("the run broke")

    def __aiter__(self) -> Events:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._stream)

    async def aclose(self) -> None:
        self.closed = True
        await self._stream.aclose()


async def test_the_events_in_order_then_the_end_with_the_streams_headers() -> None:
    events = Events(3)
    answer = await call(TokenStreamResponse(events, heartbeat_seconds=60, run_id="r" * 22), scope(), Client())
    assert answer.status == 200 and answer.complete
    assert answer.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    headers = answer.headers
    assert headers["content-type"] == "text/event-stream"  # exactly: no charset
    assert (headers["cache-control"], headers["x-accel-buffering"], headers["x-run-id"]) == ("no-cache", "no",
                                                                                             "r" * 22)
    assert events.closed
    assert "x-run-id" not in (await call(TokenStreamResponse(Events(1), 60), scope(), Client())).headers


async def test_a_heartbeat_comes_only_after_a_silence_of_heartbeat_seconds() -> None:
    quiet = await call(TokenStreamResponse(Events(2, gap=0.25), heartbeat_seconds=0.1), scope(), Client())
    body = quiet.body
    assert body.startswith(b"data: 0\n\n" + HEARTBEAT) and body.endswith(HEARTBEAT + b"data: 1\n\n")
    assert 1 <= body.count(HEARTBEAT) <= 3
    busy = await call(TokenStreamResponse(Events(10, gap=0.03), heartbeat_seconds=0.1), scope(), Client())
    assert HEARTBEAT not in busy.body  # 0.27 s of events never 0.1 s apart: no heartbeat


async def test_a_client_that_leaves_ends_the_stream_at_once_and_closes_the_events() -> None:
    events, client = Events(1000, gap=0.05), Client()
    stream = asyncio.create_task(call(TokenStreamResponse(events, heartbeat_seconds=60), scope(), client))
    await asyncio.sleep(0.08)
    client.leave.set()
    answer = await asyncio.wait_for(stream, 1)  # not 50 s: the disconnect is noticed while the events flow
    assert events.closed and 1 <= answer.body.count(b"data:") < 10
    assert not answer.complete  # nobody to end it for


async def test_a_failure_of_the_events_is_raised_after_what_was_sent() -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="the run broke"):
        await TokenStreamResponse(Events(2, fail=True), 60)(scope(), Client().receive, send)
    assert [m.get("body") for m in sent[1:]] == [b"data: 0\n\n", b"data: 1\n\n"]
