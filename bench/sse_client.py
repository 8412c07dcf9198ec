"""A light SSE load client on raw asyncio sockets: one connection per stream, no HTTP library per stream.

It records when each event's last byte arrived, so benchmarks can measure inter-token gaps and tests can check
every event of a thousand concurrent streams.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None
    at: float  # time.perf_counter() when its last byte arrived

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class StreamResult:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[SSEEvent] = field(default_factory=list)
    started: float = 0.0
    error: str | None = None
    body: bytes = b""  # only for non-SSE responses

    def data_events(self) -> list[SSEEvent]:
        return [e for e in self.events if e.event == "message"]

    def token_events(self) -> list[SSEEvent]:
        """Token events: ours and the tutorial's are unnamed (`message`), LangServe's are `event: data`."""
        return [e for e in self.events if e.event in ("message", "data")]

    def gaps(self) -> list[float]:
        """Seconds between consecutive token events."""
        times = [e.at for e in self.token_events()]
        return [b - a for a, b in zip(times, times[1:])]


def _parse_event(block: bytes, at: float) -> SSEEvent | None:
    event, data, event_id = "message", [], None
    for line in block.decode("utf-8").split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
    if not data and event == "message":
        return None  # a heartbeat comment
    return SSEEvent(event, "\n".join(data), event_id, at)


class _Chunked:
    """Incremental decoder for `Transfer-Encoding: chunked`."""

    def __init__(self) -> None:
        self.buffer = b""
        self.remaining = 0  # bytes left in the current chunk, then its CRLF
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while not self.done:
            if self.remaining:
                take = self.buffer[:self.remaining]
                out += take
                self.buffer = self.buffer[len(take):]
                self.remaining -= len(take)
                if self.remaining:
                    break
                continue
            if self.buffer.startswith(b"\r\n"):
                self.buffer = self.buffer[2:]
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self.buffer[:line_end].split(b";")[0], 16)
            self.buffer = self.buffer[line_end + 2:]
            if size == 0:
                self.done = True
                break
            self.remaining = size
        return bytes(out)


def _light_event(block: bytes, at: float) -> SSEEvent | None:
    """Only whether a block is a token event, and when it came: for thousands of streams, no decoding."""
    if block.startswith(b":"):
        return None
    named = b"\nevent: " in block or block.startswith(b"event: ")
    if not named or b"event: data" in block:
        return SSEEvent("message", "", None, at)
    return SSEEvent("other", "", None, at)


async def sse_request(host: str, port: int, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None, timeout: float = 60.0,
                      light: bool = False) -> StreamResult:
    """One request; reads the whole response (SSE events timestamped as they arrive). `light`: token events
    are only told apart and timed, not parsed (a load client for many streams)."""
    parse = _light_event if light else _parse_event
    result = StreamResult(started=time.perf_counter())
    payload = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "Accept: text/event-stream"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            raw = b""
            while b"\r\n\r\n" not in raw:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed before headers")
                raw += data
            header_block, rest = raw.split(b"\r\n\r\n", 1)
            status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
            result.status = int(status_line.split()[1])
            result.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            chunked = result.headers.get("transfer-encoding") == "chunked"
            decoder = _Chunked() if chunked else None
            is_sse = result.headers.get("content-type", "").startswith("text/event-stream")
            pending = b""
            data = rest
            while True:
                now = time.perf_counter()
                decoded = decoder.feed(data) if decoder else data
                if is_sse:
                    pending = (pending + decoded).replace(b"\r\n", b"\n")  # sse-starlette's default is CRLF
                    while b"\n\n" in pending:
                        block, pending = pending.split(b"\n\n", 1)
                        event = parse(block, now)
                        if event is not None:
                            result.events.append(event)
                else:
                    result.body += decoded
                if decoder and decoder.done:
                    break
                data = await reader.read(65536)
                if not data:
                    if decoder:
                        raise ConnectionError("connection closed before the end of the response")
                    break
    except (OSError, TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
    return result
