"""`POST /api/chat` and `GET /api/chat/{chat_id}/stream`: the AI SDK's `useChat` endpoints (its defaults, so that a
page served from this origin needs no options). Refusals are plain text: `DefaultChatTransport` shows the body."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from chains.api.runs.protocol import ON_DISCONNECT_DOC, RunCaller, parse_on_disconnect, run_owner
from chains.api.sse import sse_event_schema
from chains.api.ui.protocol import CHAT_ID, RESUME_GRACE_SECONDS, UIChatRequest
from chains.api.ui.serving import UIChatServing
from chains.common.responses import ERROR_RESPONSES
from chains.common.scope import API_KEY_ID, client_address
from chains.streaming.store import CancelOutcome

# Every answer of these paths: the stream (`data:` lines, unnamed events), or a refusal as plain text.
_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_STREAM: dict[int | str, dict[str, Any]] = {
    **{status: {"description": spec["description"], "content": _TEXT} for status, spec in ERROR_RESPONSES.items()},
    400: {"description": "an invalid body or parameter, named", "content": _TEXT},
    200: {"description": "The UI message stream (`x-vercel-ai-ui-message-stream: v1`): `data:` lines of chunks, "
                         "then `data: [DONE]`.",
          "content": {"text/event-stream": {"schema": sse_event_schema(["message"], {})}}},
}


ON_DISCONNECT = Query(description=ON_DISCONNECT_DOC + f"; here the default is {RESUME_GRACE_SECONDS:g} s, the "
                      "grace the SDK's resumable mode needs (a reload, a cut)", max_length=16)


async def ui_run_caller(request: Request, on_disconnect: Annotated[str | None, ON_DISCONNECT] = None) -> RunCaller:
    """Who starts the reply's run, and its disconnect policy: a grace period unless the request says otherwise."""
    policy = parse_on_disconnect(RESUME_GRACE_SECONDS if on_disconnect is None else on_disconnect,
                                 ["query", "on_disconnect"])
    return RunCaller(request.scope.get(API_KEY_ID), None, policy, client_address(request.scope))


def ui_chat_router(serving: UIChatServing) -> APIRouter:
    router = APIRouter(prefix="/api/chat", tags=["AI SDK"])

    @router.post("", responses=_STREAM, response_class=Response)
    async def chat(request: UIChatRequest, run: Annotated[RunCaller, Depends(ui_run_caller)]) -> Response:
        """A reply to the conversation's last user message, as `useChat` streams it; a run named by the chat's id."""
        return await serving.chat(request, run)

    @router.get("/{chat_id}/stream", responses={**_STREAM, 204: {"description": "no active run for this chat"}},
                response_class=Response)
    async def resume(chat_id: Annotated[str, Path(pattern=CHAT_ID.pattern)],
                     owner: Annotated[str | None, Depends(run_owner)]) -> Response:
        """The chat's active run, replayed from its start and followed live (`useChat({resume: true})`)."""
        return await serving.resume(chat_id, owner)

    @router.post("/{chat_id}/cancel", response_model=CancelOutcome, responses={
        **{status: spec for status, spec in _STREAM.items() if status != 200},
        404: {"description": "the chat has no reply", "content": _TEXT}})
    async def cancel(chat_id: Annotated[str, Path(pattern=CHAT_ID.pattern)],
                     owner: Annotated[str | None, Depends(run_owner)]) -> Any:
        """Stop the chat's latest reply (its run), wherever it generates: the stream ends with `abort`."""
        return await serving.cancel(chat_id, owner)

    return router
