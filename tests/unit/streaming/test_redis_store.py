"""The Redis run store in-process against a real redis-server: two stores in one event loop stand for two replicas
(A generates, B joins and cancels). The generation is the real streaming core driven by the scripted model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from chains.api.chat.protocol import JsonEvents
from chains.common.settings import ConfigError
from chains.models.fake import ScriptedChatModel, scripted_tokens
from chains.runnables.chat import single_turn_chain
from chains.streaming.generation import StreamOptions, generate
from chains.streaming.redis_mirror import (
    FINISHED_KEY,
    LIVE_KEY,
    RUN_LIFE,
    address_key,
    entry_seq,
    events_key,
    first_seq,
    meta_key,
    owner_key,
)
from chains.streaming.redis_store import COMMAND_CONNECTIONS, RedisRunStore
from chains.streaming.run import InvalidEventId, Run
from chains.streaming.store import RunLimits, RunNotFound, RunOver, RunStoreFull, RunStoreUnavailable, TooManyRuns
from tests.support.servers import LiveServer, free_port, start_redis, stop_process
from tests.support.sse import Event, parse_sse

SECONDS = 10  # no step of a test waits longer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[LiveServer]:
    server = start_redis()
    yield server
    stop_process(server)


@pytest.fixture
def url(redis_server: LiveServer) -> str:
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
async def replicas(url: str) -> AsyncIterator[tuple[RedisRunStore, RedisRunStore]]:
    a, b = RedisRunStore(url, RunLimits()), RedisRunStore(url, RunLimits())
    yield a, b
    await a.close()
    await b.close()


async def start(store: RedisRunStore, tokens: int = 10, delay_ms: float = 0, owner: str | None = None,
                on_disconnect: str | float = "continue", address: str | None = None) -> Run:
    run = await store.create(owner, on_disconnect, address)  # type: ignore[arg-type]
    chain = single_turn_chain(ScriptedChatModel(reply_tokens=tokens, token_delay_ms=delay_ms))  # type: ignore[arg-type]
    generate(run, chain, "hi", StreamOptions(), JsonEvents())
    return run


async def read_all(events: AsyncIterator[bytes]) -> list[Event]:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in events])
    return parse_sse((await asyncio.wait_for(collect(), SECONDS)).decode())


async def until(condition: object, seconds: float = SECONDS) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def tokens_of(events: list[Event]) -> list[str]:
    return [event.json()["token"] for event in events if event.event == "message"]


async def test_a_run_generating_on_a_is_replayed_and_followed_through_b(replicas: tuple[RedisRunStore, ...]) -> None:
    a, b = replicas
    run = await start(a, tokens=12, delay_ms=20)
    await until(lambda: run.next_seq >= 4)
    events = await read_all(await b.listen(run.id, None, None))  # joins mid-run: replay, then live
    assert [e.event for e in events] == ["start", *["message"] * 12, "done"]
    assert tokens_of(events) == scripted_tokens(12)
    assert [e.id for e in events] == [f"{run.id}:{seq}" for seq in range(14)]
    assert events[-1].json()["full_response"] == "".join(scripted_tokens(12))
    assert a.stats()["started"] == 1 and b.stats() == {"live": 0, "finished": 0, "started": 0}


async def test_resume_through_b_after_any_event_loses_and_repeats_nothing(replicas: tuple[RedisRunStore, ...]) -> None:
    a, b = replicas
    run = await start(a, tokens=6)
    await until(lambda: run.finished and run.id not in a.mirror.live)
    full = parse_sse(b"".join(run.events).decode())
    for k in range(len(full) - 1):
        after = await read_all(await b.listen(run.id, None, f"{run.id}:{k}"))
        assert after == full[k + 1:]
    with pytest.raises(RunOver):  # the terminal event: nothing follows (answered 204)
        await b.listen(run.id, None, f"{run.id}:{len(full) - 1}")


async def test_b_refuses_what_a_would_refuse(replicas: tuple[RedisRunStore, ...]) -> None:
    a, b = replicas
    run = await start(a, tokens=3, owner="key-1")
    other = await start(a, tokens=3, owner="key-1")
    await until(lambda: run.finished and other.finished and not a.mirror.live)
    with pytest.raises(RunNotFound):
        await b.listen(run.id, "key-2", None)  # another key: as if it did not exist
    with pytest.raises(RunNotFound):
        await b.listen(run.id, None, None)
    with pytest.raises(RunNotFound):
        await b.cancel(run.id, "key-2")
    with pytest.raises(RunNotFound):
        await b.listen("A" * 22, "key-1", None)
    with pytest.raises(InvalidEventId, match="another run"):
        await b.listen(run.id, "key-1", f"{other.id}:1")
    with pytest.raises(InvalidEventId, match="beyond"):  # a finished run: no waiting for more
        await b.listen(run.id, "key-1", f"{run.id}:99")


async def test_cancel_through_b_stops_the_generation_on_a(replicas: tuple[RedisRunStore, ...]) -> None:
    a, b = replicas
    run = await start(a, tokens=1000, delay_ms=20)
    await until(lambda: run.next_seq >= 3)
    outcome = await b.cancel(run.id, None)
    assert (outcome.cancelled, outcome.status) == (True, "cancelled")
    assert run.status == "cancelled"  # A's run had ended when B answered
    done = parse_sse(run.events[-1].decode())[0]
    assert done.event == "done" and done.json()["finish_reason"] == "cancelled"
    again = await b.cancel(run.id, None)
    assert (again.cancelled, again.status) == (False, "cancelled") and "already ended" in again.detail


async def test_a_listener_through_b_counts_for_the_disconnect_policy_on_a(replicas: tuple[RedisRunStore, ...]) -> None:
    a, b = replicas
    run = await start(a, tokens=50, delay_ms=20, on_disconnect=0.3)  # cancelled 0.3 s after its last listener
    await until(lambda: run.next_seq >= 2)
    follower = await b.listen(run.id, None, f"{run.id}:0")
    await until(lambda: run.listeners == 1)
    await asyncio.sleep(0.6)
    assert not run.finished  # B's listener kept it going past the grace
    await follower.aclose()  # type: ignore[attr-defined]
    await until(lambda: run.status == "cancelled", 3)


async def test_max_live_counts_the_runs_of_every_replica(url: str) -> None:
    limits = RunLimits(max_live=2)
    a, b = RedisRunStore(url, limits), RedisRunStore(url, limits)
    try:
        await start(a, tokens=1000, delay_ms=20)
        second = await start(b, tokens=1000, delay_ms=20)
        with pytest.raises(RunStoreFull, match="RUN_MAX_LIVE"):
            await a.create(None, "continue")
        assert a.stats()["live"] == 1 and a.stats()["started"] == 1  # the refused run left nothing behind
        await b.cancel(second.id, None)
        await until(lambda: second.id not in b.mirror.live)
        await start(a, tokens=1)  # a place is free again
    finally:
        await a.close()
        await b.close()


async def test_the_budgets_of_an_address_and_a_key_count_the_runs_of_every_replica(url: str) -> None:
    """A client cannot escape its budget by reaching another replica: the counts are in Redis."""
    limits = RunLimits(max_live_per_address=2, max_live_per_key=3)
    a, b = RedisRunStore(url, limits), RedisRunStore(url, limits)
    try:
        first = await start(a, tokens=1000, delay_ms=20, owner="key-k", address="10.0.0.1")
        await start(b, tokens=1000, delay_ms=20, owner="key-k", address="10.0.0.1")
        with pytest.raises(TooManyRuns) as refused:
            await a.create("key-k", "continue", "10.0.0.1")
        assert refused.value.budget == "address" and refused.value.live == 2
        assert a.stats()["live"] == 1  # the refused run left nothing behind here
        await start(b, tokens=1000, delay_ms=20, owner="key-k", address="10.0.0.2")  # the key's third
        with pytest.raises(TooManyRuns) as refused:
            await b.create("key-k", "continue", "10.0.0.3")
        assert refused.value.budget == "key" and refused.value.live == 3
        await start(a, tokens=1, owner="key-other", address="10.0.0.3")  # others are served
        await b.cancel(first.id, "key-k")  # through the other replica
        await until(lambda: first.finished and first.id not in a.mirror.live)
        await start(b, tokens=1, owner="key-k", address="10.0.0.1")  # room again, on either replica
        for store in (a, b):
            for run in list(store.local.live.values()):
                run.cancel()
        await until(lambda: not a.mirror.live and not b.mirror.live)
        keys = redis.Redis.from_url(url)
        assert keys.zcard(address_key("10.0.0.1")) == keys.zcard(owner_key("key-k")) == 0  # nothing kept counted
    finally:
        await a.close()
        await b.close()


async def test_the_lease_renewal_moves_a_live_runs_deadline_and_its_clients_budgets_hold_it(url: str) -> None:
    """A live run's lease (its deadline in the store's live set) moves on with each renewal; its place in its
    address's and its key's budgets lasts until it ends (RUN_LIFE at most), whatever the lease."""
    a = RedisRunStore(url, RunLimits(max_live_per_address=2, max_live_per_key=2))
    try:
        run = await start(a, tokens=1000, delay_ms=20, owner="key-k", address="10.0.0.1")
        await until(lambda: a.mirror.live[run.id].registered)
        later = time.time() + 1000
        pipe = a.redis.pipeline(transaction=False)
        a.mirror._renew_leases(pipe, later)
        await pipe.execute()
        keys = redis.Redis.from_url(url)
        assert keys.zscore(LIVE_KEY, run.id) == pytest.approx(later + a.mirror.leases.seconds)
        for client_key in (address_key("10.0.0.1"), owner_key("key-k")):
            assert keys.zscore(client_key, run.id) == pytest.approx(run.created + RUN_LIFE, abs=5)
            assert keys.pttl(client_key) > (RUN_LIFE - 5) * 1000
        run.cancel()
        await until(lambda: run.id not in a.mirror.live)
        assert keys.zscore(address_key("10.0.0.1"), run.id) is None and keys.zscore(LIVE_KEY, run.id) is None
    finally:
        await a.close()


async def test_a_run_that_ends_as_the_store_closes_is_written_whole(url: str) -> None:
    """The shutdown's last events (the terminal events of the streams it ends) are appended just before the store
    closes, when the flusher may not run again: close() writes them itself. Without its flush the flusher is
    cancelled before it wakes, and a replica following the run never learns how it ended."""
    a = RedisRunStore(url, RunLimits())
    run = await a.create(None, "continue")
    await until(lambda: run.id in a.mirror.live and not a.mirror.dirty)  # registered, start-up written
    for seq in range(5):  # no await from here to close(): the flusher gets no turn
        run.append(run.event_id(seq) + b" event")
    run.finish(b"terminal", "completed")
    await a.close()
    keys = redis.Redis.from_url(url)
    entries = keys.xrange(events_key(run.id))
    assert b"".join(fields[b"d"] for _, fields in entries) == b"".join(run.events)
    assert entry_seq(entries[-1][0]) == 5 and entries[-1][1][b"end"] == b"completed"
    assert keys.hget(meta_key(run.id), "status") == b"completed"


async def test_a_full_connection_pool_is_said_as_busy_not_unreachable(url: str) -> None:
    store = RedisRunStore(url, RunLimits())
    pool = store.redis.connection_pool
    held = [await pool.get_connection() for _ in range(COMMAND_CONNECTIONS)]
    try:
        with pytest.raises(RunStoreUnavailable) as refused:
            await store.info("A" * 22, None)
        assert "busy" in str(refused.value) and f"all {COMMAND_CONNECTIONS} connections" in str(refused.value)
        assert "cannot be reached" not in str(refused.value)
    finally:
        for connection in held:
            await pool.release(connection)
        await store.close()


async def test_finished_runs_expire_and_the_oldest_are_forgotten(url: str) -> None:
    a, b = RedisRunStore(url, RunLimits(ttl=0.5, max_finished=2)), RedisRunStore(url, RunLimits())
    client = redis.Redis.from_url(url)
    try:
        runs = [await start(a, tokens=2) for _ in range(3)]
        await until(lambda: not a.mirror.live)
        with pytest.raises(RunNotFound):  # the oldest of three, beyond RUN_MAX_FINISHED
            await b.listen(runs[0].id, None, None)
        assert client.zcard(FINISHED_KEY) == 2 and client.zcard(LIVE_KEY) == 0
        assert 0 < client.pttl(meta_key(runs[2].id)) <= 500 and 0 < client.pttl(events_key(runs[2].id)) <= 500
        await read_all(await b.listen(runs[2].id, None, None))
        await asyncio.sleep(0.7)
        with pytest.raises(RunNotFound):
            await b.listen(runs[2].id, None, None)
    finally:
        await a.close()
        await b.close()


async def test_a_long_run_keeps_its_newest_events_and_an_older_resume_is_refused(url: str) -> None:
    a, b = RedisRunStore(url, RunLimits(max_events=16)), RedisRunStore(url, RunLimits())
    try:
        run = await start(a, tokens=40)
        await until(lambda: not a.mirror.live)
        kept = [seq for entry in redis.Redis.from_url(url).xrange(events_key(run.id))
                for seq in range(first_seq(entry), entry_seq(entry[0]) + 1)]
        # The newest, without a hole (whole chunks: about RUN_MAX_EVENTS).
        assert 8 <= len(kept) <= 2 * 16 and kept == list(range(kept[0], 42))
        with pytest.raises(InvalidEventId, match="no longer keeps"):
            await b.listen(run.id, None, f"{run.id}:{kept[0] - 2}")
        tail = await read_all(await b.listen(run.id, None, f"{run.id}:{kept[0] - 1}"))
        assert [e.id for e in tail] == [f"{run.id}:{seq}" for seq in kept]
        assert tail[-1].event == "done"
    finally:
        await a.close()
        await b.close()


async def test_unreachable_at_start_up_is_one_config_error_without_the_password() -> None:
    url = f"redis://user:s3cret-pass@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError) as info:
        RedisRunStore(url, RunLimits())
    message = str(info.value)
    assert message.startswith(f"RUN_STORE_URL: cannot reach Redis at redis://127.0.0.1:{url.rsplit(':', 1)[1]}")
    assert "s3cret" not in message and "user" not in message and "\n" not in message


async def test_redis_lost_mid_run_local_listeners_go_on_and_it_recovers() -> None:
    server = start_redis()
    a, b = RedisRunStore(server.url, RunLimits()), RedisRunStore(server.url, RunLimits())
    try:
        run = await start(a, tokens=60, delay_ms=15)
        local = await a.listen(run.id, None, None)
        await until(lambda: run.next_seq >= 3)
        stop_process(server)
        with pytest.raises(RunStoreUnavailable, match="cannot be reached"):
            await b.listen(run.id, None, None)
        events = await read_all(local)  # the generation never waited for Redis
        assert tokens_of(events) == scripted_tokens(60) and events[-1].event == "done"
        await until(lambda: a.unready() is not None)
        assert str(server.port) not in str(a.unready())  # the probe answers without a key: no address in it
        with pytest.raises(RunStoreUnavailable, match="cannot be reached"):  # refused at once, not generated here
            await start(a, tokens=5)
        assert a.stats()["live"] == 0
        server = start_redis(server.port)  # empty: nothing was persisted
        await until(lambda: a.mirror.healthy and not a.mirror.dirty and a.unready() is None)
        # The run that spanned the outage is written again, whole.
        assert await read_all(await b.listen(run.id, None, None)) == events
        fresh = await start(a, tokens=4)
        assert tokens_of(await read_all(await b.listen(fresh.id, None, None))) == scripted_tokens(4)
    finally:
        await a.close()
        await b.close()
        stop_process(server)
