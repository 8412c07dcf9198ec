"""The Starlette response every SSE surface returns: a run's listener as a `text/event-stream`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from chains.common.scope import BODY_SEND
from chains.models.base import closing

HEARTBEAT = b": heartbeat\n\n"


def sse_event_schema(events: list[str] | None, data: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for one event of a `text/event-stream`: on OpenAPI 3.1 a stream's schema describes one parsed event
    (as the 3.2 `itemSchema` does, and as schemathesis reads it), its `data` a string; `events` the event names
    (None: any)."""
    event: dict[str, Any] = {"type": "string"} if events is None else {"type": "string", "enum": events}
    return {"type": "object", "required": ["data"],
            "properties": {"event": event, "id": {"type": "string"}, "data": {"type": "string", **data}}}


def sse_responses(events: list[str] | None, data: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """A 200 that is a `text/event-stream` of such events."""
    return {200: {"description": "A `text/event-stream` of the events below.",
                  "content": {"text/event-stream": {"schema": sse_event_schema(events, data)}}}}


class TokenStreamResponse(StreamingResponse):
    """A `text/event-stream` of pre-encoded events that owns its heartbeat and its disconnect watch.

    The heartbeat is a comment sent only when nothing else was sent for `heartbeat_seconds` (one timer per
    stream, nothing per event). The disconnect watch reads the request channel while the events flow, so a
    client that goes away ends the stream at once, not at the next failed write: the events' iterator (a run's
    listener) is closed, and the run's disconnect policy decides about the generation. Ours rather than
    sse-starlette's response, whose private lock and state we had to override. The content type is exactly
    `text/event-stream` (SSE is UTF-8 by definition; Starlette would append a charset).
    """

    def __init__(self, events: AsyncIterator[bytes], heartbeat_seconds: float, run_id: str | None = None) -> None:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if run_id is not None:
            headers["X-Run-Id"] = run_id
        super().__init__(events, headers=headers)
        self.events = events  # Starlette's body_iterator, as we typed it
        self.heartbeat_seconds = heartbeat_seconds
        self.last_sent = 0.0
        self.finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self.last_sent = asyncio.get_running_loop().time()
        chunks = scope.get(BODY_SEND, send)  # past the middleware, which watch only the start and the end
        tasks = (asyncio.ensure_future(self._send_events(chunks, send)),
                 asyncio.ensure_future(self._watch_disconnect(receive)), asyncio.ensure_future(self._heartbeat(chunks)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Closed even if the sending task was cancelled before it began: a listener leaving is what lets
            # the run's disconnect policy act.
            close = getattr(self.events, "aclose", None)
            if close is not None:
                await close()
        sending = tasks[0]
        failure = sending.exception() if sending in done and not sending.cancelled() else None
        if failure is not None:
            raise failure

    async def _send_events(self, send_chunk: Send, send: Send) -> None:
        loop = asyncio.get_running_loop()
        async with closing(self.events) as events:
            async for chunk in events:
                await send_chunk({"type": "http.response.body", "body": chunk, "more_body": True})
                self.last_sent = loop.time()
        self.finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _watch_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _heartbeat(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.last_sent + self.heartbeat_seconds - loop.time())
            if self.finished:
                return
            if loop.time() - self.last_sent >= self.heartbeat_seconds:
                await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                self.last_sent = loop.time()
