"""Drives a pure-ASGI middleware in-process: a request's scope and messages in, the messages it sent out. No
server, no sockets, no FastAPI app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]


def scope(method: str = "POST", path: str = "/chat", headers: dict[str, str] | None = None,
          client: str = "10.0.0.1", query: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode("latin-1", "replace"), "query_string": query, "root_path": "",
            "scheme": "http", "server": ("127.0.0.1", 8000), "client": (client, 50000),
            "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()], **extra}


class Client:
    """The client side of one request: its body in `chunks`, then (when `leave` is set) a disconnect."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks) or [b""]
        self.leave = asyncio.Event()
        self.reads = 0

    async def receive(self) -> Message:
        self.reads += 1
        if self.chunks:
            body = self.chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(self.chunks)}
        await self.leave.wait()
        return {"type": "http.disconnect"}


@dataclass
class Answer:
    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {k.decode().lower(): v.decode() for k, v in start["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    @property
    def complete(self) -> bool:
        bodies = [m for m in self.messages if m["type"] == "http.response.body"]
        return bool(bodies) and not bodies[-1].get("more_body", False)

    def json(self) -> Any:
        return json.loads(self.body)


async def call(app: Callable[..., Awaitable[None]], request: dict[str, Any], client: Client | None = None,
               timeout: float = 5) -> Answer:
    client = client or Client()
    answer = Answer()

    async def send(message: Message) -> None:
        answer.messages.append(message)

    await asyncio.wait_for(app(request, client.receive, send), timeout)
    return answer


class Inner:
    """The app behind the middleware: reads the whole body and answers 200 with what it saw. `hold`, when given,
    keeps it running (a stream in flight) until set."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.hold = hold

    async def __call__(self, request: dict[str, Any], receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        body = b""
        if request["method"] not in ("GET", "HEAD", "OPTIONS"):
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body", False):
                    break
        self.calls.append({"scope": request, "body": body})
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok:" + body})

    @property
    def called(self) -> bool:
        return bool(self.calls)
