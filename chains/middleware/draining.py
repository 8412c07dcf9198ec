"""Refuses new work while the replica drains after SIGTERM (chains.hosting.drain): 503 `draining` with
`Retry-After`, so that a client or a load balancer tries another replica. Joining a run, its state, its cancel,
the probes and everything else still answer: the live runs' listeners may reconnect here until they end."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from chains.common.responses import refuse
from chains.common.scope import runs_the_model
from chains.streaming.generation import DRAINING, LiveStreams


class RefuseWhileDraining:
    def __init__(self, app: ASGIApp, live: LiveStreams) -> None:
        self.app = app
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.live.draining and scope["type"] == "http" and scope["method"] != "OPTIONS" \
                and runs_the_model(scope["path"]):
            await refuse(503, "draining", DRAINING)(scope, receive, send)
            return
        await self.app(scope, receive, send)
