"""The tutorial's `/chat` surface on the wire: request models, and the two encodings of a generation's events.

Two encodings serve every `/chat` route:
- `JsonEvents` — the tutorial's `/chat` schema: `event: start`, `event: reasoning` `{"token", "token_count"}` per
  piece of a reasoning model's thinking, one default event per token (or buffered group) `{"token",
  "token_count"}`, `event: done` with the summary, or `event: error`. Every event has an `id:`.
- `RawText` — the tutorial's other routes: the text itself as `data:` lines (a reasoning model's thinking as
  `event: reasoning` with its text as `data:` lines), `event: done` / `data: Completed`,
  `event: error` / `data: <message>`. Multi-line text becomes several `data:` lines, as the SSE spec requires,
  so a client joining them gets `\\n` back (a lone `\\r` is a line end in SSE and arrives as `\\n`).

Encoding is done once per event, straight to bytes: the token event is the hot path.
"""

from __future__ import annotations

import re
from typing import Annotated

import orjson
from pydantic import BaseModel, Field, model_validator

from chains.api.sse import sse_responses
from chains.runnables.chat import BoundedText, ChatMessage, UserText, check_conversation
from chains.streaming.events import LOST_ENDINGS, DoneEvent, ErrorEvent, ReasoningEvent, StartEvent, TokenEvent

Message = Annotated[UserText, Field(description="the user's message")]
SystemPrompt = Annotated[BoundedText, Field(description="instructions for the assistant; default: SYSTEM_PROMPT")]


class StreamParams(BaseModel):
    """How the stream is cut and bounded; unset fields take the server's defaults."""

    buffer_size: int = Field(1, ge=1, le=1000, description="tokens per event")
    flush_ms: float | None = Field(
        None, ge=1, le=60_000, description="longest a token may wait in the buffer (ms); default from settings")
    timeout: float | None = Field(None, gt=0, le=3600, description="whole generation limit (s)")
    idle_timeout: float | None = Field(None, gt=0, le=3600, description="longest silence between tokens (s)")


class ChatQuery(StreamParams):
    message: Message
    system_prompt: SystemPrompt | None = None


class ChatPostQuery(StreamParams):
    message: Message | None = None
    system_prompt: SystemPrompt | None = None


class ChatBody(StreamParams):
    """`message` for one turn, or `messages` for a conversation (then the last turn is answered)."""

    message: Message | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    system_prompt: SystemPrompt | None = None

    @model_validator(mode="after")
    def _one_of_message_or_messages(self) -> ChatBody:
        if (self.message is None) == (self.messages is None):
            raise ValueError("give exactly one of `message` or `messages`")
        if self.messages is not None:
            check_conversation(self.messages, self.system_prompt)
        return self


class ChatDefaults(BaseModel):
    system_prompt: str = Field(description="used when a request gives none (SYSTEM_PROMPT)")
    max_input_chars: int = Field(description="characters in one message or a whole conversation")
    max_messages: int = Field(description="turns in one conversation")


JSON_SSE = sse_responses(["start", "reasoning", "message", "done", "error"], {"contentMediaType": "application/json"})
RAW_SSE = sse_responses(["reasoning", "message", "done", "error"], {})
CHAT_EVENTS_DOC = f"""Server-sent events, each with an `id:`:
- `event: start` — `{StartEvent.model_json_schema()["properties"]}`
- `event: reasoning` — `{ReasoningEvent.model_json_schema()["properties"]}` per piece of a reasoning model's
  thinking, before the answer's tokens (none from a model that does not reason aloud)
- default event — `{TokenEvent.model_json_schema()["properties"]}` per token, or per group when buffering
- `event: done` — the summary (`full_response`, `full_reasoning`, `token_count`, `duration`, `tokens_per_second`,
  `usage`, `finish_reason`)
- `event: error` — `{ErrorEvent.model_json_schema()["properties"]}`; the stream ends after it.
Concatenating the tokens gives exactly `full_response`, the reasoning pieces `full_reasoning`. A `: heartbeat`
comment keeps idle connections open.
"""


_LINE_END = re.compile(r"\r\n|\r|\n")


def data_lines(text: str) -> bytes:
    """`text` as SSE `data:` lines: one per line of text, so newlines survive the transport."""
    if "\n" not in text and "\r" not in text:
        return b"data: " + text.encode() + b"\n"
    return b"".join(b"data: " + line.encode() + b"\n" for line in _LINE_END.split(text))


class JsonEvents:
    """The `/chat` encoding."""

    name = "chat"

    def start(self, event_id: bytes, event: StartEvent) -> bytes:
        return b"id: %b\nevent: start\ndata: %b\n\n" % (event_id, event.model_dump_json().encode())

    def tokens(self, event_id: bytes, text: str, token_count: int) -> bytes:
        # Hot path: one orjson call, no model object. orjson escapes newlines, so one data line always.
        return b'id: %b\ndata: {"token":%b,"token_count":%d}\n\n' % (event_id, orjson.dumps(text), token_count)

    def reasoning(self, event_id: bytes, text: str, count: int) -> bytes:
        return b'id: %b\nevent: reasoning\ndata: {"token":%b,"token_count":%d}\n\n' % (
            event_id, orjson.dumps(text), count)

    def done(self, event_id: bytes, event: DoneEvent) -> bytes:
        return b"id: %b\nevent: done\ndata: %b\n\n" % (event_id, event.model_dump_json().encode())

    def error(self, event_id: bytes, event: ErrorEvent) -> bytes:
        return b"id: %b\nevent: error\ndata: %b\n\n" % (event_id, event.model_dump_json(exclude_none=True).encode())

    @staticmethod
    def lost(kept: bytes, event_id: bytes, event: ErrorEvent) -> bytes:
        """The error event, with the answer the kept token events carry (the default events: no `event:` line)."""
        texts: list[str] = []
        count = 0
        for block in kept.split(b"\n\n"):
            _, found, data = block.partition(b"\ndata: ")
            if not found or b"\nevent: " in block:
                continue
            try:
                token = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(token, dict) and isinstance(token.get("token"), str):
                texts.append(token["token"])
                count = token.get("token_count", count)
        lost = event.model_copy(update={"full_response": "".join(texts), "token_count": count})
        return JSON_EVENTS.error(event_id, lost)


class RawText:
    """The encoding of the tutorial's `/chat-token`, `/chat-conversation`, `/chat-buffered`, `/chat-timeout`."""

    name = "raw"

    def start(self, event_id: bytes, event: StartEvent) -> bytes | None:
        return None

    def tokens(self, event_id: bytes, text: str, token_count: int) -> bytes:
        return b"id: %b\n%b\n" % (event_id, data_lines(text))

    def reasoning(self, event_id: bytes, text: str, count: int) -> bytes:
        # Its own event type: a client that joins the `data:` lines of unnamed events gets the answer alone.
        return b"id: %b\nevent: reasoning\n%b\n" % (event_id, data_lines(text))

    def done(self, event_id: bytes, event: DoneEvent) -> bytes:
        ending = b"Completed" if event.status == "completed" else b"Cancelled"
        return b"id: %b\nevent: done\ndata: %b\n\n" % (event_id, ending)

    def error(self, event_id: bytes, event: ErrorEvent) -> bytes:
        return b"id: %b\nevent: error\n%b\n" % (event_id, data_lines(event.error))




JSON_EVENTS, RAW_TEXT = JsonEvents(), RawText()
LOST_ENDINGS.register(JsonEvents.name, JsonEvents.lost)
LOST_ENDINGS.register(RawText.name, lambda kept, event_id, event: RAW_TEXT.error(event_id, event))
