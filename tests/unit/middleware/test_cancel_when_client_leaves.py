"""chains.middleware.cancel_when_client_leaves: LangServe's /invoke and /batch are cancelled when their client
goes away, not run to the end for nobody."""

from __future__ import annotations

import asyncio

import pytest

from chains.middleware.cancel_when_client_leaves import CancelWhenClientLeaves
from tests.support.asgi import Client, Inner, call, scope


class Slow:
    """An /invoke that takes `seconds` to answer, and records whether it was cancelled."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.cancelled, self.received = seconds, False, []

    async def __call__(self, request, receive, send):  # type: ignore[no-untyped-def]
        self.received.append(await receive())
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"answer"})


async def test_an_invoke_whose_client_leaves_is_cancelled_at_once() -> None:
    route, client = Slow(30), Client(b'{"input": "hi"}')
    task = asyncio.create_task(call(CancelWhenClientLeaves(route), scope(path="/single-turn/invoke"), client))
    await asyncio.sleep(0.05)
    client.leave.set()
    answer = await asyncio.wait_for(task, 1)  # not 30 s, and no exception
    assert route.cancelled and answer.messages == []
    assert route.received == [{"type": "http.request", "body": b'{"input": "hi"}', "more_body": False}]


async def test_an_invoke_that_answers_is_not_disturbed() -> None:
    route = Slow(0.01)
    answer = await call(CancelWhenClientLeaves(route), scope(path="/single-turn/batch/"), Client(b"{}"))
    assert answer.body == b"answer" and not route.cancelled


async def test_the_route_sees_the_disconnect_on_its_own_channel() -> None:
    seen = []

    async def route(request, receive, send):  # type: ignore[no-untyped-def]
        seen.append(await receive())
        seen.append(await receive())  # waits: no more body can come, only the client leaving
        await asyncio.sleep(10)

    client = Client(b"{}")
    task = asyncio.create_task(call(CancelWhenClientLeaves(route), scope(path="/x/invoke"), client))
    await asyncio.sleep(0.02)
    assert len(seen) == 1
    client.leave.set()
    await asyncio.wait_for(task, 1)
    assert seen[1] == {"type": "http.disconnect"}


async def test_a_client_gone_before_its_body_runs_nothing() -> None:
    route, client = Slow(0), Client()
    client.chunks = []
    client.leave.set()
    answer = await call(CancelWhenClientLeaves(route), scope(path="/single-turn/invoke"), client)
    assert route.received == [] and answer.messages == []


async def test_cancelling_the_middleware_itself_propagates() -> None:
    route, client = Slow(30), Client(b"{}")
    task = asyncio.create_task(CancelWhenClientLeaves(route)(scope(path="/x/invoke"), client.receive,
                                                             lambda message: asyncio.sleep(0)))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert route.cancelled


@pytest.mark.parametrize(("method", "path"), [("POST", "/single-turn/stream"), ("POST", "/chat"),
                                              ("GET", "/single-turn/invoke")])
async def test_other_requests_pass_through(method: str, path: str) -> None:
    inner = Inner()
    answer = await call(CancelWhenClientLeaves(inner), scope(method=method, path=path), Client(b"{}"))
    assert answer.status == 200 and inner.called
