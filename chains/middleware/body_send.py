"""Streams' body chunks past the middleware. Pure ASGI, as every middleware here.

A token is one body message; each middleware that wraps `send` adds an awaited call to every one of them (six
layers: ~10% of a paced token's CPU at 1,000 streams). The outermost middleware puts its own `send` in the scope
(`chains.common.scope.BODY_SEND`) and `TokenStreamResponse` sends the chunks between the start and the last
body message straight to it. So a middleware inside may watch `http.response.start` and the last body message
(`more_body` false), which still pass through every layer, but not the chunks between.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from chains.common.scope import BODY_SEND


class BodySendInScope:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[BODY_SEND] = send
            try:
                await self.app(scope, receive, send)
            finally:
                del scope[BODY_SEND]  # the scope refers to the send, the send to the scope: no cycle left behind
        else:
            await self.app(scope, receive, send)
