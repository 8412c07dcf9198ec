"""The tutorial's SSE routes: `/chat` and its variants, each a few lines of configuration over one core.

| route | chain | encoding | defaults |
| --- | --- | --- | --- |
| `GET/POST /chat` | system-prompt (`message`) or conversation (`messages`) | JSON events | settings |
| `POST /chat-token` | single-turn | raw text | settings |
| `POST /chat-conversation` | conversation | raw text | settings |
| `POST /chat-buffered` | single-turn | raw text | `buffer_size=3` |
| `POST /chat-timeout` | single-turn | raw text | `timeout=30` |
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, model_validator

from chains.chat import (
    BoundedText, ChatChain, ChatMessage, ConversationInput, SystemPromptInput, UserText, check_conversation,
)
from chains.protocol import ErrorEvent, JsonEvents, RawText, StartEvent, TokenEvent
from chains.settings import Settings
from chains.streaming import StreamOptions, TokenStreamResponse, token_events

JSON_EVENTS, RAW_TEXT = JsonEvents(), RawText()

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


def sse_responses(events: list[str], data: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI for a `text/event-stream`: on OpenAPI 3.1 the schema describes one parsed event (as the 3.2
    `itemSchema` does), its `data` a string."""
    event_schema = {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string", "enum": events}, "id": {"type": "string"},
                       "data": {"type": "string", **data}},
    }
    return {200: {"description": "A `text/event-stream` of the events below.",
                  "content": {"text/event-stream": {"schema": event_schema}}}}


JSON_SSE = sse_responses(["start", "message", "done", "error"], {"contentMediaType": "application/json"})
RAW_SSE = sse_responses(["message", "done", "error"], {})
CHAT_EVENTS_DOC = f"""Server-sent events, each with an `id:`:
- `event: start` — `{StartEvent.model_json_schema()["properties"]}`
- default event — `{TokenEvent.model_json_schema()["properties"]}` per token, or per group when buffering
- `event: done` — the summary (`full_response`, `token_count`, `duration`, `tokens_per_second`, `usage`,
  `finish_reason`)
- `event: error` — `{ErrorEvent.model_json_schema()["properties"]}`; the stream ends after it.
Concatenating the tokens gives exactly `full_response`. A `: heartbeat` comment keeps idle connections open.
"""


def chat_router(chains: dict[str, ChatChain], settings: Settings) -> APIRouter:
    """The `/chat` routes over the chains LangServe mounts (one path to the model)."""
    router = APIRouter(tags=["token stream"])
    single_turn, system_prompt, conversation = chains["single-turn"], chains["system-prompt"], chains["conversation"]

    def options(params: StreamParams | None = None, **route_defaults: float) -> StreamOptions:
        """What the request gave, else the route's defaults, else the server's."""
        defaults: dict[str, Any] = {
            "buffer_size": 1, "flush_ms": settings.stream_flush_ms, "timeout": settings.stream_timeout,
            "idle_timeout": settings.stream_idle_timeout, **route_defaults,
        }
        given = params.model_dump(include=set(StreamParams.model_fields), exclude_none=True) if params else {}
        return StreamOptions(**{**defaults, **given})

    def stream(chain: ChatChain, chain_input: Any, options: StreamOptions, raw: bool = False
               ) -> TokenStreamResponse:
        events = token_events(chain, chain_input, options, RAW_TEXT if raw else JSON_EVENTS)
        return TokenStreamResponse(events, settings.sse_heartbeat_seconds)

    def chat_stream(message: str | None, messages: list[ChatMessage] | None, system_prompt_text: str | None,
                    params: StreamParams) -> TokenStreamResponse:
        # The request model has validated every field with the chain input's own types and limits: the chain
        # gets an instance, which it does not validate again.
        if messages is not None:
            return stream(conversation, ConversationInput.model_construct(
                messages=messages, system_prompt=system_prompt_text), options(params))
        return stream(system_prompt, SystemPromptInput.model_construct(
            message=message, system_prompt=system_prompt_text), options(params))

    @router.get("/chat/defaults")
    async def chat_defaults() -> ChatDefaults:
        """What a chat page starts from: the server's default system prompt and the input limits."""
        return ChatDefaults(system_prompt=settings.system_prompt, max_input_chars=settings.max_input_chars,
                            max_messages=settings.max_messages)

    @router.get("/chat", responses=JSON_SSE, description=CHAT_EVENTS_DOC)
    async def chat_get(query: Annotated[ChatQuery, Query()]) -> TokenStreamResponse:
        """Stream a reply, for a browser `EventSource` (which can only GET)."""
        return chat_stream(query.message, None, query.system_prompt, query)

    @router.post("/chat", responses=JSON_SSE, description=CHAT_EVENTS_DOC)
    async def chat_post(query: Annotated[ChatPostQuery, Query()],
                        body: Annotated[ChatBody | None, Body()] = None) -> TokenStreamResponse:
        """Stream a reply: the tutorial's `POST /chat?message=…&system_prompt=…`, or a JSON body."""
        if body is not None:
            return chat_stream(body.message, body.messages, body.system_prompt, body)
        if query.message is None:
            raise RequestValidationError([{"loc": ["query", "message"], "msg": "Field required: give `message` "
                                           "in the query or a JSON body", "type": "missing"}])
        return chat_stream(query.message, None, query.system_prompt, query)

    @router.post("/chat-token", responses=RAW_SSE)
    async def chat_token(message: Annotated[UserText, Query()]) -> TokenStreamResponse:
        """The tutorial's section 1: raw `data: <text>` per token."""
        return stream(single_turn, message, options(), raw=True)

    @router.post("/chat-conversation", responses=RAW_SSE)
    async def chat_conversation(request: ConversationInput) -> TokenStreamResponse:
        """The tutorial's section 3: a conversation, raw `data:` text, then `event: done` / `data: Completed`."""
        return stream(conversation, request, options(), raw=True)

    @router.post("/chat-buffered", responses=RAW_SSE)
    async def chat_buffered(message: Annotated[UserText, Query()],
                            buffer_size: Annotated[int, Query(ge=1, le=1000)] = 3) -> TokenStreamResponse:
        """The tutorial's section 5.1: `buffer_size` tokens per `data:` event (flushed after `flush_ms` anyway)."""
        return stream(single_turn, message, options(buffer_size=buffer_size), raw=True)

    @router.post("/chat-timeout", responses=RAW_SSE)
    async def chat_timeout(message: Annotated[UserText, Query()],
                           timeout: Annotated[float, Query(gt=0, le=3600)] = 30) -> TokenStreamResponse:
        """The tutorial's section 5.2: `event: error` / `data: Timeout after <timeout>s` when time runs out."""
        return stream(single_turn, message, options(timeout=timeout), raw=True)

    return router

