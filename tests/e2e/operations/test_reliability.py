"""Upstream faults, retries, cancellation latency, the local queue bound, shutdown and workers.

The upstream is `tests/support/fault_upstream.py`, a real OpenAI-compatible HTTP server on 127.0.0.1 scripted per
request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from chains.models.fake import scripted_tokens
from tests.support.clients import LONG, LONG_LOCAL, read_then_leave
from tests.support.fixtures import ServeApp, app_fixture, pointed_at
from tests.support.servers import LiveServer, running_app
from tests.support.sse import parse_sse, sse_request

SECRET = "sk-test-secret-0123456789"

# Every surface a client can reach the model through: (method, path, request kwargs).
SURFACES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "chat": ("POST", "/chat", {"json": {"message": "hi"}}),
    "chat-get": ("GET", "/chat", {"params": {"message": "hi"}}),
    "chat-token": ("POST", "/chat-token", {"params": {"message": "hi"}}),
    "chat-conversation": ("POST", "/chat-conversation", {"json": {"messages": [{"role": "user", "content": "hi"}]}}),
    "chat-buffered": ("POST", "/chat-buffered", {"params": {"message": "hi", "buffer_size": 3}}),
    "chat-timeout": ("POST", "/chat-timeout", {"params": {"message": "hi", "timeout": 30}}),
    "langserve-stream": ("POST", "/single-turn/stream", {"json": {"input": "hi"}}),
    "langserve-invoke": ("POST", "/single-turn/invoke", {"json": {"input": "hi"}}),
}
RAW = {"chat-token", "chat-conversation", "chat-buffered", "chat-timeout"}
FAKE_REPLY = "".join(scripted_tokens(20))  # the scripted model's reply (FAKE_REPLY_TOKENS' default)

# fault → (script for one request, the error type /chat reports, the status /invoke answers)
FAULTS: dict[str, tuple[list[str], str, int]] = {
    "500": (["500"] * 3, "upstream_error", 502),  # the first try and both retries fail
    "429": (["429"] * 3, "rate_limited", 429),
    "401": (["401"], "upstream_auth", 502),  # not retried
    "hang": (["hang"] * 3, "timeout", 504),
    "stall": (["stall"], "timeout", 504),  # tokens were sent: never retried
    "drop": (["drop"], "upstream_error", 502),
    "malformed": (["malformed"], "upstream_error", 502),
}


@pytest.fixture(scope="module")
def upstream(fault_upstream: LiveServer) -> LiveServer:
    return fault_upstream


server = app_fixture("fault-server", **pointed_at("upstream", "fault", key=SECRET), OPENAI_TIMEOUT="0.5")


def script(upstream: LiveServer, faults: list[str]) -> None:
    httpx.post(upstream.url + "/_script", json={"faults": faults}).raise_for_status()


def upstream_log(upstream: LiveServer) -> list[dict[str, Any]]:
    return httpx.get(upstream.url + "/_log").json()


def call(server: LiveServer, surface: str) -> httpx.Response:
    method, path, kwargs = SURFACES[surface]
    return httpx.request(method, server.url + path, timeout=30, **kwargs)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("surface", SURFACES)
def test_fault_gives_a_clear_terminal_error(upstream: LiveServer, server: LiveServer, fault: str,
                                            surface: str) -> None:
    faults, kind, status = FAULTS[fault]
    script(upstream, faults)
    response = call(server, surface)
    text = response.text
    assert "Traceback" not in text and SECRET not in text and "sk-test" not in text
    if surface == "langserve-invoke":
        assert response.status_code == status
        assert response.json()["type"] == kind
        if kind == "rate_limited":
            assert response.headers["retry-after"] == "1"
        return
    assert response.status_code == 200
    events = parse_sse(text)
    assert events[-1].event == "error", text[-500:]
    assert not any(e.event in ("done", "end") for e in events)
    if surface == "langserve-stream":
        assert events[-1].json()["status_code"] == 500  # LangServe's own error event
    elif surface in RAW:
        assert events[-1].data  # the message, as plain text
    else:
        assert events[-1].json()["type"] == kind
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("transient", ["500", "429"])
def test_transient_failures_before_the_first_token_are_retried(upstream: LiveServer, server: LiveServer,
                                                               transient: str) -> None:
    script(upstream, [transient, "ok"])
    events = parse_sse(call(server, "chat").text)
    assert events[-1].event == "done"
    assert events[-1].json()["full_response"] == "Hello, I am a scripted upstream.\n你好"
    assert [entry["fault"] for entry in upstream_log(upstream)] == [transient, "ok"]


def test_failures_after_tokens_are_never_retried(upstream: LiveServer, server: LiveServer) -> None:
    script(upstream, ["drop", "ok"])
    events = parse_sse(call(server, "chat").text)
    assert [e.event for e in events] == ["start", "message", "message", "message", "error"]
    assert [entry["fault"] for entry in upstream_log(upstream)] == ["drop"]


def process_counts(pid: int) -> tuple[int, int]:
    """Threads and open file descriptors (sockets included) of a process."""
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def test_a_hundred_faulty_requests_leak_nothing(upstream: LiveServer, server: LiveServer) -> None:
    mix = ["500", "500", "500", "401", "drop", "malformed", "429", "429", "429"]
    surfaces = ["chat", "chat-token", "langserve-stream", "langserve-invoke", "chat-conversation"]

    async def faulty_requests(batches: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for batch in range(batches):
                script(upstream, mix * 10)
                calls = []
                for i in range(10):  # ten at a time
                    method, path, kwargs = SURFACES[surfaces[(batch + i) % len(surfaces)]]
                    calls.append(client.request(method, path, **kwargs))
                for response in await asyncio.gather(*calls):
                    assert response.status_code in (200, 429, 502)

    def counts() -> tuple[int, int, int]:
        time.sleep(0.5)  # let closed connections finish closing
        threads, fds = process_counts(server.process.pid)
        return httpx.get(server.url + "/health").json()["tasks"], threads, fds

    # Thread pools (asyncio's default executor, capped at cores + 4) grow to their working size under load and
    # stay there; a leak grows with every request. So: a hundred requests, then a hundred more.
    before = counts()
    asyncio.run(faulty_requests(10))
    first = counts()
    asyncio.run(faulty_requests(10))
    second = counts()
    assert first[0] <= before[0] and second[0] <= before[0], f"asyncio tasks {before[0]} → {first[0]} → {second[0]}"
    assert second[1] <= first[1] + 1, f"threads {before[1]} → {first[1]} → {second[1]}"
    assert second[1] <= before[1] + min(32, (os.cpu_count() or 1) + 4), f"threads {before[1]} → {second[1]}"
    # Pooled keep-alive connections to the upstream come and go (ten requests at a time); a leak would add one
    # socket per faulty request, a hundred per round.
    assert second[2] <= before[2] + 10, f"file descriptors {before[2]} → {first[2]} → {second[2]}"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_disconnect_closes_the_upstream_request_within_200_ms(upstream: LiveServer, server: LiveServer) -> None:
    script(upstream, ["slow"])
    left = read_then_leave(server.url, "/chat", 3, json={"message": "hi"})
    deadline = time.time() + 5
    while (entry := upstream_log(upstream)[0])["closed"] is None and time.time() < deadline:
        time.sleep(0.01)
    assert entry["closed"] is not None, "the upstream stream was never closed"
    print(f"upstream closed {1000 * (entry['closed'] - left):.0f} ms after the client left")
    assert entry["closed"] - left <= 0.2, f"upstream closed {1000 * (entry['closed'] - left):.0f} ms after"
    assert entry["tokens"] < 50


busy_local_server = app_fixture(
    "busy-local-server", **LONG_LOCAL, LOCAL_QUEUE_SIZE="0",
    doc="The embedded model with long replies and no wait queue: one generation at a time, nobody waiting.")


def test_disconnect_stops_local_decoding_within_200_ms(busy_local_server: LiveServer) -> None:
    with httpx.Client(base_url=busy_local_server.url) as health:  # one kept-alive connection: cheap polls
        assert health.get("/health").json()["generations"] == 0
        left = read_then_leave(busy_local_server.url, "/chat", 3, json={"message": LONG})
        while True:
            asked = time.time()  # the poll that first sees no generation bounds when decoding stopped
            if not health.get("/health").json()["generations"] or asked - left > 5:
                break
            time.sleep(0.002)
    stopped = asked - left
    print(f"local decoding stopped {1000 * stopped:.0f} ms after the client left")
    assert stopped <= 0.2, f"decoding went on {1000 * stopped:.0f} ms after the client left"


def test_requests_beyond_the_local_queue_get_503(busy_local_server: LiveServer) -> None:
    url = busy_local_server.url
    with httpx.stream("POST", url + "/chat", json={"message": LONG}, timeout=30) as running:
        lines = running.iter_lines()  # kept: dropping the iterator would close the response
        for line in lines:
            if line.startswith("data: {\"token\""):
                break  # the model is now busy, and the queue (size 0) is full
        for method, path, kwargs in (SURFACES["chat"], SURFACES["chat-token"], SURFACES["langserve-invoke"],
                                     SURFACES["langserve-stream"]):
            refused = httpx.request(method, url + path, timeout=10, **kwargs)
            assert refused.status_code == 503, path
            assert refused.headers["retry-after"] == "1"
            assert refused.json() == {"error": "the local model is busy: its wait queue is full", "type": "overloaded"}
    deadline = time.time() + 5
    while httpx.get(url + "/health").json()["generations"] and time.time() < deadline:
        time.sleep(0.01)
    served = httpx.post(url + "/chat", json={"message": "Say hi.", "timeout": 10}, timeout=30)
    assert parse_sse(served.text)[-1].event in ("done", "error")
    assert served.status_code == 200


def test_sigterm_ends_open_streams_with_a_terminal_event_and_exits(serve_app: ServeApp) -> None:
    live = serve_app("shutdown-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="1000", FAKE_TOKEN_DELAY_MS="20",
                     DRAIN_SECONDS="0")  # the streams still live when the drain is over
    host, port = "127.0.0.1", int(live.url.rsplit(":", 1)[1])

    async def scenario() -> list[Any]:
        streams = [asyncio.create_task(sse_request(host, port, "POST", "/chat", {"message": f"hi {i}"}, timeout=20))
                   for i in range(5)]
        await asyncio.sleep(1.0)  # all five are streaming now
        live.process.send_signal(signal.SIGTERM)
        return await asyncio.gather(*streams)

    started = time.monotonic()
    results = asyncio.run(scenario())
    for result in results:
        assert result.error is None, result.error  # a clean close, not a cut connection
        assert result.events[-1].event == "error"
        sent = [event.json()["token"] for event in result.token_events()]
        assert result.events[-1].json() == {"error": "the server is shutting down; try again", "type": "shutdown",
                                            "full_response": "".join(sent), "token_count": len(sent)}
    # uvicorn shuts down gracefully, then re-raises the signal: exit status -SIGTERM is its clean exit.
    assert live.process.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Finished server process" in live.output()
    assert time.monotonic() - started < 15


def check_body(surface: str, response: httpx.Response) -> None:
    """What each surface answers on the scripted model (20 tokens): its whole reply, not only a 200."""
    assert response.status_code == 200, (surface, response.text)
    if surface == "langserve-invoke":
        assert response.json()["output"] == FAKE_REPLY
        return
    events = parse_sse(response.text)
    if surface.startswith("langserve"):
        assert [e.event for e in events][0] == "metadata" and events[-1].event == "end"
        assert "".join(e.json() for e in events if e.event == "data") == FAKE_REPLY
    elif surface in RAW:  # the raw encoding: a line break in a token is a new data line, CR included
        assert events[-1].event == "done" and events[-1].data == "Completed"
        assert "".join(e.data for e in events if e.event == "message") == FAKE_REPLY.replace("\r\n", "\n")
    else:
        assert "".join(e.json()["token"] for e in events if e.event == "message") == FAKE_REPLY
        assert events[-1].event == "done" and events[-1].json()["full_response"] == FAKE_REPLY


def test_two_workers_serve_every_route(serve_app: ServeApp) -> None:
    live = serve_app("two-workers", workers=2, CHAT_PROVIDER="fake")
    answered_by: dict[int, int] = {}
    for _ in range(40):  # a new connection each time: the kernel hands them to either worker
        pid = httpx.get(live.url + "/health", timeout=10).json()["pid"]
        answered_by[pid] = answered_by.get(pid, 0) + 1
        if len(answered_by) == 2:
            break
    for _ in range(3):
        for surface in SURFACES:
            check_body(surface, call(live, surface))
    conversation = httpx.post(live.url + "/chat", timeout=30, json={"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"}]})
    check_body("chat", conversation)
    children = subprocess.run(["pgrep", "-P", str(live.process.pid)], capture_output=True, text=True).stdout
    workers = [int(pid) for pid in children.split()
               if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    assert len(workers) == 2
    assert set(answered_by) == set(workers), f"requests answered by {answered_by}, workers {workers}"


def test_the_listen_queue_holds_a_burst_of_4096_connections() -> None:
    """A burst of clients waits in the kernel's accept queue while a busy worker streams: the launcher asks for
    4,096 places (uvicorn's default, 2,048, left 48 at 2,000 connections), as many as the kernel allows."""
    from chains.hosting.launcher import BACKLOG

    with running_app("backlog") as server:
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True,
                                   check=True).stdout.split()
    allowed = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert BACKLOG == 4096 and int(listening[2]) == min(BACKLOG, allowed)  # LISTEN: Send-Q is the backlog
