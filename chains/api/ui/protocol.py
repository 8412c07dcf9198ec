"""The AI SDK's UI message stream on the wire: the request `DefaultChatTransport` sends, and the encoding of a
generation's events as UI message chunks.

- `UIChatRequest` — `{id, messages: [{id, role, parts: [{type: "text", text}, …]}], trigger, messageId?}`. The text
  parts of each message are its content; the other part types a message keeps (`step-start`, `reasoning`, files of
  an earlier turn, …) are not the conversation's text and are left out. Fields a page adds to the body are ignored.
- `UIMessageStream` — `data: <chunk>` lines in the SDK's order: `start` (the message id), `start-step`, the
  reasoning part (`reasoning-start`, `reasoning-delta`…, `reasoning-end`), the text part (`text-start`,
  `text-delta` per token, `text-end`), `finish-step`, `finish` (`finishReason`, usage in `messageMetadata`), then
  `data: [DONE]`; a failure is `error` (`errorText`), a cancel `abort`. No chunk carries a field the SDK's schema
  does not have. One instance per request: it knows which part is open. The SSE `id:` of each event is left
  out, as the SDK reads none: a resume replays the run from its start.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from chains.streaming.events import LOST_ENDINGS, DoneEvent, ErrorEvent, StartEvent

HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
# How long a reply's run outlives its connection by default: `useChat({resume: true})` reconnects after a reload
# or a cut (the chat pages give their runs the same).
RESUME_GRACE_SECONDS = 30.0
# A chat's id names its latest run in the store (`GET /api/chat/{id}/stream`): bounded, and no separators.
CHAT_ID = re.compile(r"^[A-Za-z0-9_.~-]{1,128}$")
ChatId = Annotated[str, Field(pattern=CHAT_ID.pattern, description="the chat's id (useChat's `id`)")]
# The SDK's finish reasons; ours map onto them.
FINISH_REASONS = {"stop": "stop", "length": "length", "content_filter": "content-filter"}


class UIMessagePart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: str | None = None


class UIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field("", max_length=200)
    role: Literal["user", "assistant", "system"]
    parts: list[UIMessagePart] = Field(max_length=1000)

    @property
    def text(self) -> str:
        return "".join(part.text or "" for part in self.parts if part.type == "text")


class UIChatRequest(BaseModel):
    """The body `DefaultChatTransport` posts (and whatever a page adds to it, ignored)."""

    model_config = ConfigDict(extra="ignore")

    id: ChatId
    messages: list[UIMessage] = Field(min_length=1)
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    message_id: str | None = Field(None, alias="messageId", max_length=200)

    @field_validator("messages")
    @classmethod
    def _last_is_the_users(cls, messages: list[UIMessage]) -> list[UIMessage]:
        if messages[-1].role != "user":
            raise ValueError("the last message must be the user's (regenerate sends the history up to it)")
        if not messages[-1].text.strip():
            raise ValueError("the last message has no text part with any text")
        return messages

    def conversation(self) -> list[dict[str, Any]]:
        """The messages as the conversation chain's turns (a message with no text left out)."""
        return [{"role": m.role, "content": m.text} for m in self.messages if m.text]


def _chunk(body: bytes) -> bytes:
    return b"data: " + body + b"\n\n"


DONE = b"data: [DONE]\n\n"


class UIMessageStream:
    """The encoding of one reply as UI message chunks (an `EventFormat`)."""

    name = "ui-message-stream"

    def __init__(self, run_id_prefix: str = "msg_") -> None:
        self.prefix = run_id_prefix
        self.reasoning_open = False
        self.text_open = False

    def start(self, event_id: bytes, event: StartEvent) -> bytes:
        # The run id in the message's metadata: what a page's Stop cancels (`POST /chat/runs/{runId}/cancel`).
        start = {"type": "start", "messageId": self.prefix + event.run_id, "messageMetadata": {"runId": event.run_id}}
        return _chunk(orjson.dumps(start)) + _chunk(b'{"type":"start-step"}')

    def reasoning(self, event_id: bytes, text: str, count: int) -> bytes:
        head = b""
        if not self.reasoning_open:
            self.reasoning_open = True
            head = _chunk(b'{"type":"reasoning-start","id":"r0"}')
        return head + _chunk(b'{"type":"reasoning-delta","id":"r0","delta":%b}' % orjson.dumps(text))

    def _end_reasoning(self) -> bytes:
        if not self.reasoning_open:
            return b""
        self.reasoning_open = False
        return _chunk(b'{"type":"reasoning-end","id":"r0"}')

    def tokens(self, event_id: bytes, text: str, token_count: int) -> bytes:
        if self.text_open:  # the hot path: one chunk
            return b'data: {"type":"text-delta","id":"t0","delta":%b}\n\n' % orjson.dumps(text)
        self.text_open = True
        return (self._end_reasoning() + _chunk(b'{"type":"text-start","id":"t0"}')
                + _chunk(b'{"type":"text-delta","id":"t0","delta":%b}' % orjson.dumps(text)))

    def _close_parts(self) -> bytes:
        closing = self._end_reasoning()
        if self.text_open:
            self.text_open = False
            closing += _chunk(b'{"type":"text-end","id":"t0"}')
        return closing

    def done(self, event_id: bytes, event: DoneEvent) -> bytes:
        parts = self._close_parts()
        if event.status == "cancelled":
            return parts + _chunk(b'{"type":"abort","reason":"cancelled"}') + DONE
        finish: dict[str, Any] = {"type": "finish",
                                  "finishReason": FINISH_REASONS.get(event.finish_reason or "stop", "other")}
        if event.usage is not None:  # merged into the message's metadata by the SDK
            finish["messageMetadata"] = {"usage": event.usage.model_dump(exclude_none=True)}
        return parts + _chunk(b'{"type":"finish-step"}') + _chunk(orjson.dumps(finish)) + DONE

    def error(self, event_id: bytes, event: ErrorEvent) -> bytes:
        return self._close_parts() + _chunk(orjson.dumps({"type": "error", "errorText": event.error})) + DONE

    @staticmethod
    def lost(kept: bytes, event_id: bytes, event: ErrorEvent) -> bytes:
        """The error chunk, after closing the parts the kept chunks left open."""
        stream = UIMessageStream()
        # By the chunks' own type fields: a text that says "text-end" is escaped inside a delta, never this.
        stream.reasoning_open = b'{"type":"reasoning-start"' in kept and b'{"type":"reasoning-end"' not in kept
        stream.text_open = b'{"type":"text-start"' in kept and b'{"type":"text-end"' not in kept
        return stream.error(event_id, event)


LOST_ENDINGS.register(UIMessageStream.name, UIMessageStream.lost)

