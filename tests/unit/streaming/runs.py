"""What the run and store tests share: runs generating with the scripted model in a store, read as a client
would (all of it, or the first events and then gone)."""

from __future__ import annotations

import asyncio
import time

from chains.api.chat.protocol import JsonEvents
from chains.models.fake import ScriptedChatModel
from chains.runnables.chat import single_turn_chain
from chains.streaming.generation import StreamOptions, generate
from chains.streaming.run import OnDisconnect, Run
from chains.streaming.store import MemoryRunStore
from tests.support.sse import Event, parse_sse

JSON = JsonEvents()


async def start(store: MemoryRunStore, owner: str | None = None, on_disconnect: OnDisconnect = "cancel",
                options: StreamOptions | None = None, address: str | None = None, **model: object) -> Run:
    run = await store.create(owner, on_disconnect, address)
    generate(run, single_turn_chain(ScriptedChatModel(**model)), "hi", options or StreamOptions(), JSON)  # type: ignore[arg-type]
    return run


async def read(events: object, limit: int | None = None) -> list[Event]:
    """Events from a listener, all of them or the first `limit` (then the listener is closed)."""
    received: list[Event] = []
    async for chunk in events:  # type: ignore[attr-defined]
        received += parse_sse(chunk.decode())
        if limit is not None and len(received) >= limit:
            await events.aclose()  # type: ignore[attr-defined]
            return received[:limit]  # what a client that drops here has seen
    return received


def tokens(events: list[Event]) -> list[str]:
    return [e.json()["token"] for e in events if e.event == "message"]


async def wait_until(condition: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)
