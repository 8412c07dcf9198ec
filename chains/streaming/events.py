"""What a generation streams, whatever the surface: its events as pydantic models, and the interface an encoding
implements. The surfaces' encodings (chains.api.chat.protocol: the tutorial's JSON events and raw text) turn
each into bytes once."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, Field

from chains.common.errors import ErrorType


class StartEvent(BaseModel):
    """`event: start` — the stream is open and generation begins."""

    status: Literal["started"] = "started"
    timestamp: float = Field(description="unix seconds")
    run_id: str = Field(description="the run's id: resume it at `/chat/runs/{run_id}/stream`, stop it with "
                        "`POST /chat/runs/{run_id}/cancel`")


class TokenEvent(BaseModel):
    """The default (`message`) event: the next token, or group of tokens when buffering."""

    token: str
    token_count: int = Field(description="token events sent so far, this one's included (not the model's tokens)")


class ReasoningEvent(BaseModel):
    """`event: reasoning` — the next piece of a reasoning model's thinking, before the answer's tokens."""

    token: str
    token_count: int = Field(description="reasoning events sent so far, this one's included")


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = Field(description="of the completion tokens, those the model reasoned with")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="the model's own token count (a character can be several tokens); "
                                   "reasoning tokens included")
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = Field(
        None, description="when the model reports its reasoning tokens")


class DoneEvent(BaseModel):
    """`event: done` — the reply is complete, or was cancelled (`status` and `finish_reason` "cancelled": then the
    fields count what was sent until then). Concatenating every `token` gives `full_response`, every reasoning
    event's `token` gives `full_reasoning`."""

    status: Literal["completed", "cancelled"] = "completed"
    full_response: str = Field(description="the answer (the reasoning is not part of it)")
    full_reasoning: str = Field("", description="the model's reasoning before its answer; empty when it had none")
    token_count: int = Field(description="token events sent")
    duration: float = Field(description="seconds from the first request to the model to the last token")
    tokens_per_second: float
    usage: Usage | None = Field(None, description="token usage when the model reports it (so far, when cancelled)")
    finish_reason: str | None = Field(None, description="stop, length, … when the model reports it; cancelled")


class ErrorEvent(BaseModel):
    """`event: error` — generation failed, timed out or was interrupted; the stream ends after it. A stream that was
    stopped (a timeout, the server's shutdown, its replica lost) says what it had sent until then."""

    error: str
    type: ErrorType
    full_response: str | None = Field(default=None, description="when stopped: the answer's tokens sent until then")
    token_count: int | None = Field(default=None, description="when stopped: token events sent until then")


class EventFormat(Protocol):
    """An encoding of a generation's events: each returns the bytes of one SSE event (the start may be none).
    `event_id` is the SSE `id:` as bytes, `<run id>:<seq>`: it names the run and the position in it. `name` names
    the encoding where another process must end a run of it (`LOST_ENDINGS`)."""

    name: str

    def start(self, event_id: bytes, event: StartEvent) -> bytes | None: ...

    def tokens(self, event_id: bytes, text: str, token_count: int) -> bytes: ...

    def reasoning(self, event_id: bytes, text: str, count: int) -> bytes: ...

    def done(self, event_id: bytes, event: DoneEvent) -> bytes: ...

    def error(self, event_id: bytes, event: ErrorEvent) -> bytes: ...


class LostEnding(Protocol):
    """The terminal event of a run whose replica was lost, as its encoding would have sent it, built by another
    process from the events the run kept (`kept`, as they were sent): it cannot ask the lost encoding's state."""

    def __call__(self, kept: bytes, event_id: bytes, event: ErrorEvent) -> bytes: ...


def _plain_error(kept: bytes, event_id: bytes, event: ErrorEvent) -> bytes:
    return b"id: %b\nevent: error\ndata: %b\n\n" % (event_id, event.model_dump_json(exclude_none=True).encode())


class LostEndings:
    """Each encoding's `LostEnding`, by the encoding's `name`; each surface registers its own (an encoding with none
    ends in the plain `event: error`)."""

    def __init__(self) -> None:
        self._endings: dict[str, LostEnding] = {}

    def register(self, name: str, ending: LostEnding) -> None:
        self._endings[name] = ending

    def __getitem__(self, name: str) -> LostEnding:
        return self._endings.get(name, _plain_error)


LOST_ENDINGS = LostEndings()
