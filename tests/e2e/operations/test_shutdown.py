"""SIGTERM ends every open stream and the process exits: ours with a terminal event and a clean close, on every
surface (GET and POST /chat, the tutorial's raw variants), on the scripted model and on the embedded one
(a decode in progress, and requests waiting in its queue); LangServe's streams with a clean close. These servers
drain for 0 s (`DRAIN_SECONDS=0`): the streams still live when the drain is over are what is tested here (the
drain itself: tests/e2e/operations/test_probes.py and test_many_replicas.py).

(POST /chat on the scripted model: tests/e2e/operations/test_reliability.py.)"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx

from tests.support.clients import LONG, LONG_LOCAL
from tests.support.fixtures import ServeApp, app_fixture
from tests.support.servers import LiveServer
from tests.support.sse import StreamResult, sse_request

SHUTDOWN = "the server is shutting down; try again"
CONVERSATION = {"messages": [{"role": "user", "content": "hi"}]}

OURS: dict[str, tuple[str, str, Any]] = {  # method, path, body
    "chat-get": ("GET", "/chat?message=hi", None),
    "chat-post": ("POST", "/chat", {"message": "hi", "buffer_size": 2}),
    "chat-token": ("POST", "/chat-token?message=hi", None),
    "chat-conversation": ("POST", "/chat-conversation", CONVERSATION),
    "chat-buffered": ("POST", "/chat-buffered?message=hi&buffer_size=3", None),
    "chat-timeout": ("POST", "/chat-timeout?message=hi&timeout=60", None),
}
RAW = {"chat-token", "chat-conversation", "chat-buffered", "chat-timeout"}
LANGSERVE: dict[str, tuple[str, str, Any]] = {
    "single-turn-stream": ("POST", "/single-turn/stream", {"input": "hi"}),
    "conversation-stream": ("POST", "/conversation/stream", {"input": CONVERSATION}),
    "stream-events": ("POST", "/system-prompt/stream_events", {"input": {"message": "hi"}}),
    "stream-log": ("POST", "/single-turn/stream_log", {"input": "hi"}),
}


def terminate_while_streaming(live: LiveServer, requests: dict[str, tuple[str, str, Any]], streaming: float = 1.0,
                              ) -> tuple[dict[str, StreamResult], float]:
    """Opens every request, sends SIGTERM once they are streaming; returns each result and how long the process
    took to exit after the signal."""
    async def scenario() -> dict[str, StreamResult]:
        tasks = {name: asyncio.create_task(sse_request("127.0.0.1", live.port, method, path, body, timeout=30))
                 for name, (method, path, body) in requests.items()}
        await asyncio.sleep(streaming)
        live.process.send_signal(signal.SIGTERM)
        return {name: await task for name, task in tasks.items()}

    results = asyncio.run(scenario())
    signalled = time.monotonic()
    # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM is its clean exit.
    assert live.process.wait(timeout=20) in (0, -signal.SIGTERM)
    assert "Finished server process" in live.output()
    return results, time.monotonic() - signalled


def assert_ended_with_shutdown(name: str, result: StreamResult) -> None:
    assert result.status == 200 and result.error is None, (name, result.error)  # a clean close, not a cut
    last = result.events[-1]
    assert last.event == "error", (name, last)
    if name in RAW:
        assert last.data == SHUTDOWN, name
    else:  # with what it had sent until then
        sent = [event.json() for event in result.token_events()]
        assert last.json() == {"error": SHUTDOWN, "type": "shutdown",
                               "full_response": "".join(token["token"] for token in sent),
                               "token_count": sent[-1]["token_count"] if sent else 0}, name
    assert not any(e.event == "done" for e in result.events), name


# The teardown's stop only does something if the test failed before its SIGTERM.
long_fake_server = app_fixture(
    "shutdown-surfaces", scope="function", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="1000", FAKE_TOKEN_DELAY_MS="20",
    DRAIN_SECONDS="0", doc="20-second replies: every stream is still open when the signal comes. The test's SIGTERM stops it.")


def test_sigterm_ends_every_surface_of_ours_with_a_terminal_event(long_fake_server: LiveServer) -> None:
    results, exited = terminate_while_streaming(long_fake_server, OURS)
    for name, result in results.items():
        assert len(result.token_events()) > 3, name  # it was streaming
        assert_ended_with_shutdown(name, result)
    assert exited < 5


# On SIGTERM sse-starlette stops LangServe's streams without their last body message; AnswerFailures completes the
# response (before, uvicorn cut the connection: 'ASGI callable returned without completing response').
def test_sigterm_closes_langserve_streams_cleanly(long_fake_server: LiveServer) -> None:
    results, exited = terminate_while_streaming(long_fake_server, LANGSERVE)
    assert exited < 15
    for name, result in results.items():
        assert len(result.token_events()) > 3, name
        assert result.status == 200 and result.error is None, (name, result.error)


def test_sigterm_ends_a_local_decode_and_the_requests_queued_behind_it(serve_app: ServeApp) -> None:
    live = serve_app("shutdown-local", **LONG_LOCAL, DRAIN_SECONDS="0")
    requests = {"decoding": ("POST", "/chat", {"message": LONG}),
                "queued-chat": ("POST", "/chat", {"message": LONG}),
                "queued-chat-token": ("POST", "/chat-token?message=hi", None)}

    async def scenario() -> dict[str, StreamResult]:
        decoding = asyncio.create_task(sse_request("127.0.0.1", live.port, *requests["decoding"], timeout=60))
        async with asyncio.timeout(30):  # the first request holds the model before the others are sent
            while not httpx.get(live.url + "/health").json()["generations"]:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        queued = {name: asyncio.create_task(sse_request("127.0.0.1", live.port, *request, timeout=60))
                  for name, request in requests.items() if name != "decoding"}
        await asyncio.sleep(1.0)
        assert httpx.get(live.url + "/health").json()["generations"] == 3
        live.process.send_signal(signal.SIGTERM)
        return {"decoding": await decoding, **{name: await task for name, task in queued.items()}}

    results = asyncio.run(scenario())
    signalled = time.monotonic()
    assert live.process.wait(timeout=20) in (0, -signal.SIGTERM)
    assert "Finished server process" in live.output()
    assert time.monotonic() - signalled < 10
    assert len(results["decoding"].token_events()) > 3
    assert not results["queued-chat"].token_events()  # it never ran
    for name, result in results.items():
        assert_ended_with_shutdown("chat-token" if name == "queued-chat-token" else name, result)
