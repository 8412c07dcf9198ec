"""Many concurrent streams (scripted model): nothing lost, duplicated or reordered, no failures.

Bounded: 1,000 `/chat` streams and 200 `RemoteRunnable` streams of 20 tokens, loopback only, 120 s at most.
"""

from __future__ import annotations

import asyncio

import pytest
from langserve import RemoteRunnable

from chains.models.fake import scripted_tokens
from tests.support.fixtures import app_fixture
from tests.support.servers import LiveServer
from tests.support.sse import run_positions, sse_request

pytestmark = pytest.mark.load
TOKENS = scripted_tokens(20)


paced_server = app_fixture("load-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20", FAKE_TOKEN_DELAY_MS="50",
                           MAX_STREAMS_PER_CLIENT="0", MAX_LIVE_RUNS_PER_ADDRESS="0",
                           MAX_CONNECTIONS_PER_ADDRESS="0")  # every stream comes from 127.0.0.1


def test_a_thousand_concurrent_chat_streams(paced_server: LiveServer) -> None:
    host, port = "127.0.0.1", int(paced_server.url.rsplit(":", 1)[1])

    async def run() -> list:
        async with asyncio.timeout(120):
            return await asyncio.gather(*(
                sse_request(host, port, "POST", "/chat", {"message": f"stream {i}"}, timeout=100)
                for i in range(1000)))

    results = asyncio.run(run())
    failures = [r.error or r.status for r in results if r.error or r.status != 200]
    assert failures == []
    for result in results:
        kinds = [e.event for e in result.events]
        assert kinds == ["start"] + ["message"] * 20 + ["done"]
        tokens = [e.json()["token"] for e in result.data_events()]
        assert tokens == TOKENS  # in order, none lost or doubled
        assert "".join(tokens) == result.events[-1].json()["full_response"]
        assert run_positions([e.id for e in result.events])[1] == list(range(22))


def test_two_hundred_concurrent_remote_runnable_streams(paced_server: LiveServer) -> None:
    remote = RemoteRunnable(f"{paced_server.url}/conversation/", timeout=100)

    async def one(i: int) -> list[str]:
        return [chunk async for chunk in remote.astream({"messages": [{"role": "user", "content": f"hi {i}"}]})]

    async def run() -> list:
        async with asyncio.timeout(120):
            return await asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True)

    results = asyncio.run(run())
    assert [r for r in results if isinstance(r, BaseException)] == []
    for chunks in results:
        assert "".join(chunks) == "".join(TOKENS)
        assert [c for c in chunks if c] == TOKENS
