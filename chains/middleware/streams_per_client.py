"""At most MAX_STREAMS_PER_CLIENT streams in flight per client address: requests that run the model, and joins."""

from __future__ import annotations

from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.common.responses import refuse
from chains.common.scope import MODEL_RUNS, client_address, holds_a_stream


class StreamsPerClient:
    """At most `limit` requests in flight per client address that run the model or join a run (each holds a
    stream: `holds_a_stream`); more get 429 + Retry-After. A /batch counts as many runs as it has inputs. Runs
    that outlive their request are counted by the run store's budgets (MAX_LIVE_RUNS_PER_*), not here. The
    address is the connection's, or the one a trusted proxy reports (uvicorn's FORWARDED_ALLOW_IPS:
    docs/security.md)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not holds_a_stream(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        client = client_address(scope)
        runs = scope.get(MODEL_RUNS, 1)
        if self.in_flight[client] + runs > self.limit:
            asked = f"a batch of {runs} inputs counts as {runs} requests: " if runs > 1 else ""
            response = refuse(429, "too_many_streams", f"{asked}more than MAX_STREAMS_PER_CLIENT={self.limit} "
                              "requests in flight from this client")
            await response(scope, receive, send)
            return
        self.in_flight[client] += runs
        counted = True

        def release() -> None:
            nonlocal counted
            if counted:
                counted = False
                self.in_flight[client] -= runs
                if not self.in_flight[client]:
                    del self.in_flight[client]

        async def releasing_send(message: Message) -> None:
            # The response's last message ends the stream for its client, which may ask again as soon as it has it:
            # released before it is sent, not when the app returns a few steps later.
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()
            await send(message)

        try:
            await self.app(scope, receive, releasing_send)
        finally:
            release()
