"""chains.hosting.http_protocol's Utf8RequestLineProtocol in-process: uvicorn's httptools protocol with a fake
transport, fed bytes through `data_received` as the event loop would, and the ASGI app it serves recording what it
got. What the subclass adds: raw UTF-8 request lines, the head and body limits, the connection limits (in all and
by address), the protocol mark in the scope, and the end of the live streams at shutdown. No socket, no server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from chains.api.chat.protocol import JsonEvents
from chains.common.scope import PROTOCOL_MARK
from chains.hosting import http_protocol
from chains.hosting.http_protocol import (
    DEFAULT_LIMITS,
    LIMITS_STATE,
    LIVE_STREAMS_STATE,
    ConnectionLimits,
    Utf8RequestLineProtocol,
    connections_by_address,
)
from chains.models.fake import ScriptedChatModel
from chains.runnables.chat import single_turn_chain
from chains.streaming.generation import LiveStreams, StreamOptions, generate
from chains.streaming.run import Listener, Run, new_run_id
from tests.support.sse import parse_sse

SECONDS = 2  # no step of a test waits longer


class Transport(asyncio.Transport):
    """The socket's side, in memory: what the protocol wrote, whether it ended its side and closed."""

    def __init__(self, address: str = "10.0.0.1") -> None:
        super().__init__()
        self.address = address
        self.written = b""
        self.eof = False
        self.closed = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self.address, 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    @property
    def status(self) -> int | None:
        return int(self.written.split(b" ", 2)[1]) if self.written.startswith(b"HTTP/1.1 ") else None

    @property
    def headers(self) -> dict[str, str]:
        head = self.written.split(b"\r\n\r\n", 1)[0].decode()
        return {name.lower(): value for name, value in (line.split(": ", 1) for line in head.split("\r\n")[1:])}

    def json(self) -> Any:
        return json.loads(self.written.split(b"\r\n\r\n", 1)[1])


class App:
    """The app behind the protocol: reads the whole body, then answers 200 with it. Records each scope and body."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], bytes]] = []
        self.disconnected = False

    async def answering(self, scope: dict[str, Any]) -> None:
        """Before it answers, once it has read the body."""

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await self.answering(scope)
        self.requests.append((scope, body))
        answer = b"ok:" + body
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})


class HeldApp(App):
    """Answers a request to a path starting with /held only once `release` is set: until then it is in
    progress."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def answering(self, scope: dict[str, Any]) -> None:
        if scope["path"].startswith("/held"):
            await self.release.wait()


def connect(app: App, app_state: dict[str, Any] | None = None, server_state: ServerState | None = None,
            protocol: type[HttpToolsProtocol] = Utf8RequestLineProtocol,
            address: str = "10.0.0.1") -> tuple[HttpToolsProtocol, Transport]:
    config = Config(app=app, lifespan="off", proxy_headers=False, log_config=None, access_log=False)
    config.load()
    connection = protocol(config, server_state or ServerState(), app_state or {}, _loop=asyncio.get_running_loop())
    transport = Transport(address)
    connection.connection_made(transport)
    return connection, transport


def limits(**given: Any) -> dict[str, Any]:
    return {LIMITS_STATE: ConnectionLimits(**given)}


async def until(condition: Callable[[], bool], seconds: float = SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def answered(transport: Transport) -> Callable[[], bool]:
    return lambda: transport.status is not None and (transport.closed or transport.eof or b"ok:" in transport.written)


# --- raw UTF-8 in the request line -----------------------------------------------------------------------------

CURL = "POST /chat-token?message=讲个笑话 HTTP/1.1\r\nHost: x\r\nX-Note: 你好\r\nContent-Length: 6\r\n\r\n你好".encode()


async def test_raw_utf8_in_the_request_line_is_percent_encoded_as_a_browser_would_send_it() -> None:
    app = App()
    connection, transport = connect(app)
    connection.data_received(CURL)
    await until(answered(transport))
    assert transport.status == 200
    [(scope, body)] = app.requests
    assert scope["path"] == "/chat-token"
    assert scope["query_string"] == b"message=" + quote("讲个笑话").encode()
    assert dict(scope["headers"])[b"x-note"] == "你好".encode()  # headers and bodies untouched
    assert body == "你好".encode()


async def test_uvicorns_own_protocol_refuses_the_same_bytes_and_ours_still_refuses_garbage() -> None:
    app = App()
    _, plain = connect(app, protocol=HttpToolsProtocol)
    _.data_received(CURL)
    assert plain.status == 400 and plain.closed  # what the subclass is for
    connection, transport = connect(app)
    connection.data_received(b"\x00\x01 not http at all\r\n\r\n")
    assert transport.status == 400 and b"Invalid HTTP request received." in transport.written and transport.closed
    assert app.requests == []


async def test_each_request_of_a_kept_alive_connection_may_have_a_raw_utf8_line() -> None:
    app = App()
    connection, transport = connect(app)
    for word in ("你好", "世界"):
        answers = transport.written.count(b"ok:")
        connection.data_received(f"GET /chat?message={word} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await until(lambda answers=answers: transport.written.count(b"ok:") > answers)
    assert [scope["query_string"] for scope, _ in app.requests] == [
        b"message=" + quote(word).encode() for word in ("你好", "世界")]
    assert not transport.closed


async def test_every_request_it_parses_carries_the_protocol_mark() -> None:
    app = App()
    connection, transport = connect(app)
    connection.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(answered(transport))
    assert app.requests[0][0]["extensions"][PROTOCOL_MARK] == {}  # RequestLimits tells it is behind the protocol


# --- the head: its size and its time ---------------------------------------------------------------------------

def refused(transport: Transport, status: int, kind: str) -> dict[str, Any]:
    """The protocol's refusal: the app's error shape, the connection closing after it."""
    assert transport.status == status, transport.written
    headers = transport.headers
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert int(headers["content-length"]) == len(transport.written.split(b"\r\n\r\n", 1)[1])
    body = transport.json()
    assert set(body) == {"error", "type"} and body["type"] == kind
    assert transport.eof  # a lingering close: our side ended, the client's bytes still read and dropped
    return body


async def test_a_head_larger_than_max_header_bytes_in_one_read_gets_431() -> None:
    app = App()
    connection, transport = connect(app, limits(max_header_bytes=200))
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300 + b"\r\n\r\n")
    body = refused(transport, 431, "headers_too_large")
    assert body["error"] == "the request line and headers are larger than MAX_HEADER_BYTES=200"
    await asyncio.sleep(0.01)
    assert app.requests == []


async def test_a_head_that_never_ends_is_cut_off_once_it_passes_the_cap() -> None:
    app = App()
    connection, transport = connect(app, limits(max_header_bytes=200))
    connection.data_received(b"GET / HTTP/1.1\r\n")
    sent = 0
    while transport.status is None and sent < 20:
        connection.data_received(b"X-Pad: " + b"a" * 41 + b"\r\n")  # 50 bytes a read, the head never complete
        sent += 1
    refused(transport, 431, "headers_too_large")
    assert sent * 50 <= 200 + 50  # at most one read over the cap
    assert app.requests == []


async def test_a_head_slower_than_header_timeout_gets_408() -> None:
    app = App()
    connection, transport = connect(app, limits(header_timeout=0.05))
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    await until(lambda: transport.status is not None)
    assert refused(transport, 408, "header_timeout")["error"] == (
        "the request line and headers took longer than HEADER_TIMEOUT=0.05s")


async def test_a_connection_that_sends_nothing_is_closed_without_a_word() -> None:
    _, transport = connect(App(), limits(header_timeout=0.05))
    await until(lambda: transport.closed)
    assert transport.written == b""


async def test_a_head_within_the_limits_is_served_and_its_timer_no_longer_runs() -> None:
    app = App()
    connection, transport = connect(app, limits(max_header_bytes=200, header_timeout=0.05))
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(answered(transport))
    await asyncio.sleep(0.1)  # past the header timeout: nothing more is written
    assert transport.status == 200 and transport.written.endswith(b"ok:") and not transport.closed


# --- the body: its deadline and its rate -----------------------------------------------------------------------

BODY_HEAD = b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"


async def test_a_body_past_body_timeout_gets_408_and_the_app_sees_the_client_gone() -> None:
    app = App()
    connection, transport = connect(app, limits(body_timeout=0.1, min_body_rate=0))
    connection.data_received(BODY_HEAD + b"ab")  # 2 of 10 bytes, then nothing
    await until(lambda: transport.status is not None)
    assert refused(transport, 408, "body_timeout")["error"] == "the body took longer than BODY_TIMEOUT=0.1s"
    await until(lambda: app.disconnected)
    assert app.requests == []


async def test_a_body_slower_than_min_body_rate_gets_408() -> None:
    app = App()
    connection, transport = connect(app, limits(body_timeout=0.1, min_body_rate=1000))
    connection.data_received(BODY_HEAD + b"ab")
    await until(lambda: transport.status is not None)
    message = refused(transport, 408, "body_too_slow")["error"]
    assert message.startswith("the body arrived at ") and message.endswith(" bytes/s, slower than MIN_BODY_RATE=1000")


async def test_a_body_that_arrives_in_time_is_served_and_not_policed_afterwards() -> None:
    app = App()
    connection, transport = connect(app, limits(body_timeout=0.1, min_body_rate=1000))
    connection.data_received(BODY_HEAD + b"ab")
    connection.data_received(b"cdefghij")
    await until(answered(transport))
    await asyncio.sleep(0.15)  # past the body's deadline
    assert transport.status == 200 and transport.written.endswith(b"ok:abcdefghij") and not transport.closed
    assert app.requests[0][1] == b"abcdefghij"


async def test_after_a_refusal_what_still_comes_is_dropped_then_the_connection_closes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol, "LINGER_SECONDS", 0.02)
    app = App()
    connection, transport = connect(app, limits(header_timeout=0.02))
    connection.data_received(b"GET / HTTP/1.1\r\n")
    await until(lambda: transport.status is not None)
    written = transport.written
    connection.data_received(b"Host: x\r\n\r\nGET /again HTTP/1.1\r\n\r\n")  # not parsed, not answered
    assert transport.written == written and transport.eof and not transport.closed
    await until(lambda: transport.closed)
    assert app.requests == []


# --- the connections -------------------------------------------------------------------------------------------

GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
HELD = b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n"


def closed_unanswered(transport: Transport) -> bool:
    return transport.closed and transport.written == b"" and not transport.eof


async def test_a_request_beyond_max_connections_with_none_idle_gets_503_with_retry_after() -> None:
    app, server, state = HeldApp(), ServerState(), limits(max_connections=1)
    first, first_transport = connect(app, state, server, address="10.0.0.1")
    first.data_received(HELD)  # in progress: not closed to make room
    await asyncio.sleep(0.01)
    second, second_transport = connect(app, state, server, address="10.0.0.2")
    assert not first_transport.closed and not second_transport.closed  # nothing idle: it is told when it asks
    second.data_received(GET)
    body = refused(second_transport, 503, "too_many_connections")
    assert body["error"] == "the server has MAX_CONNECTIONS=1 connections open; try again"
    assert second_transport.headers["retry-after"] == "1"
    second.connection_lost(None)
    app.release.set()  # the one within the limit is served
    await until(answered(first_transport))
    assert first_transport.status == 200 and not first_transport.closed and len(app.requests) == 1


async def test_beyond_max_connections_the_address_holding_the_most_closes_its_longest_idle() -> None:
    app, server, state = App(), ServerState(), limits(max_connections=4, max_connections_per_address=0)
    x1, x2, x3, y1 = (connect(app, state, server, address=a)[1] for a in ["10.0.0.1"] * 3 + ["10.0.0.2"])
    assert not any(t.closed for t in (x1, x2, x3, y1))  # 0: no cap by address
    newcomer, z1 = connect(app, state, server, address="10.0.0.3")
    assert closed_unanswered(x1) and not any(t.closed for t in (x2, x3, y1, z1))
    newcomer.data_received(GET)  # it fits: served
    await until(answered(z1))
    assert z1.status == 200


async def test_a_request_beyond_max_connections_closes_a_connection_idle_since_it_came() -> None:
    app, server, state = HeldApp(), ServerState(), limits(max_connections=1)
    first, first_transport = connect(app, state, server, address="10.0.0.1")
    first.data_received(HELD)
    await asyncio.sleep(0.01)
    second, second_transport = connect(app, state, server, address="10.0.0.2")
    app.release.set()  # the first is answered, and kept alive: idle now
    await until(answered(first_transport))
    second.data_received(GET)
    await until(answered(second_transport))
    assert second_transport.status == 200 and first_transport.closed  # the 503 is the last resort


async def test_a_connection_beyond_the_cap_of_its_address_closes_its_address_connection_idle_the_longest() -> None:
    app, server, state = App(), ServerState(), limits(max_connections_per_address=2)
    first, first_transport = connect(app, state, server)
    _, second_transport = connect(app, state, server)
    first.data_received(GET)  # answered and kept alive: idle since its answer, after the second came
    await until(answered(first_transport))
    _, other_address = connect(app, state, server, address="10.0.0.2")
    _, other_server = connect(app, state, ServerState())  # another server counts its own
    assert not any(t.closed for t in (first_transport, second_transport, other_address, other_server))
    third, third_transport = connect(app, state, server)
    assert closed_unanswered(second_transport)
    assert not any(t.closed for t in (first_transport, third_transport, other_address, other_server))
    third.data_received(GET)
    await until(answered(third_transport))
    assert third_transport.status == 200


async def test_a_connection_still_sending_its_head_is_idle_and_one_with_a_request_in_progress_is_not() -> None:
    app, server, state = HeldApp(), ServerState(), limits(max_connections_per_address=2)
    streaming, streaming_transport = connect(app, state, server)
    streaming.data_received(HELD)  # the oldest, but in progress
    await asyncio.sleep(0.01)
    slow, slow_transport = connect(app, state, server)
    slow.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # its head not complete
    newcomer, newcomer_transport = connect(app, state, server)
    assert closed_unanswered(slow_transport) and not streaming_transport.closed and not newcomer_transport.closed
    newcomer.data_received(HELD)
    await asyncio.sleep(0.01)
    _, another_transport = connect(app, state, server)  # none idle but itself: it is closed
    assert closed_unanswered(another_transport) and not newcomer_transport.closed
    app.release.set()
    await until(lambda: answered(streaming_transport)() and answered(newcomer_transport)())
    assert streaming_transport.status == newcomer_transport.status == 200 and not streaming_transport.closed


async def test_pipelined_requests_keep_a_connection_in_progress_until_the_last_is_answered() -> None:
    app, server, state = HeldApp(), ServerState(), limits(max_connections_per_address=1)
    pipelined, transport = connect(app, state, server)
    pipelined.data_received(GET + HELD)  # the first answered at once, the second held
    await until(lambda: transport.written.count(b"HTTP/1.1 200") == 1)
    _, newcomer = connect(app, state, server)
    assert closed_unanswered(newcomer) and not transport.closed
    app.release.set()
    await until(lambda: transport.written.count(b"HTTP/1.1 200") == 2)
    _, later = connect(app, state, server)  # now it is idle: it makes room
    assert transport.closed and not later.closed


async def test_the_connections_by_address_empty_as_the_connections_close() -> None:
    app, server = HeldApp(), ServerState()
    state = limits(max_connections=6, max_connections_per_address=3)
    connections = [connect(app, state, server, address="10.0.0.1")]
    connections[0][0].data_received(HELD)  # in progress, then answered
    connections.append(connect(app, state, server, address="10.0.0.2"))
    connections[1][0].data_received(b"GET / HTTP/1.1\r\n")  # a head arriving, then closed to make room
    connections += [connect(app, state, server, address=f"10.0.0.{i % 3 + 1}") for i in range(2, 10)]
    connections.append(connect(App(), server_state=server, address="10.0.0.9"))  # the default limits
    await asyncio.sleep(0.01)
    registry = connections_by_address(server)
    assert registry.open == 7 and sum(len(peer) for peer in registry.peers.values()) == 7
    assert sum(transport.closed for _, transport in connections) == 4 and connections[1][1].closed
    app.release.set()
    await until(answered(connections[0][1]))
    for connection, _ in connections:
        connection.connection_lost(None)
    assert registry.open == 0 and registry.peers == {}
    assert connections_by_address(server) is registry  # one for the server's life


async def test_a_flood_of_closed_connections_is_logged_in_one_line_an_interval(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol, "CLOSED_LOG_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger=http_protocol.log.name)
    app, server, state = App(), ServerState(), limits(max_connections_per_address=1)
    for _ in range(50):
        connect(app, state, server)
    lines = lambda: [r.getMessage() for r in caplog.records if "closed unanswered" in r.getMessage()]  # noqa: E731
    assert len(lines()) == 1  # the first at once, the 48 after it at the interval's end
    await until(lambda: len(lines()) == 2)
    assert lines() == [
        "connections closed unanswered (MAX_CONNECTIONS_PER_ADDRESS=1, MAX_CONNECTIONS=2048): 1 idle ones of an "
        "address over its cap; the last from 10.0.0.1",
        "connections closed unanswered (MAX_CONNECTIONS_PER_ADDRESS=1, MAX_CONNECTIONS=2048): 48 idle ones of an "
        "address over its cap; the last from 10.0.0.1"]


async def test_an_app_that_yields_no_limits_gets_the_defaults() -> None:
    connection, _ = connect(App())
    assert connection.limits is DEFAULT_LIMITS  # type: ignore[attr-defined]
    configured = ConnectionLimits(max_connections=7)
    connection, _ = connect(App(), {LIMITS_STATE: configured})
    assert connection.limits is configured  # type: ignore[attr-defined]


# --- shutdown --------------------------------------------------------------------------------------------------

async def test_shutdown_ends_every_live_stream_with_its_terminal_event_and_closes_idle_connections() -> None:
    live = LiveStreams()
    run = Run(new_run_id(), None, "continue", 10_000)
    listener = Listener(run)
    generate(run, single_turn_chain(ScriptedChatModel(reply_tokens=10_000, token_delay_ms=5)), "hi",
             StreamOptions(), JsonEvents(), live=live)
    connections = [connect(App(), {LIVE_STREAMS_STATE: live}) for _ in range(2)]
    await until(lambda: run.next_seq > 2)
    for connection, _ in connections:
        connection.shutdown()  # uvicorn tells every connection; the streams end once
    await until(lambda: run.finished)
    events = parse_sse(b"".join([chunk async for chunk in listener]).decode())
    assert events[-1].event == "error"
    sent = [event.json()["token"] for event in events if event.event == "message"]
    # What it had sent until then comes with it.
    assert events[-1].json() == {"error": "the server is shutting down; try again", "type": "shutdown",
                                 "full_response": "".join(sent), "token_count": len(sent)}
    assert [e.event for e in events].count("error") == 1 and live.shutting_down and len(live) == 0
    assert all(transport.closed for _, transport in connections)  # no request in flight: closed at once
    _, transport = plain = connect(App())  # an app that yields no live streams: the connection just closes
    plain[0].shutdown()
    assert transport.closed
