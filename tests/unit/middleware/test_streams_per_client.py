"""chains.middleware.streams_per_client: at most MAX_STREAMS_PER_CLIENT streams in flight per address."""

from __future__ import annotations

import asyncio

import pytest

from chains.common.scope import MODEL_RUNS
from chains.middleware.streams_per_client import StreamsPerClient
from tests.support.asgi import Inner, call, scope


async def test_at_most_limit_model_runs_in_flight_per_client_address() -> None:
    hold = asyncio.Event()
    middleware = StreamsPerClient(Inner(hold), limit=2)
    running = [asyncio.create_task(call(middleware, scope(client="10.0.0.1"))) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert middleware.in_flight == {"10.0.0.1": 2}
    third = await call(middleware, scope(path="/chat-token", client="10.0.0.1"))
    assert third.status == 429 and third.headers["retry-after"] == "1"
    assert third.json() == {"error": "more than MAX_STREAMS_PER_CLIENT=2 requests in flight from this client",
                            "type": "too_many_streams"}
    other = asyncio.create_task(call(middleware, scope(client="10.0.0.2")))  # another address has its own count
    not_a_model_run = await call(StreamsPerClient(Inner(), limit=2), scope(method="GET", path="/health"))
    assert not_a_model_run.status == 200
    hold.set()
    assert [answer.status for answer in await asyncio.gather(*running, other)] == [200, 200, 200]
    assert middleware.in_flight == {}  # nothing kept for addresses that have nothing in flight
    assert (await call(middleware, scope(client="10.0.0.1"))).status == 200


async def test_a_batch_counts_as_many_runs_as_it_has_inputs() -> None:
    middleware = StreamsPerClient(Inner(), limit=2)
    refused = await call(middleware, scope(path="/single-turn/batch", **{MODEL_RUNS: 3}))
    assert refused.status == 429 and refused.json()["error"].startswith("a batch of 3 inputs counts as 3 requests: ")
    assert (await call(middleware, scope(path="/single-turn/batch", **{MODEL_RUNS: 2}))).status == 200


async def test_a_run_that_fails_is_no_longer_counted() -> None:
    async def failing(request, receive, send):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    middleware = StreamsPerClient(failing, limit=1)
    with pytest.raises(RuntimeError):
        await call(middleware, scope())
    assert middleware.in_flight == {}


async def test_preflights_are_not_counted() -> None:
    hold = asyncio.Event()
    middleware = StreamsPerClient(Inner(hold), limit=1)
    running = asyncio.create_task(call(middleware, scope()))
    await asyncio.sleep(0.01)
    assert (await call(StreamsPerClient(Inner(), limit=0), scope(method="OPTIONS"))).status == 200
    hold.set()
    await running


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/chat"), ("POST", "/chat"), ("POST", "/chat-buffered"), ("POST", "/v1/chat/completions"),
    ("POST", "/conversation/stream"), ("GET", "/chat/runs/AAAAAAAAAAAAAAAAAAAAAA/stream")])
async def test_every_route_that_holds_a_stream_counts(method: str, path: str) -> None:
    """GET /chat (the tutorial's EventSource route) and a run's join count like POST /chat: a cap skipped for
    any of them is a way around it."""
    hold = asyncio.Event()
    middleware = StreamsPerClient(Inner(hold), limit=1)
    first = asyncio.create_task(call(middleware, scope(method=method, path=path)))
    await asyncio.sleep(0.01)
    second = await call(middleware, scope(method=method, path=path))
    body = second.json()
    assert second.status == 429 and (body.get("type") or body["error"]["code"]) == "too_many_streams"  # /v1: OpenAI's
    hold.set()
    assert (await first).status == 200


async def test_a_stream_is_no_longer_counted_once_its_last_message_is_sent() -> None:
    # A client that has its whole reply may ask again at once: the response's end releases its place, not the app's
    # return a few steps later (OpenAI's SDK asks again as soon as it read `[DONE]`).
    finishing = asyncio.Event()

    async def stream_then_linger(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})  # type: ignore[operator]
        await finishing.wait()  # the app's own clean-up, after the client has everything

    middleware = StreamsPerClient(stream_then_linger, limit=1)
    first = asyncio.create_task(call(middleware, scope(client="10.0.0.1")))
    for _ in range(100):
        if "10.0.0.1" not in middleware.in_flight and not first.done():
            break
        await asyncio.sleep(0.001)
    assert middleware.in_flight == {} and not first.done()
    again = asyncio.create_task(call(middleware, scope(client="10.0.0.1")))
    await asyncio.sleep(0.01)
    finishing.set()
    assert [answer.status for answer in await asyncio.gather(first, again)] == [200, 200]
    assert middleware.in_flight == {}
