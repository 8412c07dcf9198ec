"""The one Server-Sent Events parser of the tests and the bench, strict to the HTML spec's rules (CR, LF or CRLF
ends a line; a blank line ends an event), and the raw-socket client built on it.

- `parse_sse(text)`: every event of a complete stream (the tests, on a response's text).
- `SSEDecoder`: the same parser fed piece by piece, each event stamped with when its last byte arrived.
- `sse_request(...)`: one request on a raw asyncio socket, its SSE events timestamped as they arrive (the bench's
  load client, and the tests that open hundreds of streams at once). No HTTP library per stream.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None
    comments: list[str] = field(default_factory=list)  # comment lines within this event's block
    at: float = 0.0  # time.perf_counter() when its last byte arrived (live reads only)

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Incremental: `feed` text as it arrives, get the events it completes. A block with an `event:` field but no
    data (LangServe's `event: end`) is an event too, unlike in a browser; a comment-only block (a heartbeat) is
    not. A last event without its blank line is incomplete and dropped, as the spec says.

    `light`: events are told apart by name only and their data is not kept (thousands of streams at once)."""

    def __init__(self, light: bool = False) -> None:
        self.light = light
        self._tail = ""  # an unfinished line (or a CR that may be the first half of a CRLF)
        self._reset()

    def _reset(self) -> None:
        self._event, self._named = "message", False
        self._id: str | None = None
        self._data: list[str] = []
        self._comments: list[str] = []

    def feed(self, text: str, at: float = 0.0) -> list[Event]:
        text = self._tail + text
        lines = _LINE_END.split(text)
        self._tail = lines.pop()  # what follows the last line end: not a line yet
        if self._tail == "" and text.endswith("\r"):
            self._tail = lines.pop() + "\r"  # that CR may be half of a CRLF: the next piece decides
        return self._lines(lines, at)

    def end(self, at: float = 0.0) -> list[Event]:
        """The stream has ended: a pending CR ends its line; an event without its blank line is dropped."""
        tail, self._tail = self._tail, ""
        return self._lines([tail[:-1]], at) if tail.endswith("\r") else []

    def _lines(self, lines: list[str], at: float) -> list[Event]:
        events: list[Event] = []
        for line in lines:
            if not line:  # a blank line dispatches the event, if it has data or a name
                if self._data or self._named:
                    events.append(Event(self._event, "" if self.light else "\n".join(self._data), self._id,
                                        self._comments, at))
                self._reset()
            elif line[0] == ":":
                self._comments.append(line[1:])
            else:
                name, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event, self._named = value, True
                elif name == "id" and "\x00" not in value:
                    self._id = value
        return events


def run_positions(ids: list[str | None]) -> tuple[str, list[int]]:
    """Event ids `<run id>:<seq>` → the one run they all name, and their positions (fails on another form)."""
    runs: set[str] = set()
    positions: list[int] = []
    for event_id in ids:
        run, _, seq = (event_id or "").rpartition(":")
        assert run and seq.isdigit(), f"event id {event_id!r} is not <run id>:<seq>"
        runs.add(run)
        positions.append(int(seq))
    assert len(runs) == 1, f"ids from several runs: {sorted(runs)}"
    return runs.pop(), positions


def data_of(encoded: bytes) -> list[str]:
    """The `data:` of each SSE event in `encoded`; each event must be exactly one data line."""
    events = encoded.decode().split("\n\n")
    assert events[-1] == ""
    for event in events[:-1]:
        assert event.startswith("data: ") and "\n" not in event and "\r" not in event, event
    return [event.removeprefix("data: ") for event in events[:-1]]


def parse_sse(text: str) -> list[Event]:
    """Every event of a complete stream, in order."""
    decoder = SSEDecoder()
    return decoder.feed(text) + decoder.end()


# --- the raw-socket client -------------------------------------------------------------------------------------

@dataclass
class StreamResult:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    started: float = 0.0
    error: str | None = None
    body: bytes = b""  # only for non-SSE responses

    def data_events(self) -> list[Event]:
        return [e for e in self.events if e.event == "message"]

    def token_events(self) -> list[Event]:
        """Token events: ours and the tutorial's are unnamed (`message`), LangServe's are `event: data`."""
        return [e for e in self.events if e.event in ("message", "data")]

    def gaps(self) -> list[float]:
        """Seconds between consecutive token events."""
        times = [e.at for e in self.token_events()]
        return [b - a for a, b in zip(times, times[1:])]


class _Chunked:
    """Incremental decoder for `Transfer-Encoding: chunked`."""

    def __init__(self) -> None:
        self.buffer = b""
        self.remaining = 0  # bytes left in the current chunk
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


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """A response's status and headers (names in lower case), and the body bytes that came with them."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed before headers")
        raw += data
    header_block, data = raw.split(b"\r\n\r\n", 1)
    status_line, *header_lines = header_block.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, data


async def sse_request(host: str, port: int, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None, timeout: float = 60.0,
                      light: bool = False) -> StreamResult:
    """One request; reads the whole response (SSE events timestamped as they arrive). The body must be valid
    UTF-8 (a broken character is an error, not a U+FFFD). `light`: events are only told apart and timed, their
    data is not kept (a load client for many streams). A connection that closes before the end of a chunked
    response is an `error`: a stream must end cleanly."""
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
            result.status, result.headers, data = await read_head(reader)
            chunked = _Chunked() if result.headers.get("transfer-encoding") == "chunked" else None
            sse = SSEDecoder(light) if result.headers.get("content-type", "").startswith("text/event-stream") else None
            utf8 = codecs.getincrementaldecoder("utf-8")()  # strict
            while True:
                now = time.perf_counter()
                decoded = chunked.feed(data) if chunked else data
                if sse is not None:
                    result.events += sse.feed(utf8.decode(decoded), now)
                else:
                    result.body += decoded
                if chunked and chunked.done:
                    break
                data = await reader.read(65536)
                if not data:
                    if chunked:
                        raise ConnectionError("connection closed before the end of the response")
                    break
            if sse is not None:
                result.events += sse.feed(utf8.decode(b"", final=True), time.perf_counter()) + sse.end()
    except (OSError, TimeoutError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
    return result
