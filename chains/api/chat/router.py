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

from typing import Annotated

from fastapi import APIRouter, Body, Query
from fastapi.exceptions import RequestValidationError

from chains.api.chat.protocol import (
    CHAT_EVENTS_DOC, JSON_SSE, RAW_SSE, ChatBody, ChatDefaults, ChatPostQuery, ChatQuery,
)
from chains.api.chat.serving import ChatServing
from chains.api.streaming import TokenStreamResponse
from chains.chat import ConversationInput, UserText


def chat_router(serving: ChatServing) -> APIRouter:
    """The `/chat` routes, each a few lines of configuration of `serving`."""
    router = APIRouter(tags=["token stream"])

    @router.get("/chat/defaults")
    async def chat_defaults() -> ChatDefaults:
        """What a chat page starts from: the server's default system prompt and the input limits."""
        return serving.defaults()

    @router.get("/chat", responses=JSON_SSE, description=CHAT_EVENTS_DOC)
    async def chat_get(query: Annotated[ChatQuery, Query()]) -> TokenStreamResponse:
        """Stream a reply, for a browser `EventSource` (which can only GET)."""
        return serving.chat(query.message, None, query.system_prompt, query)

    @router.post("/chat", responses=JSON_SSE, description=CHAT_EVENTS_DOC)
    async def chat_post(query: Annotated[ChatPostQuery, Query()],
                        body: Annotated[ChatBody | None, Body()] = None) -> TokenStreamResponse:
        """Stream a reply: the tutorial's `POST /chat?message=…&system_prompt=…`, or a JSON body."""
        if body is not None:
            return serving.chat(body.message, body.messages, body.system_prompt, body)
        if query.message is None:
            raise RequestValidationError([{"loc": ["query", "message"], "msg": "Field required: give `message` "
                                           "in the query or a JSON body", "type": "missing"}])
        return serving.chat(query.message, None, query.system_prompt, query)

    @router.post("/chat-token", responses=RAW_SSE)
    async def chat_token(message: Annotated[UserText, Query()]) -> TokenStreamResponse:
        """The tutorial's section 1: raw `data: <text>` per token."""
        return serving.stream("single-turn", message, serving.options(), raw=True)

    @router.post("/chat-conversation", responses=RAW_SSE)
    async def chat_conversation(request: ConversationInput) -> TokenStreamResponse:
        """The tutorial's section 3: a conversation, raw `data:` text, then `event: done` / `data: Completed`."""
        return serving.stream("conversation", request, serving.options(), raw=True)

    @router.post("/chat-buffered", responses=RAW_SSE)
    async def chat_buffered(message: Annotated[UserText, Query()],
                            buffer_size: Annotated[int, Query(ge=1, le=1000)] = 3) -> TokenStreamResponse:
        """The tutorial's section 5.1: `buffer_size` tokens per `data:` event (flushed after `flush_ms` anyway)."""
        return serving.stream("single-turn", message, serving.options(buffer_size=buffer_size), raw=True)

    @router.post("/chat-timeout", responses=RAW_SSE)
    async def chat_timeout(message: Annotated[UserText, Query()],
                           timeout: Annotated[float, Query(gt=0, le=3600)] = 30) -> TokenStreamResponse:
        """The tutorial's section 5.2: `event: error` / `data: Timeout after <timeout>s` when time runs out."""
        return serving.stream("single-turn", message, serving.options(timeout=timeout), raw=True)

    return router

