"""The OpenAI-compatible surface on the wire: the Chat Completions request, its two encodings of a generation's
events, the model list, and OpenAI's error shape for the documentation.

- `ChatCompletionRequest` — what `POST /v1/chat/completions` accepts. Unknown fields are refused by name (400,
  `param`), as OpenAI refuses them; the fields this server cannot honour (`n` > 1, `tools`, `logprobs`, …) are
  accepted only at the value that asks for nothing, so a client that sends its defaults works and one that asks
  for more is told, never silently ignored.
- `ChatCompletionChunks` — the streaming encoding: `data: {chat.completion.chunk}` lines (a role chunk, one chunk
  per token, a finish chunk, the usage chunk when asked for), then `data: [DONE]`; a failure is a
  `data: {"error": {…}}` chunk, which the `openai` SDKs raise as an `APIError`.
- `ChatCompletionBody` — the non-streaming encoding: nothing per token, the whole `chat.completion` at the end.

Both are `EventFormat`s of the one streaming core, one instance per request (a completion's id, time and model
are in every chunk), and both remember whether the generation failed and whether any token was encoded: the
serving answers a failure before the first token with an HTTP status rather than a stream.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from chains.common.errors import STATUS_OF, openai_error_body
from chains.common.responses import ERROR_RESPONSES
from chains.runnables.chat import BoundedText
from chains.streaming.events import LOST_ENDINGS, DoneEvent, ErrorEvent, StartEvent, Usage

# OpenAI allows up to four stop sequences.
MAX_STOP_SEQUENCES = 4
# OpenAI's values (`none` and `xhigh` on its newer models).
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


def only_at(no_op: Any, why: str) -> AfterValidator:
    """A field accepted only at the value that asks for nothing (what clients send by default)."""

    def check(value: Any) -> Any:
        if value is not None and value != no_op:
            raise ValueError(f"only {no_op!r} is supported: {why}")
        return value

    return AfterValidator(check)


def _text_of(content: Any) -> Any:
    """A message's content as one string: the string itself, or its text parts joined (OpenAI's content-part
    form). Done before validation so that a wrong part is one error naming it, not one per union branch."""
    if not isinstance(content, list):
        return content
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            shown = f"a {str(kind)[:40]!r} part" if isinstance(kind, str) else "not a text part"
            raise ValueError(f"part {i} is {shown}: only text parts ({{type: text, text}}) are supported")
        texts.append(part["text"])
    return "".join(texts)


_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
MessageContent = Annotated[str, BeforeValidator(_text_of), WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "array", "items": _TEXT_PART}]})]


class RequestMessage(BaseModel):
    """One message of `messages`. `developer` is OpenAI's newer name for `system`."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="system (or developer), user or assistant; tool messages are not supported (tools are not)")
    content: MessageContent = Field(description="the text, or a list of text parts (joined)")
    name: BoundedText | None = Field(None, description="accepted and not used (checked like the content)")


# One string or a list of them; a list inside, so that a wrong value is one error naming `stop`.
StopSequences = Annotated[
    list[BoundedText], BeforeValidator(lambda value: [value] if isinstance(value, str) else value),
    Field(max_length=MAX_STOP_SEQUENCES),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                   "maxItems": MAX_STOP_SEQUENCES}]})]


class StreamOptionsParam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, description="a last chunk, before `[DONE]`, with the usage of the request")
    include_obfuscation: bool | None = Field(None, description="accepted and not used (no padding is added)")


_NO_TOOLS = "this server runs chat chains without tools"


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a chain: `conversation` (any history), `system-prompt` (system messages and "
                       "one user message), `single-turn` (one user message); see `GET /v1/models`")
    messages: list[RequestMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptionsParam | None = None
    max_completion_tokens: int | None = Field(None, ge=1, description="capped at the server's MAX_TOKENS")
    max_tokens: int | None = Field(None, ge=1, description="older name of `max_completion_tokens`")
    temperature: float | None = Field(None, ge=0, le=2)
    stop: StopSequences | None = Field(
        None, description="up to 4 sequences that end the reply (not included in it); honoured by the local and "
        "openai providers, not by the scripted one")
    seed: int | None = Field(None, description="sampling seed, where the provider takes one")
    reasoning_effort: ReasoningEffort | None = Field(
        None, description="how hard a reasoning model thinks: passed to the upstream (the openai provider); refused "
        "by the local and scripted providers, which cannot honour it")
    # Accepted and not used: they change nothing in the reply (OpenAI's own bookkeeping and caching hints).
    user: BoundedText | None = Field(None, max_length=256, description="accepted and not used")
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16, description="accepted and not used (OpenAI stores it with stored completions)")
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        None, description="accepted and not used")
    prompt_cache_key: BoundedText | None = Field(None, max_length=1024, description="accepted and not used")
    safety_identifier: BoundedText | None = Field(None, max_length=256, description="accepted and not used")
    verbosity: Literal["low", "medium", "high"] | None = Field(None, description="accepted and not used")
    # Accepted only at the value that asks for nothing.
    n: Annotated[int | None, only_at(1, "one choice per request")] = None
    top_p: Annotated[float | None, only_at(1, "the server's own sampling settings apply")] = None
    presence_penalty: Annotated[float | None, only_at(0, "not supported")] = None
    frequency_penalty: Annotated[float | None, only_at(0, "not supported")] = None
    logprobs: Annotated[bool | None, only_at(False, "not supported")] = None
    top_logprobs: Annotated[int | None, only_at(0, "logprobs are not supported")] = None
    logit_bias: Annotated[dict[str, float] | None, only_at({}, "not supported")] = None
    tools: Annotated[list[Any] | None, only_at([], _NO_TOOLS)] = None
    tool_choice: Annotated[Any, only_at("none", _NO_TOOLS)] = None
    parallel_tool_calls: Annotated[bool | None, only_at(False, _NO_TOOLS)] = None
    functions: Annotated[list[Any] | None, only_at([], _NO_TOOLS)] = None
    function_call: Annotated[Any, only_at("none", _NO_TOOLS)] = None
    response_format: Annotated[Any, only_at({"type": "text"}, "replies are plain text")] = None
    modalities: Annotated[list[str] | None, only_at(["text"], "replies are text")] = None
    store: Annotated[bool | None, only_at(False, "completions are not stored")] = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_a_stream(cls, value: StreamOptionsParam | None,
                                      info: ValidationInfo) -> StreamOptionsParam | None:
        if value is not None and not info.data.get("stream"):  # as OpenAI answers it
            raise ValueError("The 'stream_options' parameter is only allowed when 'stream' is enabled.")
        return value

    @property
    def completion_tokens_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens



# --- responses ---------------------------------------------------------------------------------------------------

class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="unix seconds: when this server started")
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None
    reasoning_content: str | None = Field(None, description="a reasoning model's thinking before its answer, as "
                                          "vLLM and llama.cpp's server send it")


class CompletionChoice(BaseModel):
    index: int = 0
    message: CompletionMessage
    logprobs: None = None
    finish_reason: str = Field(description="stop, length, … as the model reports it")


class ChatCompletion(BaseModel):
    """The non-streaming answer."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(None, description="when the model reports it")


class OpenAIErrorDetail(BaseModel):
    message: str = Field(description="what went wrong, for a person; never a traceback, path or key")
    type: str = Field(description="OpenAI's class: invalid_request_error, authentication_error, "
                      "permission_error, not_found_error, rate_limit_error or server_error")
    param: str | None = Field(None, description="the request field at fault, e.g. `n` or `messages[0].content`")
    code: str = Field(description="this server's error type (docs/protocol.md, Errors)")


class OpenAIError(BaseModel):
    """Every error on `/v1`, in OpenAI's shape."""

    error: OpenAIErrorDetail


# What the /v1 operations declare: the statuses every operation may answer, each in OpenAI's shape.
OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": spec["description"], "model": OpenAIError} for status, spec in ERROR_RESPONSES.items()
} | {400: {"description": "an invalid or unsupported field, named in `param`", "model": OpenAIError},
     404: {"description": "no such model (`param`: model) or path", "model": OpenAIError}}

CHUNK_SSE_DOC = """With `stream: true`, a `text/event-stream` of `data:` lines, each a `chat.completion.chunk` (a
role chunk, one chunk per token, a chunk with `finish_reason`, then with `stream_options.include_usage` a chunk
with `usage` and no choices), then `data: [DONE]`. A failure after the stream has started is a
`data: {"error": {…}}` line. A failure before the first token is an HTTP error instead."""


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(12)  # 96 bits: unique, and short (it is in every chunk)


# --- the encodings ------------------------------------------------------------------------------------------------

class _Completion:
    """What every piece of one completion repeats: its id, time and model, fixed when the request is taken.
    An encoding holds nothing else: how the generation went is the core's to tell (chains.streaming.generation)."""

    def __init__(self, model: str) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        self.model = model

    @staticmethod
    def finish_reason(event: DoneEvent) -> str:
        return event.finish_reason or "stop"


def error_chunk(event: ErrorEvent) -> bytes:
    """A stream's failure as OpenAI's streams say it: an `error` object, then `[DONE]`."""
    body = openai_error_body(STATUS_OF[event.type], event.type, event.error)
    return b"data: " + orjson.dumps(body) + b"\n\ndata: [DONE]\n\n"


class ChatCompletionChunks(_Completion):
    """The streaming encoding. `event_id` is ignored: OpenAI's chunks carry no SSE `id:`."""

    name = "chat.completion.chunk"

    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__(model)
        self.include_usage = include_usage
        head = orjson.dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                             "model": model})[:-1]  # without its closing brace: each chunk continues it
        self._head = b"data: " + head
        usage = b',"usage":null' if include_usage else b""  # OpenAI's chunks say so when usage is asked for
        # The hot path: one token is the prefix, the text as a JSON string, the suffix. `logprobs` (optional, never
        # given here) is left out of the token chunks: every byte of a chunk costs the client too.
        self._token_prefix = self._head + b',"choices":[{"index":0,"delta":{"content":'
        self._reasoning_prefix = self._head + b',"choices":[{"index":0,"delta":{"reasoning_content":'
        self._token_suffix = b'},"finish_reason":null}]' + usage + b"}\n\n"
        self._usage_null = usage

    def _chunk(self, choices: bytes, usage: bytes | None = None) -> bytes:
        return b"%b,\"choices\":%b%b}\n\n" % (self._head, choices, self._usage_null if usage is None else usage)

    def start(self, event_id: object, event: StartEvent) -> bytes:
        return self._chunk(b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                           b'"finish_reason":null}]')

    def tokens(self, event_id: object, text: str, token_count: int) -> bytes:
        return self._token_prefix + orjson.dumps(text) + self._token_suffix

    def reasoning(self, event_id: object, text: str, count: int) -> bytes:
        # The field vLLM, llama.cpp's server and DeepSeek send, which OpenAI-compatible clients read.
        return self._reasoning_prefix + orjson.dumps(text) + self._token_suffix

    def done(self, event_id: object, event: DoneEvent) -> bytes:
        finish = self._chunk(b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":%b}]'
                             % orjson.dumps(self.finish_reason(event)))
        usage = b""
        if self.include_usage and event.usage is not None:
            usage = self._chunk(b"[]", b',"usage":' + event.usage.model_dump_json().encode())
        return finish + usage + b"data: [DONE]\n\n"

    def error(self, event_id: object, event: ErrorEvent) -> bytes:
        return error_chunk(event)


class ChatCompletionBody(_Completion):
    """The non-streaming encoding: the events' bytes, concatenated, are the `chat.completion` (or nothing, when
    the generation failed: then the generation's `failure` says why)."""

    name = "chat.completion"

    def start(self, event_id: object, event: StartEvent) -> bytes | None:
        return None

    def tokens(self, event_id: object, text: str, token_count: int) -> bytes:
        return b""

    def reasoning(self, event_id: object, text: str, count: int) -> bytes:
        return b""

    def done(self, event_id: object, event: DoneEvent) -> bytes:
        message = CompletionMessage(content=event.full_response, reasoning_content=event.full_reasoning or None)
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model, usage=event.usage,
            choices=[CompletionChoice(message=message,
                                      finish_reason=self.finish_reason(event))],
        ).model_dump_json().encode()

    def error(self, event_id: object, event: ErrorEvent) -> bytes:
        return b""


LOST_ENDINGS.register(ChatCompletionChunks.name, lambda kept, event_id, event: error_chunk(event))
LOST_ENDINGS.register(ChatCompletionBody.name, lambda kept, event_id, event: b"")
