"""uvicorn's httptools protocol, accepting raw UTF-8 in the request line as curl sends it, and bounding what a
connection may cost before the app sees a request.

The tutorial's commands (`curl -X POST "http://localhost:8000/chat-token?message=讲个笑话"`) put raw UTF-8
bytes in the URL; curl sends them unencoded, and both of uvicorn's parsers reject them ("Invalid HTTP request
received"). Before the parser sees a new request, this percent-encodes the bytes >= 0x80 of its request line,
which is what a browser would have sent. Headers and bodies are untouched.

Limits (uvicorn's httptools protocol has none of them; the settings are in chains/common/settings.py):
- MAX_HEADER_BYTES: the request line and headers together; beyond, 431 and the connection is closed (without a
  cap, a never-ending header is buffered in full: 400 connections × 4 MB took the server to 1.9 GB).
- HEADER_TIMEOUT: from the connection's opening (or, on a kept-alive one, a request's first byte) to the end of
  the headers; beyond, 408 — or just closed, if not a byte came (slowloris: connections that never finish).
- BODY_TIMEOUT and MIN_BODY_RATE: the body must arrive within BODY_TIMEOUT, and at MIN_BODY_RATE bytes/s on
  average once it has had min(5 s, BODY_TIMEOUT); beyond, 408. Time the app is not reading (flow control) and
  time after it has answered do not count against the client.
- MAX_CONNECTIONS_PER_ADDRESS and MAX_CONNECTIONS: open connections in this worker from one peer address, and in
  all. A new connection beyond either makes room by closing an idle one (no request in progress: nothing sent yet,
  a head still arriving, or kept alive between requests), the one idle the longest of its own address — or, at
  MAX_CONNECTIONS, of the address holding the most. A new one whose address is at its cap with none idle is
  closed at once, without a word (it has asked nothing yet). Beyond MAX_CONNECTIONS with nothing idle, a request
  arriving gets 503 + Retry-After. (2,100 silent sockets from one address, reconnecting as HEADER_TIMEOUT closed
  them, held a worker at MAX_CONNECTIONS and another client's /health at 503.)

It also tells the streaming core when the server starts shutting down, so that every open stream ends with a
terminal event and a clean close (uvicorn calls `shutdown()` on each connection after SIGTERM).

Its limits and the streams to end come from the app, not from module state: uvicorn hands every connection the
state that the app's lifespan yields (`app_state`), and server.py's lifespan yields the `ConnectionLimits` built
from its settings and its `LiveStreams` under the keys below. An app that yields neither gets the defaults. The
open connections by address are uvicorn's per server too (`ConnectionsByAddress`, on its `ServerState`).

The launcher (chains.hosting.launcher, `make run`) serves the app with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from chains.common.errors import RETRY_AFTER_SECONDS, ErrorType, error_body
from chains.common.scope import PROTOCOL_MARK
from chains.streaming.generation import LiveStreams

log = logging.getLogger(__name__)

_NON_ASCII = re.compile(rb"[\x80-\xff]")
BODY_RATE_GRACE_SECONDS = 5.0
LINGER_SECONDS = 1.0  # after a refusal, how long what the client still sends is read and dropped
CLOSED_LOG_SECONDS = 10.0  # connections closed to make room: one log line at most this often (floods are large)


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 65_536
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    min_body_rate: int = 1024
    max_connections: int = 2048
    max_connections_per_address: int = 256  # 0: no limit


# The keys of the lifespan state this protocol reads (server.py's lifespan yields them).
LIMITS_STATE = "chains.connection_limits"
LIVE_STREAMS_STATE = "chains.live_streams"
DEFAULT_LIMITS = ConnectionLimits()


def _percent_encode(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


class _Refused(Exception):
    """Raised from a parser callback to stop parsing: the response has been written, the connection closes."""


# --- open connections by peer address ----------------------------------------------------------------------------

class _Peer:
    """The open connections of one peer address: the idle ones in the order they became idle (the one idle the
    longest first), and those with a request in progress."""

    __slots__ = ("address", "busy", "idle")

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.idle: dict[Utf8RequestLineProtocol, None] = {}  # a dict for its order: O(1) to add, move, remove
        self.busy: set[Utf8RequestLineProtocol] = set()

    def __len__(self) -> int:
        return len(self.idle) + len(self.busy)

    def longest_idle(self, sparing: Utf8RequestLineProtocol) -> Utf8RequestLineProtocol | None:
        """The connection idle the longest, other than `sparing` and those already closing. Usually the first
        looked at; the ones passed over are closing and leave at their `connection_lost`."""
        for connection in self.idle:
            if connection is not sparing and not connection.transport.is_closing():
                return connection
        return None


class ConnectionsByAddress:
    """One server's open connections by peer address (the socket's: at connection time no header has come), and
    which of them are idle, for MAX_CONNECTIONS_PER_ADDRESS and for making room at MAX_CONNECTIONS. O(1) a
    connection, a request and a close; a scan only when a limit is passed (over the addresses, at
    MAX_CONNECTIONS)."""

    def __init__(self) -> None:
        self.peers: dict[str | None, _Peer] = {}
        self.open = 0
        self._closed: dict[str, int] = {}  # which ones → how many closed since the last log line
        self._closed_from: str | None = None  # the address of the last one closed
        self._next_log_at = 0.0
        self._log_timer: asyncio.TimerHandle | None = None

    def admit(self, connection: Utf8RequestLineProtocol, address: str | None) -> None:
        """Counts a new connection (idle: it has sent nothing) and, past a limit, closes the idle connection
        that makes room for it, or closes it."""
        peer = self.peers.get(address)
        if peer is None:
            peer = self.peers[address] = _Peer(address)
        peer.idle[connection] = None
        connection.peer = peer
        self.open += 1
        limits = connection.limits
        cap = limits.max_connections_per_address
        # A connection without a peer address (a Unix socket) comes from a proxy: no cap of its own.
        if cap and address is not None and len(peer) > cap:
            victim = peer.longest_idle(sparing=connection)
            if victim is None:  # all its others have a request in progress: the newcomer has asked nothing yet
                self._close(connection, "new ones of an address at its cap with none idle")
                return
            self._close(victim, "idle ones of an address over its cap")
        if self.open > limits.max_connections:
            self.make_room(connection)  # if nothing is idle, a request on the newcomer gets the 503

    def make_room(self, connection: Utf8RequestLineProtocol) -> bool:
        """Beyond MAX_CONNECTIONS: closes the connection idle the longest of the address holding the most
        connections (that has one idle), other than `connection`. False if none is idle."""
        largest: _Peer | None = None
        for peer in self.peers.values():
            if (largest is None or len(peer) > len(largest)) and peer.longest_idle(connection) is not None:
                largest = peer
        victim = None if largest is None else largest.longest_idle(connection)
        if victim is None:
            return False
        self._close(victim, "idle ones of the address holding the most, at MAX_CONNECTIONS")
        return True

    def busy(self, connection: Utf8RequestLineProtocol) -> None:
        """A request is in progress on `connection` (its head is complete): it is not closed to make room."""
        peer = connection.peer
        if peer is not None and connection in peer.idle:
            del peer.idle[connection]
            peer.busy.add(connection)

    def idle(self, connection: Utf8RequestLineProtocol) -> None:
        """`connection` has answered all it was asked: kept alive, it waits for the next request."""
        peer = connection.peer
        if peer is not None and connection in peer.busy:
            peer.busy.discard(connection)
            peer.idle[connection] = None  # the last in the order: idle the shortest

    def remove(self, connection: Utf8RequestLineProtocol) -> None:
        peer, connection.peer = connection.peer, None
        if peer is None:
            return  # removed already (closed to make room, or upgraded to a WebSocket)
        if peer.idle.pop(connection, peer) is peer:  # it was not idle
            peer.busy.discard(connection)
        self.open -= 1
        if not peer:
            del self.peers[peer.address]

    def _close(self, connection: Utf8RequestLineProtocol, which: str) -> None:
        if connection.peer is not None:
            self._closed_from = connection.peer.address
        self.remove(connection)  # now, not at its connection_lost: the next newcomer must not count or pick it
        connection.close_unanswered()
        self._closed[which] = self._closed.get(which, 0) + 1
        loop, limits = connection.loop, connection.limits
        if loop.time() >= self._next_log_at:
            self._log_closed(loop, limits)
        elif self._log_timer is None:  # what the rest of this interval closes is said at its end
            self._log_timer = loop.call_at(self._next_log_at, self._log_closed, loop, limits)

    def _log_closed(self, loop: asyncio.AbstractEventLoop, limits: ConnectionLimits) -> None:
        """One line for all the connections closed since the last: a flood closes thousands."""
        self._log_timer = None
        if self._closed:
            log.info("connections closed unanswered (MAX_CONNECTIONS_PER_ADDRESS=%d, MAX_CONNECTIONS=%d): %s; the "
                     "last from %s", limits.max_connections_per_address, limits.max_connections,
                     "; ".join(f"{count} {which}" for which, count in self._closed.items()), self._closed_from)
            self._closed.clear()
        self._next_log_at = loop.time() + CLOSED_LOG_SECONDS


# On uvicorn's ServerState, the state it shares among exactly one server's connections, next to the `connections`
# MAX_CONNECTIONS counts. Not in app_state: uvicorn copies that into every request's scope["state"], and it is
# whatever the app's lifespan yielded (a fresh dict a connection, with no lifespan).
_BY_ADDRESS_ATTRIBUTE = "chains_connections_by_address"


def connections_by_address(server_state: ServerState) -> ConnectionsByAddress:
    """The server's open connections by address, made with its first connection."""
    registry = getattr(server_state, _BY_ADDRESS_ATTRIBUTE, None)
    if not isinstance(registry, ConnectionsByAddress):
        registry = ConnectionsByAddress()
        setattr(server_state, _BY_ADDRESS_ATTRIBUTE, registry)
    return registry


class Utf8RequestLineProtocol(HttpToolsProtocol):
    _at_request_start = True
    peer: _Peer | None = None  # its address's connections, while it counts among them

    # uvicorn's own override narrows asyncio's BaseTransport to Transport, as this does: mypy flags both.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.limits: ConnectionLimits = self.app_state.get(LIMITS_STATE, DEFAULT_LIMITS)
        self._refused = False
        self._reading_head = True  # until the headers of the current request are complete
        self._head_bytes = 0
        self._head_events = 0
        self._body_bytes = 0
        self._body_started = 0.0
        self._body_paused_for = 0.0  # seconds the app was not reading (not the client's fault)
        self._body_paused_since: float | None = None
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(self.limits.header_timeout,
                                                                             self._head_timed_out)
        self._body_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._by_address = connections_by_address(self.server_state)
        self._by_address.admit(self, self.client[0] if self.client else None)

    def close_unanswered(self) -> None:
        """Closes the connection, idle, to make room for another (or, new, because there is none to make)."""
        self._refused = True
        self._cancel_timers()
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._by_address.remove(self)
        self._cancel_timers()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    # -- reading ------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: whatever else arrives is not parsed
        if self._at_request_start:
            line_end = data.find(b"\n")
            request_line = data if line_end < 0 else data[:line_end]
            if not request_line.isascii():
                data = _NON_ASCII.sub(_percent_encode, request_line) + data[len(request_line):]
        self._unset_keepalive_if_required()
        head_events = self._head_events
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refused):
                self._invalid_request()
            return
        except httptools.HttpParserError:
            self._invalid_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._cancel_timers()
                self._by_address.remove(self)  # the WebSocket protocol takes the transport, and its connection_lost
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # A chunk that was head from end to end counts whole. One in which a head began counts from the next chunk
        # (its head bytes cannot be told from the previous request's body): at most one read over the cap.
        if self._reading_head and head_events == self._head_events:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse_head_too_large()

    def _invalid_request(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def on_message_begin(self) -> None:
        self._at_request_start = False
        self._reading_head = True
        self._head_bytes = 0
        self._head_events += 1
        if self._head_timer is None:  # a later request on a kept-alive connection: its head gets the same time
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
        super().on_message_begin()
        self.scope["extensions"] = {PROTOCOL_MARK: {}}

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_events += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        # The parser hands over the head in pieces; counted whole here, a head that came in one read is capped too.
        head = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head > self.limits.max_header_bytes:
            self._refuse_head_too_large()
            raise _Refused
        # Nothing was idle to make room for it when it came; if something is now, it makes room, else 503.
        if self._by_address.open > self.limits.max_connections and not self._by_address.make_room(self):
            self._refuse(503, "too_many_connections", f"the server has MAX_CONNECTIONS={self.limits.max_connections} "
                         "connections open; try again", retry_after=True)
            raise _Refused
        super().on_headers_complete()
        if self.cycle is None or self.cycle.scope is not self.scope:
            return  # a WebSocket upgrade
        self._by_address.busy(self)
        if self._expects_body():
            self._body_bytes = 0
            self._body_started = self.loop.time()
            self._body_paused_for, self._body_paused_since = 0.0, None
            self._arm_body_timer(min(BODY_RATE_GRACE_SECONDS, self.limits.body_timeout))

    def _expects_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"", b"0")
            if name == b"transfer-encoding":
                return True
        return False

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._at_request_start = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle.response_complete:  # and no pipelined request behind it (`cycle` is the last one parsed)
            self._by_address.idle(self)

    # -- limits -------------------------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self._refused or self.transport.is_closing():
            return
        if self._head_events == 0:  # not a byte since it opened (a browser's preconnect, or an idle attacker)
            self._refused = True
            self.transport.close()
            return
        self._refuse(408, "header_timeout", f"the request line and headers took longer than "
                     f"HEADER_TIMEOUT={self.limits.header_timeout:g}s")

    def _refuse_head_too_large(self) -> None:
        self._refuse(431, "headers_too_large", "the request line and headers are larger than "
                     f"MAX_HEADER_BYTES={self.limits.max_header_bytes}")

    def _arm_body_timer(self, delay: float) -> None:
        self._body_timer = self.loop.call_later(max(delay, 0.05), self._check_body)

    def _check_body(self) -> None:
        """Runs while a body is arriving: every second after the grace period, and at the deadline."""
        self._body_timer = None
        cycle = self.cycle
        if self._refused or cycle is None or cycle.response_started or cycle.disconnected or not cycle.more_body:
            return  # the app has answered, the client left, or the body is complete: not ours to police
        now = self.loop.time()
        if self.flow.read_paused:  # the app is not reading: time stops for the client
            if self._body_paused_since is None:
                self._body_paused_since = now
            self._arm_body_timer(1.0)
            return
        if self._body_paused_since is not None:
            self._body_paused_for += now - self._body_paused_since
            self._body_paused_since = None
        elapsed = now - self._body_started - self._body_paused_for
        if self.limits.min_body_rate and self._body_bytes < self.limits.min_body_rate * elapsed:
            self._refuse(408, "body_too_slow", f"the body arrived at {self._body_bytes / elapsed:.0f} bytes/s, "
                         f"slower than MIN_BODY_RATE={self.limits.min_body_rate}")
        elif elapsed >= self.limits.body_timeout:
            self._refuse(408, "body_timeout", f"the body took longer than BODY_TIMEOUT={self.limits.body_timeout:g}s")
        else:
            self._arm_body_timer(min(1.0, self.limits.body_timeout - elapsed))

    def shutdown(self) -> None:
        # The server is shutting down (SIGTERM): every open stream ends now with its terminal event (once: every
        # connection is told), before uvicorn waits for the connections to finish.
        live: LiveStreams | None = self.app_state.get(LIVE_STREAMS_STATE)
        if live is not None:
            live.shut_down()
        super().shutdown()

    def _refuse(self, status: int, kind: ErrorType, message: str, retry_after: bool = False) -> None:
        """Answers with a JSON error in the app's `{error, type}` shape and closes the connection. Only called
        while no response has started on it."""
        self._refused = True
        self._cancel_timers()
        body = json.dumps(error_body(kind, message)).encode()
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason.get(status, b"Error")),
                b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n"]
        if retry_after:
            head.append(b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS)
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        log.info("refused a request with %d: %s", status, message)
        # A response still going out on this connection (a pipelined request behind it) is not interleaved with.
        answering = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if not self.transport.is_closing():
            if answering or not self.transport.can_write_eof():
                self.transport.close()
            else:
                # A lingering close: closing with the client's bytes unread would send a reset, which can destroy
                # the answer before the client reads it. So: answer, end our side, discard what still comes
                # (data_received ignores it) for LINGER_SECONDS, then close.
                self.transport.write(b"".join(head) + b"\r\n" + body)
                self.transport.write_eof()
                self.flow.resume_reading()
                self._linger = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        if self.cycle is not None and not self.cycle.response_complete:
            # The app may be waiting for the rest of the body: it now sees the client as gone.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
