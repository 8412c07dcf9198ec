"""uvicorn's httptools protocol, accepting raw UTF-8 in the request line as curl sends it, and bounding what a
connection may cost before the app sees a request.

The tutorial's commands (`curl -X POST "http://localhost:8000/chat-token?message=讲个笑话"`) put raw UTF-8
bytes in the URL; curl sends them unencoded, and both of uvicorn's parsers reject them ("Invalid HTTP request
received"). Before the parser sees a new request, this percent-encodes the bytes >= 0x80 of its request line,
which is what a browser would have sent. Headers and bodies are untouched.

Limits (uvicorn's httptools protocol has none of them; the settings are in chains/settings.py):
- MAX_HEADER_BYTES: the request line and headers together; beyond, 431 and the connection is closed (without a
  cap, a never-ending header is buffered in full: 400 connections × 4 MB took the server to 1.9 GB).
- HEADER_TIMEOUT: from the connection's opening (or, on a kept-alive one, a request's first byte) to the end of
  the headers; beyond, 408 — or just closed, if not a byte came (slowloris: connections that never finish).
- BODY_TIMEOUT and MIN_BODY_RATE: the body must arrive within BODY_TIMEOUT, and at MIN_BODY_RATE bytes/s on
  average once it has had min(5 s, BODY_TIMEOUT); beyond, 408. Time the app is not reading (flow control) and
  time after it has answered do not count against the client.
- MAX_CONNECTIONS: open connections in this worker; a request arriving on one beyond gets 503 + Retry-After.

It also tells the streaming core when the server starts shutting down, so that every open stream ends with a
terminal event and a clean close (uvicorn calls `shutdown()` on each connection after SIGTERM).

Its limits and the streams to end come from the app, not from module state: uvicorn hands every connection the
state that the app's lifespan yields (`app_state`), and server.py's lifespan yields the `ConnectionLimits` built
from its settings and its `LiveStreams` under the keys below. An app that yields neither gets the defaults.

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

from chains.common.errors import RETRY_AFTER_SECONDS, ErrorType, error_body
from chains.common.scope import PROTOCOL_MARK
from chains.streaming.generation import LiveStreams

log = logging.getLogger(__name__)

_NON_ASCII = re.compile(rb"[\x80-\xff]")
BODY_RATE_GRACE_SECONDS = 5.0
LINGER_SECONDS = 1.0  # after a refusal, how long what the client still sends is read and dropped


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


class Utf8RequestLineProtocol(HttpToolsProtocol):
    _at_request_start = True

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

    def connection_lost(self, exc: Exception | None) -> None:
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
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too_many_connections", f"the server has MAX_CONNECTIONS={self.limits.max_connections} "
                         "connections open; try again", retry_after=True)
            raise _Refused
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope and self._expects_body():
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
