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

import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter
from starlette.datastructures import QueryParams
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
from chains.api.runs.protocol import Problems, RunCaller, caller_of, run_caller, validated
from chains.runnables.chat import ConversationInput, UserText

Caller = Annotated[RunCaller, Depends(run_caller)]
Stream = Response  # a TokenStreamResponse, or the JSON refusal of a run that cannot start or be joined
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


CHAT_QUERY, CHAT_POST_QUERY = TypeAdapter(ChatQuery), TypeAdapter(ChatPostQuery)
CHAT_BODY = TypeAdapter(ChatBody | None)  # as FastAPI takes `Body()` of `ChatBody | None`


def served_by(handler: Handler) -> type[APIRoute]:
    """A route that FastAPI documents from its endpoint's signature, as any other, and that `handler` serves: one
    validation of the whole request by its pydantic models, without FastAPI's per-request solving of each
    parameter (about a third of a stream's start on `/chat`, the route a burst of clients hits)."""

    class ServedByHand(APIRoute):
        def get_route_handler(self) -> Handler:
            return handler

    return ServedByHand


def query_of(model: type[BaseModel], params: QueryParams) -> dict[str, str]:
    """The model's fields as FastAPI reads them from a query: the last value of each name given."""
    return {name: params[name] for name in model.model_fields if name in params}


async def json_body(request: Request) -> Any:
    """The body as FastAPI's `Body()` reads it: None when empty, JSON when the content type says so (the
    middleware has checked that it parses), else the bytes (which the model refuses)."""
    body = await request.body()
    given = request.headers.get("content-type")
    if not body:
        return None
    if not given:
        return body
    content_type = email.message.Message()
    content_type["content-type"] = given
    subtype = content_type.get_content_subtype()
    if content_type.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json")):
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                           "input": {}, "ctx": {"error": exc.msg}}]) from None
    return body


def check(problems: Problems) -> None:
    if problems:
        raise RequestValidationError(problems)


def chat_router(serving: ChatServing) -> APIRouter:
    """The `/chat` routes, each a few lines of configuration of `serving`."""
    router = APIRouter(tags=["token stream"])

    @router.get("/chat/defaults")
    async def chat_defaults() -> ChatDefaults:
        """What a chat page starts from: the server's default system prompt and the input limits."""
        return serving.defaults()

    async def chat_get(query: ChatQuery, caller: RunCaller) -> Stream:
        return await serving.chat(query.message, None, query.system_prompt, query, caller)

    async def chat_post(query: ChatPostQuery, caller: RunCaller, body: ChatBody | None) -> Stream:
        if body is not None:
            return await serving.chat(body.message, body.messages, body.system_prompt, body, caller)
        if query.message is None and caller.last_event_id is None:
            raise RequestValidationError([{"loc": ["query", "message"], "msg": "Field required: give `message` "
                                           "in the query or a JSON body", "type": "missing"}])
        return await serving.chat(query.message, None, query.system_prompt, query, caller)

    # `/chat` is served by hand (`served_by`): the same checks, the same problems, as the signatures below say.
    async def serve_chat_get(request: Request) -> Stream:
        problems: Problems = []
        caller = caller_of(request, problems)
        query = validated(CHAT_QUERY, query_of(ChatQuery, request.query_params), ("query",), problems)
        check(problems)
        assert caller is not None and query is not None
        return await chat_get(query, caller)

    async def serve_chat_post(request: Request) -> Stream:
        problems: Problems = []
        caller = caller_of(request, problems)
        query = validated(CHAT_POST_QUERY, query_of(ChatPostQuery, request.query_params), ("query",), problems)
        body = validated(CHAT_BODY, await json_body(request), ("body",), problems)
        check(problems)
        assert caller is not None and query is not None
        return await chat_post(query, caller, body)

    async def documented_get(query: Annotated[ChatQuery, Query()], caller: Caller) -> Stream:
        """Stream a reply, for a browser `EventSource` (which can only GET)."""
        return await chat_get(query, caller)

    async def documented_post(query: Annotated[ChatPostQuery, Query()],
                              caller: Caller, body: Annotated[ChatBody | None, Body()] = None) -> Stream:
        """Stream a reply: the tutorial's `POST /chat?message=…&system_prompt=…`, or a JSON body."""
        return await chat_post(query, caller, body)

    router.add_api_route("/chat", documented_get, methods=["GET"], responses=JSON_SSE, description=CHAT_EVENTS_DOC,
                         name="chat_get", route_class_override=served_by(serve_chat_get))
    router.add_api_route("/chat", documented_post, methods=["POST"], responses=JSON_SSE,
                         description=CHAT_EVENTS_DOC, name="chat_post",
                         route_class_override=served_by(serve_chat_post))

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

