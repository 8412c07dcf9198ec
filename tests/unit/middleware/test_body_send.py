"""chains.middleware.body_send: a stream's chunks go straight to the outermost send; the middleware inside see its
start and its end, in order with the chunks, and the scope keeps no reference to the send afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chains.api.sse import TokenStreamResponse
from chains.common.scope import BODY_SEND
from chains.middleware.body_send import BodySendInScope
from tests.support.asgi import call, scope


class Watching:
    """A middleware that wraps `send`, as CORS or AnswerFailures do: records what passes through it."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.seen: list[dict[str, object]] = []

    async def __call__(self, request, receive, send) -> None:  # type: ignore[no-untyped-def]
        async def watching_send(message) -> None:  # type: ignore[no-untyped-def]
            self.seen.append(message)
            await send(message)

        await self.app(request, receive, watching_send)


async def events() -> AsyncIterator[bytes]:
    for n in range(3):
        yield b"data: %d\n\n" % n


async def test_the_chunks_skip_the_layers_inside_and_the_start_and_end_pass_through_them() -> None:
    watching = Watching(TokenStreamResponse(events(), heartbeat_seconds=60))
    request = scope()
    answer = await call(BodySendInScope(watching), request)
    assert answer.status == 200 and answer.complete
    assert answer.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"  # in order, chunks and end alike
    assert [m["type"] for m in watching.seen] == ["http.response.start", "http.response.body"]
    assert watching.seen[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert BODY_SEND not in request  # no scope → send → scope cycle left for the garbage collector


async def test_without_it_the_stream_sends_everything_through_the_layers() -> None:
    watching = Watching(TokenStreamResponse(events(), heartbeat_seconds=60))
    answer = await call(watching, scope())
    assert answer.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(watching.seen) == 5  # start, three chunks, end
