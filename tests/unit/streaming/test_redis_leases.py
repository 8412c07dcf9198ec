"""Leases in the Redis run store, in-process against a real redis-server: stores in one event loop stand for
replicas, with short leases. A replica "dies" when its store's tasks stop without a word (no flush, no renewal, no
leave), as SIGKILL leaves them; it "freezes" when they stop and start again. The generation is the real core."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis

from chains.api.chat.protocol import JsonEvents
from chains.models.fake import ScriptedChatModel, scripted_tokens
from chains.runnables.chat import single_turn_chain
from chains.streaming.generation import StreamOptions, generate
from chains.streaming.redis_mirror import LIVE_KEY, REPLICAS_KEY, Leases, address_key, events_key, meta_key
from chains.streaming.redis_store import RedisRunStore
from chains.streaming.run import Listener, Run
from chains.streaming.store import RunLimits
from tests.support.servers import LiveServer, start_redis, stop_process
from tests.support.sse import Event, SSEDecoder, parse_sse

LEASES = Leases(seconds=1.0, renewal=0.2)
NOTICE = LEASES.seconds + LEASES.renewal  # the goal: every listener told within a lease and a renewal
SLACK = 1.5  # a loaded 2-core machine
SECONDS = 15


@pytest.fixture
def redis_server() -> AsyncIterator[LiveServer]:
    server = start_redis()
    yield server
    stop_process(server)


def store(server: LiveServer, **limits: int) -> RedisRunStore:
    return RedisRunStore(server.url, RunLimits(**limits), LEASES)


async def start(store: RedisRunStore, tokens: int = 1000, delay_ms: float = 20, on_disconnect: str | float = "continue",
                address: str | None = None) -> Run:
    await store.open()
    run = await store.create(None, on_disconnect, address, JsonEvents.name)  # type: ignore[arg-type]
    chain = single_turn_chain(ScriptedChatModel(reply_tokens=tokens, token_delay_ms=delay_ms))  # type: ignore[arg-type]
    generate(run, chain, "hi", StreamOptions(), JsonEvents())
    return run


async def until(condition: object, seconds: float = SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def stop_tasks(replica: RedisRunStore) -> None:
    """What SIGKILL leaves of a replica, as Redis sees it: nothing more written, renewed or said."""
    for task in replica.mirror.tasks:
        task.cancel()


async def close_dead(replica: RedisRunStore) -> None:
    replica.mirror.tasks = []
    for run in list(replica.local.live.values()):
        run.mirror = None
        run.cancel()
    await replica.close()


class Follower:
    """A listener through another replica, reading until the terminal event; when each event arrived."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self.events: list[Event] = []
        self.arrived: list[float] = []
        self.task = asyncio.create_task(self._read(events))

    async def _read(self, events: AsyncIterator[bytes]) -> None:
        decoder = SSEDecoder()
        async for chunk in events:
            for event in decoder.feed(chunk.decode()):
                self.events.append(event)
                self.arrived.append(time.monotonic())


def tokens_of(events: list[Event]) -> list[str]:
    return [event.json()["token"] for event in events if event.event == "message"]


async def test_the_runs_of_a_replica_that_died_end_for_every_listener_with_replica_lost(
        redis_server: LiveServer) -> None:
    a, b, c = store(redis_server, max_live_per_address=4), store(redis_server), store(redis_server)
    try:
        run = await start(a, address="10.0.0.7")
        await b.open()
        await c.open()
        await until(lambda: run.next_seq >= 6)
        follower = Follower(await b.listen(run.id, None, None))
        await until(lambda: len(follower.events) >= 6)
        stop_tasks(a)
        died = time.monotonic()
        await asyncio.wait_for(follower.task, NOTICE + SLACK + SECONDS)
        told = follower.arrived[-1] - died
        assert told <= NOTICE + SLACK, f"told after {told:.2f}s"
        end = follower.events[-1]
        assert end.event == "error" and end.id == f"{run.id}:{len(follower.events) - 1}"
        sent = tokens_of(follower.events)
        assert sent == scripted_tokens(1000)[:len(sent)]  # none lost or doubled until then
        assert end.json() == {"error": end.json()["error"], "type": "replica_lost", "full_response": "".join(sent),
                              "token_count": len(sent)}
        # The run's state says so on every replica; it is counted nowhere; a later join replays it to that end.
        for replica in (b, c):
            info = await replica.info(run.id, None)
            assert (info.status, info.reason, info.events) == ("failed", "replica_lost", len(follower.events))
        keys = redis.Redis.from_url(redis_server.url)
        assert keys.zcard(LIVE_KEY) == 0 and keys.zcard(address_key("10.0.0.7")) == 0
        assert 0 < keys.pttl(meta_key(run.id)) <= RunLimits().ttl * 1000
        replay = parse_sse(b"".join([chunk async for chunk in await c.listen(run.id, None, None)]).decode())
        assert replay == follower.events
        assert b.mirror.reaped + c.mirror.reaped == 1  # one reaper ended it
    finally:
        await close_dead(a)
        await b.close()
        await c.close()


async def test_a_replica_that_froze_and_came_back_ends_its_lost_run_too_and_writes_nothing_after_the_end(
        redis_server: LiveServer) -> None:
    a, b = store(redis_server), store(redis_server)
    try:
        run = await start(a)
        await b.open()
        local = Listener(run)
        await until(lambda: run.next_seq >= 4)
        for task in a.mirror.tasks:  # frozen: no writes, no renewals
            task.cancel()
        await until(lambda: b.mirror.reaped == 1, NOTICE + SLACK + SECONDS)
        lost_end = redis.Redis.from_url(redis_server.url).xrevrange(events_key(run.id), count=1)[0]
        a.mirror.tasks = []
        a.mirror.start()  # thawed: its renewal learns the run was ended
        events = parse_sse(b"".join([chunk async for chunk in local]).decode())
        assert events[-1].event == "error" and events[-1].json()["type"] == "replica_lost"
        assert run.status == "failed" and run.reason == "replica_lost"
        await asyncio.sleep(LEASES.renewal * 3)  # what it still had to write is refused
        keys = redis.Redis.from_url(redis_server.url)
        assert keys.xrevrange(events_key(run.id), count=1)[0] == lost_end
        assert keys.hget(meta_key(run.id), "reason") == b"replica_lost"
        assert a.stats()["live"] == 0
    finally:
        await a.close()
        await b.close()


async def test_a_listener_through_a_replica_that_died_stops_counting_for_the_disconnect_policy(
        redis_server: LiveServer) -> None:
    a, b = store(redis_server), store(redis_server)
    try:
        run = await start(a, on_disconnect=0.3)  # cancelled 0.3 s after its last listener leaves
        await b.open()
        follower = Follower(await b.listen(run.id, None, f"{run.id}:0"))
        await until(lambda: run.listeners == 1)
        follower.task.cancel()  # B dies without saying its listener left
        stop_tasks(b)
        await until(lambda: run.status == "cancelled", NOTICE + 0.3 + SLACK + SECONDS)
        assert run.listeners == 0
        score = redis.Redis.from_url(redis_server.url).zscore(REPLICAS_KEY, b.mirror.replica)
        assert score is not None and score < time.time()  # B's lease lapsed; A's did not
    finally:
        await a.close()
        await close_dead(b)


async def test_when_redis_itself_pauses_past_a_lease_no_run_is_reaped(redis_server: LiveServer) -> None:
    """A pause of Redis stops every replica's renewals alike: after it, the reapers wait a lease before acting,
    while the live replicas renew; every run goes on to its done."""
    a, b = store(redis_server), store(redis_server)
    try:
        run = await start(a, tokens=150, delay_ms=20)
        await b.open()
        follower = Follower(await b.listen(run.id, None, None))
        await until(lambda: run.next_seq >= 4)
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(LEASES.seconds * 2)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        await asyncio.wait_for(follower.task, SECONDS)
        assert follower.events[-1].event == "done", follower.events[-1]
        assert tokens_of(follower.events) == scripted_tokens(150)
        assert a.mirror.reaped + b.mirror.reaped == 0
    finally:
        await a.close()
        await b.close()


async def test_a_resume_past_what_a_dying_replica_wrote_gets_its_replica_lost_end(redis_server: LiveServer) -> None:
    """A replica sends its own listener events before it writes them; if it dies then, the client resumes through
    another replica with an id Redis never had. It waits for the run's end and gets the terminal event, not 400."""
    a, b = store(redis_server), store(redis_server)
    try:
        run = await start(a)
        await b.open()
        await until(lambda: run.next_seq >= 4 and not a.mirror.dirty)
        stop_tasks(a)  # dead: what it sends from now on never reaches Redis
        await until(lambda: run.next_seq >= 8)
        seen = run.next_seq - 1  # the client's last event id: beyond what Redis holds
        follower = Follower(await asyncio.wait_for(b.listen(run.id, None, f"{run.id}:{seen}"), NOTICE + SLACK + 2))
        await asyncio.wait_for(follower.task, SECONDS)
        (end,) = follower.events
        assert end.event == "error" and end.json()["type"] == "replica_lost"
        written = end.json()["token_count"]
        assert 0 < written < seen and end.json()["full_response"] == "".join(scripted_tokens(1000)[:written])
    finally:
        await close_dead(a)
        await b.close()
