"""Cancels LangServe's /invoke and /batch, /v1/chat/completions and /v1/responses, when their client goes away."""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.common.log_text import one_line
from chains.common.scope import OPENAI_COMPLETIONS, OPENAI_RESPONSES

log = logging.getLogger(__name__)


class CancelWhenClientLeaves:
    """LangServe's /invoke and /batch answer only at the end, and nothing watches their connection meanwhile: a
    batch ran on for 14 s after its client had gone. Here the request is cancelled as soon as the client goes
    (and with it every run of its batch: `cancel_batches_together`). /v1/chat/completions and /v1/responses wait
    for their first token (or, not streaming, the whole reply) before they answer: the same watch covers that wait
    (a background response answers at once, and its run, which continues on a disconnect, is not touched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not (scope["path"].rstrip("/").endswith(
                ("/invoke", "/batch")) or scope["path"] in (OPENAI_COMPLETIONS, OPENAI_RESPONSES)):
            await self.app(scope, receive, send)
            return
        body = await receive()  # the whole body, as RequestLimits hands it on
        if body["type"] == "http.disconnect":
            return
        gone = asyncio.Event()
        answered = False
        delivered = False

        async def app_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return body
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracking_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass  # no more body can come: RequestLimits read it all
            gone.set()

        app = asyncio.ensure_future(self.app(scope, app_receive, tracking_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait((app, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not app.done() and not answered:  # the client left before its answer: stop the work
                log.info("%s: the client left; cancelling its request", one_line(scope["path"]))
                app.cancel()
            try:
                await app
            except asyncio.CancelledError:
                if not gone.is_set():
                    raise  # we ourselves are being cancelled
        finally:
            watcher.cancel()
            if not app.done():
                app.cancel()
