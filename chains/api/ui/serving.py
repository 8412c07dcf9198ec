"""`/api/chat`'s generator: a `useChat` request → the conversation chain's input → the one streaming core, as UI
message chunks; and the resume of a chat's active run.

Each reply is a run, named by the chat's id in the run store (so that `GET /api/chat/{id}/stream` finds it from any
replica that shares the store). Its disconnect policy is a grace period, by default `RESUME_GRACE_SECONDS`: the
SDK's resumable mode (`useChat({resume: true})`) reconnects after a reload or a cut, so the run must outlive its
connection for a while, and a tab that is gone for good must not keep the model busy. Stop is the chat's cancel
(`POST /api/chat/{id}/cancel`: the chat's latest run), or the run's.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from starlette.responses import PlainTextResponse, Response

from chains.api.runs.protocol import RunCaller
from chains.api.runs.serving import RUN_ERRORS, RunServing, run_refusal, token_by_token
from chains.api.sse import TokenStreamResponse
from chains.api.ui.protocol import HEADERS, UIChatRequest, UIMessageStream
from chains.common.scope import UI_CHAT
from chains.common.settings import Settings
from chains.runnables.chat import ChatChain, ConversationInput
from chains.streaming.record import StreamLabels
from chains.streaming.store import CancelOutcome, RunNotFound, RunOver


def text_refusal(status: int, message: str) -> PlainTextResponse:
    """What `DefaultChatTransport` shows its user: the body's text."""
    return PlainTextResponse(message, status_code=status)


@dataclass(frozen=True)
class UIChatServing:
    chain: ChatChain  # the conversation chain
    settings: Settings
    runs: RunServing

    async def chat(self, request: UIChatRequest, caller: RunCaller) -> Response:
        try:
            given = ConversationInput.model_validate({"messages": request.conversation()})
        except ValidationError as exc:  # the chain's limits (MAX_INPUT_CHARS, MAX_MESSAGES)
            problem = exc.errors()[0]
            return text_refusal(400, str(problem.get("msg", "invalid messages")).removeprefix("Value error, "))
        try:
            generation, listener = await self.runs.open(
                self.chain, given, token_by_token(self.settings), UIMessageStream(), caller.owner, caller.on_disconnect,
                StreamLabels(UI_CHAT, "conversation"), caller.address)
        except RUN_ERRORS as exc:
            return run_refusal(exc)  # rendered as text on this path, its Retry-After kept
        try:
            await self.runs.store.name(request.id, generation.run.id, caller.owner)
        except BaseException:  # nothing will follow this run: it must not generate for nobody
            generation.cancel()
            await listener.aclose()
            raise
        return ui_stream(TokenStreamResponse(listener, self.settings.sse_heartbeat_seconds, generation.run.id))

    async def resume(self, chat_id: str, owner: str | None) -> Response:
        """The chat's active run from its start, then live; 204 when it has none (ended, or never): the SDK then
        keeps what it has."""
        store = self.runs.store
        try:
            run_id = await store.named(chat_id, owner)
            if run_id is None or (await store.info(run_id, owner)).status != "running":
                return Response(status_code=204)
            events = await store.listen(run_id, owner, None)
        except (RunNotFound, RunOver):  # forgotten, or ended, in between
            return Response(status_code=204)
        except RUN_ERRORS as exc:
            return run_refusal(exc)
        return ui_stream(TokenStreamResponse(events, self.settings.sse_heartbeat_seconds, run_id))

    async def cancel(self, chat_id: str, owner: str | None) -> CancelOutcome | Response:
        """Stop the chat's latest reply wherever it generates: what a page's Stop calls (the SDK's `stop` only
        closes the connection, which the run outlives for its grace), even before the first chunk told it the run."""
        try:
            run_id = await self.runs.store.named(chat_id, owner)
            if run_id is None:
                return text_refusal(404, f"chat {chat_id!r} has no reply to stop")
            return await self.runs.store.cancel(run_id, owner)
        except RUN_ERRORS as exc:
            return run_refusal(exc)


def ui_stream(response: TokenStreamResponse) -> TokenStreamResponse:
    response.headers.update(HEADERS)
    return response
