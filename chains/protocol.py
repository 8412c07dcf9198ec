"""The tutorial's token-stream protocol: its events as pydantic models (the documentation) and their encodings.

Two encodings serve every custom route:
- `JsonEvents` — the tutorial's `/chat` schema: `event: start`, one default event per token (or buffered group)
  `{"token", "token_count"}`, `event: done` with the summary, or `event: error`. Every event has an `id:`.
- `RawText` — the tutorial's other routes: the text itself as `data:` lines, `event: done` / `data: Completed`,
  `event: error` / `data: <message>`. Multi-line text becomes several `data:` lines, as the SSE spec requires,
  so a client joining them gets `\\n` back (a lone `\\r` is a line end in SSE and arrives as `\\n`).

Encoding is done once per event, straight to bytes: the token event is the hot path.
"""

from __future__ import annotations

import re
from typing import Literal

import orjson
from pydantic import BaseModel, Field

ErrorType = Literal[
    "generation_error", "timeout", "overloaded", "upstream_error", "rate_limited", "upstream_auth", "shutdown"
]


class StartEvent(BaseModel):
    """`event: start` — the stream is open and generation begins."""

    status: Literal["started"] = "started"
    timestamp: float = Field(description="unix seconds")


class TokenEvent(BaseModel):
    """The default (`message`) event: the next token, or group of tokens when buffering."""

    token: str
    token_count: int = Field(description="tokens sent so far, this event's included")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DoneEvent(BaseModel):
    """`event: done` — the reply is complete. Concatenating every `token` gives `full_response`."""

    status: Literal["completed"] = "completed"
    full_response: str
    token_count: int
    duration: float = Field(description="seconds from the first request to the model to the last token")
    tokens_per_second: float
    usage: Usage | None = Field(None, description="token usage when the model reports it")
    finish_reason: str | None = Field(None, description="stop, length, … when the model reports it")


class ErrorEvent(BaseModel):
    """`event: error` — generation failed or timed out; the stream ends after it."""

    error: str
    type: ErrorType


_LINE_END = re.compile(r"\r\n|\r|\n")


def data_lines(text: str) -> bytes:
    """`text` as SSE `data:` lines: one per line of text, so newlines survive the transport."""
    if "\n" not in text and "\r" not in text:
        return b"data: " + text.encode() + b"\n"
    return b"".join(b"data: " + line.encode() + b"\n" for line in _LINE_END.split(text))


class JsonEvents:
    """The `/chat` encoding."""

    def start(self, event_id: int, event: StartEvent) -> bytes:
        return b"id: %d\nevent: start\ndata: %b\n\n" % (event_id, event.model_dump_json().encode())

    def tokens(self, event_id: int, text: str, token_count: int) -> bytes:
        # Hot path: one orjson call, no model object. orjson escapes newlines, so one data line always.
        return b'id: %d\ndata: {"token":%b,"token_count":%d}\n\n' % (event_id, orjson.dumps(text), token_count)

    def done(self, event_id: int, event: DoneEvent) -> bytes:
        return b"id: %d\nevent: done\ndata: %b\n\n" % (event_id, event.model_dump_json().encode())

    def error(self, event_id: int, event: ErrorEvent) -> bytes:
        return b"id: %d\nevent: error\ndata: %b\n\n" % (event_id, event.model_dump_json().encode())


class RawText:
    """The encoding of the tutorial's `/chat-token`, `/chat-conversation`, `/chat-buffered`, `/chat-timeout`."""

    def start(self, event_id: int, event: StartEvent) -> bytes | None:
        return None

    def tokens(self, event_id: int, text: str, token_count: int) -> bytes:
        return b"id: %d\n%b\n" % (event_id, data_lines(text))

    def done(self, event_id: int, event: DoneEvent) -> bytes:
        return b"id: %d\nevent: done\ndata: Completed\n\n" % event_id

    def error(self, event_id: int, event: ErrorEvent) -> bytes:
        return b"id: %d\nevent: error\n%b\n" % (event_id, data_lines(event.error))


EventFormat = JsonEvents | RawText
