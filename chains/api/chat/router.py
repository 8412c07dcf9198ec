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

from fastapi import APIRouter, Body, Depends, Query
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from chains.api.chat.protocol import (
    CHAT_EVENTS_DOC,
    JSON_SSE,
    RAW_SSE,
    ChatBody,
    ChatDefaults,
    ChatPostQuery,
    ChatQuery,
)
from chains.api.chat.serving import ChatServing
from chains.api.runs.protocol import RunCaller, run_caller
from chains.runnables.chat import ConversationInput, UserText

Caller = Annotated[RunCaller, Depends(run_caller)]
Stream = Response  # a TokenStreamResponse, or the JSON refusal of a run that cannot start or be joined


def chat_router(serving: ChatServing) -> APIRouter:
    """The `/chat` routes, each a few lines of configuration of `serving`."""
    router = APIRouter(tags=["token stream"])

    @router.get("/chat/defaults")
    async def chat_defaults() -> ChatDefaults:
        """What a chat page starts from: the server's default system prompt and the input limits."""
        return serving.defaults()

    @router.get("/chat", responses=JSON_SSE, description=CHAT_EVENTS_DOC)
    async def chat_get(query: Annotated[ChatQuery, Query()], caller: Caller) -> Stream:
        """Stream a reply, for a browser `EventSource` (which can only GET)."""
        return await serving.chat(query.message, None, query.system_prompt, query, caller)

    @router.post("/chat", responses=JSON_SSE, description=CHAT_EVENTS_DOC)
    async def chat_post(query: Annotated[ChatPostQuery, Query()],
                        caller: Caller, body: Annotated[ChatBody | None, Body()] = None) -> Stream:
        """Stream a reply: the tutorial's `POST /chat?message=…&system_prompt=…`, or a JSON body."""
        if body is not None:
            return await serving.chat(body.message, body.messages, body.system_prompt, body, caller)
        if query.message is None and caller.last_event_id is None:
            raise RequestValidationError([{"loc": ["query", "message"], "msg": "Field required: give `message` "
                                           "in the query or a JSON body", "type": "missing"}])
        return await serving.chat(query.message, None, query.system_prompt, query, caller)

    @router.post("/chat-token", responses=RAW_SSE)
    async def chat_token(message: Annotated[UserText, Query()], caller: Caller) -> Stream:
        """The tutorial's section 1: raw `data: <text>` per token."""
        return await serving.stream("/chat-token", "single-turn", message, serving.options(), caller, raw=True)

    @router.post("/chat-conversation", responses=RAW_SSE)
    async def chat_conversation(request: ConversationInput, caller: Caller) -> Stream:
        """The tutorial's section 3: a conversation, raw `data:` text, then `event: done` / `data: Completed`."""
        return await serving.stream("/chat-conversation", "conversation", request, serving.options(), caller,
                                    raw=True)

    @router.post("/chat-buffered", responses=RAW_SSE)
    async def chat_buffered(message: Annotated[UserText, Query()],
                            caller: Caller, buffer_size: Annotated[int, Query(ge=1, le=1000)] = 3) -> Stream:
        """The tutorial's section 5.1: `buffer_size` tokens per `data:` event (flushed after `flush_ms` anyway)."""
        return await serving.stream("/chat-buffered", "single-turn", message,
                                    serving.options(buffer_size=buffer_size), caller, raw=True)

    @router.post("/chat-timeout", responses=RAW_SSE)
    async def chat_timeout(message: Annotated[UserText, Query()],
                           caller: Caller, timeout: Annotated[float, Query(gt=0, le=3600)] = 30) -> Stream:
        """The tutorial's section 5.2: `event: error` / `data: Timeout after <timeout>s` when time runs out."""
        return await serving.stream("/chat-timeout", "single-turn", message, serving.options(timeout=timeout),
                                    caller, raw=True)

    return router

