"""Route failures answered with the one error model, and responses that fail mid-body ended cleanly."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.common.log_text import one_line
from chains.common.responses import failure_response

log = logging.getLogger(__name__)


class AnswerFailures:
    """An exception that escapes a route: before the response has started, answered here with the status that
    names its cause (chains.common.errors) and no exception text (an id that the log has too); the connection stays
    usable. (Left to Starlette, the exception is re-raised after the 500 and uvicorn drops the connection.)
    After it has started — LangServe's stream endpoints send their `event: error` and then re-raise, and on
    SIGTERM sse-starlette stops them without a last body message — the response is ended properly instead of
    cut mid-body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "complete": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
            if state["started"] and not state["complete"]:  # returned mid-body (sse-starlette on shutdown)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception as exc:
            if not state["started"]:
                await failure_response(exc, f'{scope["method"]} {scope["path"]}')(scope, receive, send)
            elif not state["complete"]:
                log.warning("%s failed after its response started; ending it cleanly", one_line(scope["path"]),
                            exc_info=True)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                log.warning("%s failed after its response was sent", one_line(scope["path"]), exc_info=True)
