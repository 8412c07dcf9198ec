"""Runs in-process: the in-memory store's bounds, resuming from any event, cancel, the disconnect policies and
who may see a run. Driven by the scripted model; no server, no sockets."""

from __future__ import annotations

import asyncio
import time

import pytest

from chains.api.chat.protocol import JsonEvents
from chains.models.fake import ScriptedChatModel, scripted_tokens
from chains.runnables.chat import single_turn_chain
from chains.streaming.generation import StreamOptions, generate
from chains.streaming.run import (
    InvalidEventId,
    Listener,
    OnDisconnect,
    Run,
    parse_event_id,
)
from chains.streaming.store import (
    MemoryRunStore,
    RunLimits,
    RunNotFound,
    RunOver,
    RunStoreFull,
)
from tests.support.sse import Event, parse_sse, run_positions

JSON = JsonEvents()


async def start(store: MemoryRunStore, owner: str | None = None, on_disconnect: OnDisconnect = "cancel",
                options: StreamOptions = StreamOptions(), **model: object) -> Run:
    run = await store.create(owner, on_disconnect)
    generate(run, single_turn_chain(ScriptedChatModel(**model)), "hi", options, JSON)  # type: ignore[arg-type]
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


@pytest.mark.parametrize("k", [0, 1, 10, 21])  # after the start only, one token, the middle, the last token
async def test_resuming_after_any_event_gives_the_rest_with_none_lost_or_doubled(k: int) -> None:
    store = MemoryRunStore(RunLimits())
    run = await start(store, on_disconnect="continue", reply_tokens=21, token_delay_ms=2)
    first = await read(Listener(run), limit=k + 1)  # the start event and k tokens, then the client is gone
    rest = await read(await store.listen(run.id, None, first[-1].id))
    assert run_positions([e.id for e in first + rest])[1] == list(range(23))
    done = rest[-1].json()
    assert tokens(first + rest) == scripted_tokens(21) and "".join(tokens(first + rest)) == done["full_response"]
    assert done["status"] == "completed"


async def test_a_finished_run_replays_whole_and_a_join_after_its_end_is_over() -> None:
    store = MemoryRunStore(RunLimits())
    run = await start(store, reply_tokens=5)
    live = await read(Listener(run))
    replay = await read(await store.listen(run.id, None, None))
    assert [(e.event, e.data, e.id) for e in replay] == [(e.event, e.data, e.id) for e in live]
    with pytest.raises(RunOver):  # the terminal event's id: nothing follows (the route answers 204)
        await store.listen(run.id, None, live[-1].id)


async def test_bad_last_event_ids_are_refused_before_anything_is_sent() -> None:
    store = MemoryRunStore(RunLimits())
    run = await start(store, reply_tokens=3)
    other = await start(store, reply_tokens=3)
    await read(Listener(run))
    for bad in ("7", "garbage", f"{run.id}:x", f"{run.id}:-1", f"{other.id}:1", f"{run.id}:99"):
        with pytest.raises(InvalidEventId):
            await store.listen(run.id, None, bad)
    with pytest.raises(RunNotFound):
        await store.listen("A" * 22, None, None)
    assert parse_event_id(f" {run.id}:2 ") == (run.id, 2)


async def test_cancel_ends_every_listener_with_the_partial_reply_usage_and_reason() -> None:
    store = MemoryRunStore(RunLimits())
    run = await start(store, reply_tokens=10_000, token_delay_ms=2)
    listeners = [asyncio.create_task(read(Listener(run))) for _ in range(2)]
    await wait_until(lambda: run.next_seq > 5)
    outcome = await store.cancel(run.id, None)
    assert (outcome.cancelled, outcome.status) == (True, "cancelled")
    for events in await asyncio.gather(*listeners):
        done = events[-1]
        assert done.event == "done"
        summary = done.json()
        assert summary["status"] == summary["finish_reason"] == "cancelled"
        assert summary["full_response"] == "".join(tokens(events)) and summary["token_count"] == len(tokens(events))
        assert summary["usage"]["completion_tokens"] >= summary["token_count"] > 0
        assert summary["usage"]["prompt_tokens"] == 1
    again = await store.cancel(run.id, None)
    assert (again.cancelled, again.status) == (False, "cancelled") and "already ended" in again.detail
    finished = await start(store, reply_tokens=2)
    await read(Listener(finished))
    after_end = await store.cancel(finished.id, None)
    assert (after_end.cancelled, after_end.status) == (False, "completed")


async def test_a_run_is_visible_only_to_the_key_that_started_it() -> None:
    store = MemoryRunStore(RunLimits())
    run = await start(store, owner="key-a", reply_tokens=2)
    for owner in ("key-b", None):
        with pytest.raises(RunNotFound):
            await store.listen(run.id, owner, None)
        with pytest.raises(RunNotFound):
            await store.cancel(run.id, owner)
    assert tokens(await read(await store.listen(run.id, "key-a", None))) == scripted_tokens(2)


async def test_disconnect_policy_cancel_stops_at_once_continue_runs_to_the_end() -> None:
    store = MemoryRunStore(RunLimits())
    cancelled = await start(store, on_disconnect="cancel", reply_tokens=10_000, token_delay_ms=1)
    await read(Listener(cancelled), limit=3)
    await wait_until(lambda: cancelled.finished)
    assert cancelled.status == "cancelled"
    continued = await start(store, on_disconnect="continue", reply_tokens=30, token_delay_ms=1)
    await read(Listener(continued), limit=3)
    await wait_until(lambda: continued.finished)
    assert continued.status == "completed"
    assert tokens(await read(await store.listen(continued.id, None, None))) == scripted_tokens(30)


async def test_disconnect_grace_waits_for_a_rejoin_then_cancels() -> None:
    store = MemoryRunStore(RunLimits())
    run = await start(store, on_disconnect=0.2, reply_tokens=10_000, token_delay_ms=1)
    first = await read(Listener(run), limit=3)
    await asyncio.sleep(0.05)
    rejoined = await store.listen(run.id, None, first[-1].id)  # within the grace: the run goes on
    more = await read(rejoined, limit=3)
    assert not run.finished and tokens(first + more) == scripted_tokens(5)  # 2 tokens, then 3 more
    await wait_until(lambda: run.finished, seconds=5)  # nobody rejoins: cancelled after the grace
    assert run.status == "cancelled"


async def test_the_store_refuses_beyond_its_live_runs_and_forgets_finished_ones() -> None:
    store = MemoryRunStore(RunLimits(max_live=2, max_finished=2, ttl=60))
    slow = [await start(store, on_disconnect="continue", reply_tokens=10_000, token_delay_ms=5) for _ in range(2)]
    with pytest.raises(RunStoreFull):
        await store.create(None, "cancel")
    for run in slow:
        run.cancel()
    await wait_until(lambda: all(run.finished for run in slow))
    quick = [await start(store, reply_tokens=1) for _ in range(2)]
    for run in quick:
        await read(Listener(run))
    assert set(store.finished) == {run.id for run in quick}  # the oldest finished were forgotten first
    store.forget_expired(now=time.time() + 61)  # after RUN_TTL
    assert not store.finished
    with pytest.raises(RunNotFound):
        await store.listen(quick[0].id, None, None)


async def test_a_long_run_keeps_its_newest_events_and_refuses_a_resume_from_before_them() -> None:
    store = MemoryRunStore(RunLimits(max_events=16))
    run = await start(store, on_disconnect="continue", reply_tokens=40)
    live = await read(Listener(run))
    assert tokens(live) == scripted_tokens(40)  # a listener that keeps up loses nothing
    assert len(run.events) <= 16
    with pytest.raises(InvalidEventId, match="no longer keeps"):
        await store.listen(run.id, None, f"{run.id}:1")
    tail = await read(await store.listen(run.id, None, live[-4].id))
    assert [e.id for e in tail] == [e.id for e in live[-3:]]
