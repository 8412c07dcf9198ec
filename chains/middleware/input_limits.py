"""The app's input limits (MAX_INPUT_CHARS, MAX_MESSAGES) in force for each request it serves: the request
models' validators read them (chains.runnables.limits), wherever the request is validated (our routes,
LangServe's, /v1) and in the generation it starts."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from chains.runnables.limits import InputLimits, input_limits


class InputLimitsInScope:
    def __init__(self, app: ASGIApp, limits: InputLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with input_limits(self.limits):
            await self.app(scope, receive, send)
