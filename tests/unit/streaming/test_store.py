"""chains.streaming.store's MemoryRunStore in-process: its bounds, resuming from any event, cancel, and who may
see a run. Driven by the scripted model; no server, no sockets."""

from __future__ import annotations

import asyncio
import time

import pytest

from chains.common.settings import load_settings
from chains.models.fake import scripted_tokens
from chains.streaming.run import InvalidEventId, Listener, parse_event_id
from chains.streaming.store import (
    MemoryRunStore,
    RunLimits,
    RunNotFound,
    RunOver,
    RunStoreFull,
    TooManyRuns,
    build_run_store,
    check_resume,
    resume_after,
)
from tests.support.sse import run_positions
from tests.unit.streaming.runs import read, start, tokens, wait_until


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


async def test_a_name_finds_the_latest_run_given_it_by_its_owner_while_the_store_keeps_it() -> None:
    store = MemoryRunStore(RunLimits(max_live=4, max_finished=1, ttl=60))
    first = await start(store, owner="key-a", reply_tokens=1)
    await store.name("chat-1", first.id, "key-a")
    assert await store.named("chat-1", "key-a") == first.id
    assert await store.named("chat-1", "key-b") is None and await store.named("chat-1", None) is None
    await read(Listener(first))
    second = await start(store, owner="key-a", reply_tokens=1)
    await store.name("chat-1", second.id, "key-a")  # the chat's next reply replaces it
    assert await store.named("chat-1", "key-a") == second.id
    await read(Listener(second))
    store.forget_expired(now=time.time() + 61)
    assert await store.named("chat-1", "key-a") is None  # its run forgotten: so is the name


# --- the resume rules, wherever a run is kept -------------------------------------------------------------------

def test_a_resume_names_an_event_of_this_run() -> None:
    run_id, other = "A" * 22, "B" * 22
    assert resume_after(run_id, None) == -1  # from the start
    assert resume_after(run_id, f"{run_id}:7") == 7
    with pytest.raises(InvalidEventId, match="belongs to another run"):
        resume_after(run_id, f"{other}:7")
    with pytest.raises(InvalidEventId, match="is not an event id of this server"):
        resume_after(run_id, "7")


def test_a_resume_is_after_an_event_the_run_still_keeps() -> None:
    run_id = "A" * 22
    for after in (4, 7, 10):  # the run keeps seq 5…10: a resume after 4 (the one before them) to after 10
        check_resume(run_id, after, 5, 10, ended=False)
    with pytest.raises(InvalidEventId, match="beyond the run's events"):
        check_resume(run_id, 11, 5, 10, ended=False)
    with pytest.raises(InvalidEventId, match=r"no longer keeps the events after .*:3 \(it keeps the last 6\)"):
        check_resume(run_id, 3, 5, 10, ended=False)
    with pytest.raises(RunOver):  # after the terminal event nothing follows
        check_resume(run_id, 10, 5, 10, ended=True)
    check_resume(run_id, 9, 5, 10, ended=True)  # the terminal event itself still follows


# --- the store's books ------------------------------------------------------------------------------------------

async def test_a_runs_state_and_the_stores_counts_follow_its_life() -> None:
    store = MemoryRunStore(RunLimits())
    run = await start(store, on_disconnect="continue", reply_tokens=10_000, token_delay_ms=2)
    listener = Listener(run)
    await wait_until(lambda: run.next_seq > 3)
    live = await store.info(run.id, None)
    assert (live.run_id, live.status, live.listeners, live.ended) == (run.id, "running", 1, None)
    assert store.stats() == {"live": 1, "finished": 0, "started": 1}
    outcome = await store.cancel(run.id, None)
    assert (outcome.cancelled, outcome.status, outcome.detail) == (True, "cancelled", "the run was cancelled")
    await read(listener)
    ended = await store.info(run.id, None)
    assert ended.status == "cancelled" and ended.events == run.next_seq and ended.ended is not None
    assert ended.listeners == 0 and store.stats() == {"live": 0, "finished": 1, "started": 1}


async def test_a_run_that_never_generated_can_be_withdrawn() -> None:
    store = MemoryRunStore(RunLimits(max_live=1))
    run = store.create_now(None, "cancel")
    assert store.holds(run.id)
    with pytest.raises(RunStoreFull):
        store.create_now(None, "cancel")
    store.withdraw(run)  # a shared store refused it: as if never created
    assert not store.holds(run.id) and store.stats() == {"live": 0, "finished": 0, "started": 0}
    store.withdraw(run)  # twice: nothing more
    assert store.stats()["started"] == 0
    assert store.create_now(None, "cancel") is not None  # its place is free again


async def test_with_max_finished_zero_a_finished_run_is_forgotten_at_once() -> None:
    store = MemoryRunStore(RunLimits(max_finished=0))
    run = await start(store, reply_tokens=2)
    await read(Listener(run))
    assert not store.holds(run.id)
    with pytest.raises(RunNotFound):
        await store.info(run.id, None)


def test_the_settings_choose_the_memory_store_and_its_bounds() -> None:
    settings = load_settings(_env_file=None, chat_provider="fake", run_max_events=64, run_max_live=3,
                             run_max_finished=5, run_ttl=9, max_live_runs_per_address=4, max_live_runs_per_key=6)
    store = build_run_store(settings)
    assert isinstance(store, MemoryRunStore)
    assert store.limits == RunLimits(max_events=64, max_live=3, max_finished=5, ttl=9, max_live_per_address=4,
                                     max_live_per_key=6)


async def test_live_runs_count_against_their_address_whether_or_not_anyone_listens() -> None:
    """The hole: a client that starts runs with on_disconnect=continue and hangs up had its runs counted nowhere,
    and took the whole RUN_MAX_LIVE. Now the address that started them holds them until they end."""
    store = MemoryRunStore(RunLimits(max_live_per_address=2))
    runs = [await start(store, on_disconnect="continue", address="10.0.0.1", reply_tokens=50, token_delay_ms=20)
            for _ in range(2)]  # nobody listens: both generate on
    with pytest.raises(TooManyRuns) as refused:
        await start(store, address="10.0.0.1")
    assert refused.value.live == 2 and "has 2 runs generating" in str(refused.value)
    assert "MAX_LIVE_RUNS_PER_ADDRESS=2" in str(refused.value) and runs[0].id not in str(refused.value)
    other = await start(store, address="10.0.0.2", reply_tokens=1)  # another address has its own budget
    assert store.live_by_address == {"10.0.0.1": 2, "10.0.0.2": 1}
    runs[0].cancel()
    await wait_until(lambda: runs[0].finished and other.finished)
    assert store.live_by_address == {"10.0.0.1": 1}  # ended runs leave the count
    await start(store, address="10.0.0.1", reply_tokens=1)  # room again
    runs[1].cancel()
    await wait_until(lambda: not store.live)
    assert not store.live_by_address and not store.live_by_key  # nothing kept for clients that have no runs


async def test_live_runs_count_against_their_key_from_any_address() -> None:
    store = MemoryRunStore(RunLimits(max_live_per_address=10, max_live_per_key=2))
    for address in ("10.0.0.1", "10.0.0.2"):
        await start(store, owner="key-a", on_disconnect="continue", address=address, reply_tokens=50,
                    token_delay_ms=20)
    with pytest.raises(TooManyRuns) as refused:
        await start(store, owner="key-a", address="10.0.0.3")
    assert refused.value.budget == "key" and "MAX_LIVE_RUNS_PER_KEY=2" in str(refused.value)
    await start(store, owner="key-b", address="10.0.0.3", reply_tokens=1)  # another key from there is served
    assert store.stats()["live"] >= 2
    for run in list(store.live.values()):
        run.cancel()
    await wait_until(lambda: not store.live)
    assert not store.live_by_key


async def test_a_withdrawn_run_leaves_the_budgets() -> None:
    store = MemoryRunStore(RunLimits(max_live_per_address=1, max_live_per_key=1))
    run = store.create_now("key-a", "cancel", "10.0.0.1")
    store.withdraw(run)
    assert not store.live_by_address and not store.live_by_key
    store.withdraw(store.create_now("key-a", "cancel", "10.0.0.1"))  # room again
