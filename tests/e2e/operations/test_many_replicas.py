"""Many replicas behind a real load balancer, faulted under load (issue 27): HAProxy with the config we ship
(deploy/haproxy.cfg, health checks on /health/ready) in front of 3 replicas that share one real redis-server, and
200 concurrent `/chat` streams through it. Every client follows its run to a terminal event and, whenever its
connection is cut, resumes through the balancer (`GET /chat/runs/{id}/stream` with `Last-Event-ID`), landing
wherever HAProxy sends it.

- HAProxy cuts every connection mid-stream, twice: every run still ends `done`, none of its tokens lost or doubled.
- SIGKILL one replica: every client of its runs is told `replica_lost` within the lease plus one renewal (and a
  margin for a loaded machine); every other run ends `done`, whole; the dead replica's runs no longer count
  against RUN_MAX_LIVE.
- SIGSTOP Redis (5 s, longer than a lease): readiness turns 503 on every replica, HAProxy takes them out and
  refuses new work with a JSON 503, the streams already open go on to `done`; after SIGCONT all is ready again.
- SIGTERM one replica: HAProxy takes it out, new work goes to the others, its runs finish within DRAIN_SECONDS.
- Restart Redis with an append-only file: a finished run is still replayable, through every replica.
After each fault, the surviving replicas' `/health` shows no live run left.

Bounded: every test has its deadline (asyncio.timeout), each well under 90 s; loopback only. `pytest -m chaos`
runs them alone.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from chains.models.fake import scripted_tokens
from tests.support.haproxy import SERVER_NAMES, Balancer, running_haproxy
from tests.support.servers import LiveServer, start_app, start_redis, stop_process, stopping
from tests.support.sse import Event, SSEDecoder, parse_sse

pytestmark = pytest.mark.chaos

STREAMS = 200
TOKEN_DELAY_MS = 100
LEASE_SECONDS = 3.0
RENEWAL_SECONDS = 1.0
# A lost run is told within its lease plus one renewal (issue 27's goal: ≤ 10 s); the margin is for 200 streams,
# 3 replicas, Redis and HAProxy sharing 2 cores.
LOST_WITHIN = LEASE_SECONDS + RENEWAL_SECONDS + 2.5
# Tokens a replica may have streamed to its own listeners and not yet written to Redis when it is killed.
UNWRITTEN_AT_DEATH = 2
DRAIN_SECONDS = 10.0
REPLICA_SETTINGS = {
    "CHAT_PROVIDER": "fake", "FAKE_TOKEN_DELAY_MS": str(TOKEN_DELAY_MS),
    "RUN_LEASE_SECONDS": f"{LEASE_SECONDS:g}", "RUN_LEASE_RENEWAL_SECONDS": f"{RENEWAL_SECONDS:g}",
    "DRAIN_SECONDS": f"{DRAIN_SECONDS:g}", "SSE_HEARTBEAT_SECONDS": "2",
    # Every client of these tests is 127.0.0.1, and so is HAProxy: no per-address limit may stand in the way.
    "MAX_STREAMS_PER_CLIENT": "0", "MAX_LIVE_RUNS_PER_ADDRESS": "0", "MAX_CONNECTIONS_PER_ADDRESS": "0",
}
START = "/chat?on_disconnect=continue"  # a cut client comes back: its run goes on without it meanwhile
READ_TIMEOUT = 15.0  # longer than any silence a stream may have here (heartbeats every 2 s)
MAX_ATTEMPTS = 8  # connections one client opens for its run at most: the first, then resumes


# --- the deployment ---------------------------------------------------------------------------------------------

@dataclass
class Cluster:
    redis: LiveServer  # a test that restarts Redis puts the new one here: the cluster's end stops it
    replicas: list[LiveServer] = field(default_factory=list)
    balancer: Balancer = field(init=False)


def start_replicas(redis_url: str, stack: ExitStack, **settings: str) -> list[LiveServer]:
    """The three replicas, started side by side (each takes seconds to import its stack; started from threads,
    they die with the tests through the harness's watchdog); each stops with `stack`, even when another failed
    to start."""
    names = [f"many-replicas-{name}" for name in SERVER_NAMES]
    every_setting = {"RUN_STORE_URL": redis_url, **REPLICA_SETTINGS, **settings}

    def start(name: str) -> LiveServer:
        return start_app(name, 1, False, **every_setting)

    with ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(start, name) for name in names]
    replicas, failures = [], []
    for future in futures:
        try:
            replicas.append(stack.enter_context(stopping(future.result())))
        except Exception as exc:  # noqa: BLE001 - the others still get stopped; the first failure is raised
            failures.append(exc)
    if failures:
        raise failures[0]
    return replicas


@contextmanager
def running_cluster(redis_server: LiveServer | None = None, **settings: str) -> Iterator[Cluster]:
    """Redis (this one, or a fresh one), the three replicas on it and HAProxy in front, for the block. Stopped in
    reverse: HAProxy, the replicas, then Redis (whichever redis-server `cluster.redis` names by then). The replicas'
    logs must hold no traceback."""
    with ExitStack() as stack:
        cluster = Cluster(redis_server or start_redis())
        stack.callback(lambda: stop_process(cluster.redis))
        cluster.replicas = start_replicas(cluster.redis.url, stack, **settings)
        cluster.balancer = stack.enter_context(running_haproxy(cluster.replicas))
        yield cluster
    for replica in cluster.replicas:
        assert "Traceback" not in replica.output(), replica.log


# --- a client that follows its run through the balancer -------------------------------------------------------

@dataclass
class Follower:
    """One client: starts a run through the balancer (`POST /chat`) and follows it to its terminal event; each
    time its connection is cut, it resumes through the balancer from the last event it has."""

    index: int
    run_id: str | None = None
    events: list[Event] = field(default_factory=list)
    cut_at: list[float] = field(default_factory=list)  # time.monotonic() of each cut
    refused: list[int] = field(default_factory=list)  # statuses of attempts answered with no stream (retried)
    failure: str | None = None
    ended_at: float | None = None  # when its terminal event arrived

    @property
    def terminal(self) -> Event | None:
        last = self.events[-1] if self.events else None
        return last if last is not None and last.event in ("done", "error") else None

    def token_count(self) -> int:
        return sum(e.event == "message" for e in self.events)

    def tokens(self) -> list[str]:
        return [e.json()["token"] for e in self.events if e.event == "message"]

    def positions(self) -> list[int]:
        """The seq of each event's id; every id must name this client's run."""
        seqs = []
        for event in self.events:
            run, _, seq = (event.id or "").rpartition(":")
            assert run == self.run_id and seq.isdigit(), (self.index, event)
            seqs.append(int(seq))
        return seqs

    async def follow(self, client: httpx.AsyncClient) -> None:
        method, url = "POST", START
        body: dict[str, str] | None = {"message": f"stream {self.index}"}
        headers: dict[str, str] = {}
        for _ in range(MAX_ATTEMPTS):
            try:
                async with client.stream(method, url, json=body, headers=headers) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code not in (502, 503):  # 204 too: nothing follows the last event
                            self.failure = f"{method} {url}: {response.status_code} {response.text[:200]}"
                            return
                        self.refused.append(response.status_code)  # no replica could take it: again shortly
                        await asyncio.sleep(0.2)
                        continue
                    self.run_id = self.run_id or response.headers["x-run-id"]
                    decoder = SSEDecoder()
                    async for text in response.aiter_text():
                        self.events += decoder.feed(text, time.monotonic())
                        if self.terminal is not None:
                            self.ended_at = self.ended_at or self.events[-1].at
                    self.events += decoder.end()
                if self.terminal is None:
                    self.failure = f"{method} {url}: the stream ended cleanly without a terminal event"
                return
            except httpx.TimeoutException as exc:
                self.failure = f"{method} {url}: {type(exc).__name__} (silent for {READ_TIMEOUT} s)"
                return
            except httpx.TransportError:
                self.cut_at.append(time.monotonic())
            if self.terminal is not None:  # cut right after its last event: nothing to resume
                return
            if self.run_id is None:
                self.failure = f"{method} {url}: cut before its headers"
                return
            method, url, body = "GET", f"/chat/runs/{self.run_id}/stream", None
            headers = {"Last-Event-ID": self.events[-1].id or ""} if self.events else {}
        self.failure = f"gave up after {MAX_ATTEMPTS} connections"


class Crowd:
    """A test's clients, on one HTTP client of the balancer (`client`, for the test's own requests too)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.tasks: dict[int, asyncio.Task[None]] = {}  # by follower index

    def open(self, count: int) -> list[Follower]:
        """`count` more clients, each starting its run now (each with a message of its own)."""
        followers = [Follower(len(self.tasks) + i) for i in range(count)]
        for follower in followers:
            self.tasks[follower.index] = asyncio.create_task(follower.follow(self.client))
        return followers

    async def finish(self, followers: list[Follower]) -> None:
        """Until each of these has its terminal event (or has failed)."""
        await asyncio.gather(*(self.tasks[f.index] for f in followers))


@asynccontextmanager
async def crowd_of(balancer: Balancer) -> AsyncIterator[Crowd]:
    """A Crowd for the block; whatever of it still runs when the block ends (a failed test) is cancelled."""
    async with httpx.AsyncClient(base_url=balancer.url, timeout=httpx.Timeout(READ_TIMEOUT, connect=5),
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=32)) as client:
        crowd = Crowd(client)
        try:
            yield crowd
        finally:
            for task in crowd.tasks.values():
                task.cancel()
            await asyncio.gather(*crowd.tasks.values(), return_exceptions=True)


async def until(check: Callable[[], bool | Awaitable[bool]], seconds: float, what: str) -> float:
    """Polls `check` until it holds; returns how long that took. Fails after `seconds`, naming `what`."""
    started = time.monotonic()
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.05)


async def states_become(balancer: Balancer, wanted: dict[str, str], seconds: float) -> float:
    """Balancer.wait_for_states off the event loop: the clients keep reading meanwhile."""
    return await asyncio.to_thread(balancer.wait_for_states, wanted, seconds)


async def all_streaming(followers: list[Follower], tokens: int = 3, seconds: float = 30) -> None:
    await until(lambda: all(f.token_count() >= tokens or f.failure for f in followers), seconds,
                f"every stream has {tokens} tokens")
    assert [f.failure for f in followers if f.failure] == []


def all_cut(followers: list[Follower], times: int) -> bool:
    return all(len(f.cut_at) >= times or f.terminal for f in followers)


async def health(client: httpx.AsyncClient, replica: LiveServer) -> dict[str, Any]:
    response = await client.get(replica.url + "/health", timeout=5)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def no_live_runs(client: httpx.AsyncClient, replicas: list[LiveServer], seconds: float = 15) -> None:
    """`/health`'s `runs.live` on each of these replicas comes back to 0."""
    async def settled() -> bool:
        live = [(await health(client, replica))["runs"]["live"] for replica in replicas]
        return live == [0] * len(replicas)
    await until(settled, seconds, "no live run left on " + ", ".join(r.url for r in replicas))


async def runs_started(client: httpx.AsyncClient, replicas: list[LiveServer]) -> list[int]:
    return [(await health(client, replica))["runs"]["started"] for replica in replicas]


def assert_done_whole(follower: Follower, tokens: int) -> None:
    """Its run ended `done` (completed), and the client has every token once, in order: the ids are the run's
    seqs 0…tokens+1 (start, tokens, done) with none missing or repeated, whatever the cuts and resumes."""
    assert follower.failure is None, (follower.index, follower.failure)
    done = follower.terminal
    assert done is not None and done.event == "done", (follower.index, follower.events[-3:])
    assert follower.positions() == list(range(tokens + 2)), (follower.index, follower.cut_at)
    body = done.json()
    assert body["status"] == "completed" and body["token_count"] == tokens, body
    assert follower.tokens() == scripted_tokens(tokens) and "".join(follower.tokens()) == body["full_response"]


# --- the tests ----------------------------------------------------------------------------------------------------

def test_two_hundred_streams_cut_by_the_balancer_resume_through_it_whole() -> None:
    tokens = 50  # 5 s a run
    with running_cluster(FAKE_REPLY_TOKENS=str(tokens)) as cluster:
        async def scenario() -> list[Follower]:
            async with asyncio.timeout(60), crowd_of(cluster.balancer) as crowd:
                client = crowd.client
                followers = crowd.open(STREAMS)
                await all_streaming(followers)
                for cut in (1, 2):  # every connection the balancer holds, mid-stream; then the resumed ones
                    for name in SERVER_NAMES:
                        cluster.balancer.cut(name)
                    await until(partial(all_cut, followers, cut), 10, f"every client has seen cut {cut}")
                    await all_streaming(followers, tokens=10 * cut + 3)
                await crowd.finish(followers)
                started = await runs_started(client, cluster.replicas)
                assert sum(started) == STREAMS, started  # the resumes joined the runs: no generation started twice
                assert min(started) > 0, started  # the balancer spread the runs
                await no_live_runs(client, cluster.replicas)
                return followers

        followers = asyncio.run(scenario())
    for follower in followers:
        assert len(follower.cut_at) == 2 and follower.refused == [], (follower.index, follower.cut_at)
        assert_done_whole(follower, tokens)


def test_sigkill_one_replica_its_listeners_hear_replica_lost_the_others_finish() -> None:
    tokens = 120  # 12 s a run: the others are still generating when the dead replica's runs are declared lost
    with running_cluster(FAKE_REPLY_TOKENS=str(tokens), RUN_MAX_LIVE=str(STREAMS)) as cluster:
        victim, survivors = cluster.replicas[0], cluster.replicas[1:]
        victim_name = cluster.balancer.name_of(victim)

        async def scenario() -> tuple[list[Follower], list[Follower], float]:
            async with asyncio.timeout(80), crowd_of(cluster.balancer) as crowd:
                client = crowd.client
                followers = crowd.open(STREAMS)
                await all_streaming(followers)
                victim_runs = (await runs_started(client, [victim]))[0]
                os.killpg(victim.process.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                await asyncio.to_thread(victim.process.wait, 5)
                # Its clients, and only they, see their connections cut; each resumes through a survivor.
                await until(lambda: sum(bool(f.cut_at) for f in followers) >= victim_runs, 5,
                            f"the dead replica's {victim_runs} clients are cut")
                cut = [f for f in followers if f.cut_at]
                assert len(cut) == victim_runs > 0, (len(cut), victim_runs)
                await states_become(cluster.balancer, {victim_name: "DOWN"}, 10)
                await until(lambda: all(f.terminal is not None or f.failure for f in cut), LOST_WITHIN + 2,
                            "the dead replica's listeners are told")
                assert {f.index: f.failure for f in cut if f.failure} == {}
                # Their places under RUN_MAX_LIVE are free again (the others still generate): as many new runs
                # start, and not one more.
                refill = crowd.open(len(cut))
                await all_streaming(refill, tokens=1)
                over = await client.post(START, json={"message": "one too many"})
                assert over.status_code == 503 and over.json()["type"] == "run_store_full", over.text
                assert over.headers["retry-after"].isdigit()
                await crowd.finish(followers + refill)
                await no_live_runs(client, survivors)
                for follower in cut:  # the run's state says so, through any survivor, and its replay ends so
                    state = await client.get(f"/chat/runs/{follower.run_id}")
                    assert state.status_code == 200, state.text
                    assert (state.json()["status"], state.json()["reason"]) == ("failed", "replica_lost")
                # A later join replays what the store kept, to the same terminal event.
                kept = cut[0].terminal.json()["token_count"] if cut[0].terminal else 0
                replay = await client.get(f"/chat/runs/{cut[0].run_id}/stream")
                assert [(e.id, e.data) for e in parse_sse(replay.text)] == [
                    (e.id, e.data) for e in cut[0].events[:kept + 1] + cut[0].events[-1:]]
                return followers, refill, killed_at

        followers, refill, killed_at = asyncio.run(scenario())
    lost = [f for f in followers if f.cut_at]
    for follower in lost:
        assert_replica_lost(follower)
        assert follower.refused == [], follower.index  # a resume refused by the dead replica went elsewhere
        told_after = (follower.ended_at or float("inf")) - killed_at
        assert told_after <= LOST_WITHIN, (follower.index, told_after)
    for follower in followers + refill:
        if follower not in lost:
            assert_done_whole(follower, tokens)
    assert "Traceback" not in "".join(r.output() for r in survivors)


def assert_replica_lost(follower: Follower) -> None:
    """The client's run ended with `replica_lost`, with an id of its own, carrying the partial reply the run store
    kept: the client's tokens (once each, in order, the fake model's first ones) up to `token_count`,
    concatenated. A client that followed the dead replica itself may have one or two tokens more: those it sent
    in the moment before it could write them (its write-behind to Redis); no listener can be told those."""
    assert follower.failure is None, (follower.index, follower.failure)
    lost = follower.terminal
    assert lost is not None and lost.event == "error", (follower.index, follower.events[-3:])
    body = lost.json()
    assert body["type"] == "replica_lost" and body["error"], body
    count, kept = follower.token_count(), body["token_count"]
    positions = follower.positions()
    assert positions[:-1] == list(range(count + 1)), follower.index  # the start event, then each token once
    assert follower.tokens() == scripted_tokens(count), follower.index
    assert count - UNWRITTEN_AT_DEATH <= kept <= count, (follower.index, count, body)
    assert body["full_response"] == "".join(follower.tokens()[:kept]), (follower.index, body)
    assert positions[-1] > kept, (follower.index, positions[-1], kept)  # after the events the store kept


def test_redis_paused_readiness_turns_503_new_work_is_refused_open_streams_go_on() -> None:
    tokens = 100  # 10 s a run: they span the pause
    with running_cluster(FAKE_REPLY_TOKENS=str(tokens)) as cluster:
        redis_pid = cluster.redis.process.pid

        async def scenario() -> tuple[list[Follower], float]:
            async with asyncio.timeout(80), crowd_of(cluster.balancer) as crowd:
                client = crowd.client
                followers = crowd.open(STREAMS)
                await all_streaming(followers)
                os.kill(redis_pid, signal.SIGSTOP)
                paused_at = time.monotonic()
                try:
                    # Every replica says it cannot take work, at once (a probe answers in time even while Redis
                    # hangs), and keeps saying it is alive.
                    for replica in cluster.replicas:
                        await until(partial(not_ready, client, replica, "run_store_unreachable"), 8,
                                    f"{replica.url} reports run_store_unreachable")
                        live = await client.get(replica.url + "/health/live", timeout=2)
                        assert live.status_code == 200 and live.json() == {"status": "ok"}
                    await states_become(cluster.balancer, dict.fromkeys(SERVER_NAMES, "DOWN"), 10)
                    sent = time.monotonic()
                    refused = await client.post(START, json={"message": "during the pause"})
                    assert time.monotonic() - sent < 2, "a refusal must be quick"
                    assert refused.status_code == 503 and refused.json()["type"] == "no_replica_available"
                    assert refused.headers["retry-after"].isdigit()
                    # Straight to a replica, new work is answered within a bound, never left hanging: refused
                    # (503 with a JSON body), or served by this replica alone. (Dropped at its first event: the
                    # default policy cancels it.)
                    sent = time.monotonic()
                    async with client.stream("POST", cluster.replicas[0].url + "/chat", json={"message": "direct"},
                                             timeout=10) as direct:
                        answered = time.monotonic() - sent
                        if direct.status_code != 200:
                            await direct.aread()
                    assert answered < 6 and direct.status_code in (200, 503), (answered, direct.status_code)
                    if direct.status_code == 503:
                        assert direct.json()["type"] and direct.headers["retry-after"].isdigit(), direct.text
                    # The streams open before the pause went on all along.
                    moving = [f.token_count() for f in followers]
                    await until(lambda: all(f.token_count() > n or f.terminal for f, n in zip(followers, moving)),
                                3, "every open stream still moves")
                    await until(lambda: time.monotonic() - paused_at >= 5, 6, "5 s of pause")
                finally:
                    os.kill(redis_pid, signal.SIGCONT)
                resumed_at = time.monotonic()
                for replica in cluster.replicas:
                    await until(partial(ready, client, replica), 10, f"{replica.url} ready again")
                await states_become(cluster.balancer, dict.fromkeys(SERVER_NAMES, "UP"), 10)
                await crowd.finish(followers)
                after = crowd.open(3)
                await crowd.finish(after)
                for follower in after:
                    assert_done_whole(follower, tokens)
                await no_live_runs(client, cluster.replicas)
                for follower in followers:  # in Redis too, each run ended as its client saw: completed
                    state = await client.get(f"/chat/runs/{follower.run_id}")
                    assert state.status_code == 200 and state.json()["status"] == "completed", state.text
                return followers, resumed_at - paused_at

        followers, paused = asyncio.run(scenario())
    assert paused >= 5
    for follower in followers:
        assert follower.cut_at == [] and follower.refused == [], follower.index
        assert_done_whole(follower, tokens)


async def ready(client: httpx.AsyncClient, replica: LiveServer) -> bool:
    response = await client.get(replica.url + "/health/ready", timeout=2)
    return response.status_code == 200 and (response.json()["ready"], response.json()["reasons"]) == (True, [])


async def not_ready(client: httpx.AsyncClient, replica: LiveServer, reason: str) -> bool:
    """Readiness is 503 naming `reason` (the probe itself answers within 2 s: HAProxy's `timeout check`)."""
    response = await client.get(replica.url + "/health/ready", timeout=2)
    if response.status_code != 503:
        return False
    body = response.json()
    return body["ready"] is False and reason in body["reasons"] and bool(body["details"][reason])


def test_sigterm_one_replica_the_balancer_takes_it_out_and_its_runs_finish() -> None:
    tokens = 60  # 6 s a run, within DRAIN_SECONDS
    with running_cluster(FAKE_REPLY_TOKENS=str(tokens)) as cluster:
        async def scenario() -> tuple[LiveServer, list[Follower], list[Follower], float, float]:
            async with asyncio.timeout(80), crowd_of(cluster.balancer) as crowd:
                client = crowd.client
                followers = crowd.open(STREAMS)
                await all_streaming(followers)
                # The replica with the fewest streams (200 = 66 + 67 + 67): leastconn sends it new work first.
                stats = cluster.balancer.server_stats()
                leaving_name = min(stats, key=lambda name: int(stats[name]["scur"]))
                sent_to_leaving = int(stats[leaving_name]["stot"])
                leaving = cluster.balancer.replicas[leaving_name]
                staying = [replica for replica in cluster.replicas if replica is not leaving]
                assert (await runs_started(client, [leaving]))[0] > 0
                staying_before = sum(await runs_started(client, staying))
                leaving.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                await until(partial(not_ready, client, leaving, "draining"), 1, "readiness says draining at once")
                # New work through the balancer succeeds from that moment: before HAProxy's checks take the
                # replica out, its 503 `draining` is retried on another (retry-on 503).
                new = crowd.open(20)
                taken_out = await states_become(cluster.balancer, {leaving_name: "DOWN"}, 5)
                await crowd.finish(followers + new)
                drained = max(f.ended_at or 0 for f in followers) - signalled
                assert sum(await runs_started(client, staying)) == staying_before + len(new)
                # Some of it reached the leaving replica before the checks took it out: refused there (503
                # draining) and retried on another, unseen by the clients.
                refused_there = int(cluster.balancer.server_stats()[leaving_name]["stot"]) - sent_to_leaving
                assert refused_there >= 1, "no new request reached the draining replica: retry-on 503 is untested"
                await asyncio.to_thread(leaving.process.wait, DRAIN_SECONDS + 15)
                await no_live_runs(client, staying)
                return leaving, followers, new, taken_out, drained

        leaving, followers, new, taken_out, drained = asyncio.run(scenario())
        log = leaving.output()
    assert taken_out < 3 and drained < DRAIN_SECONDS, (taken_out, drained)
    for follower in followers + new:
        assert follower.cut_at == [] and follower.refused == [], follower.index  # never cut, never refused
        assert_done_whole(follower, tokens)
    assert "Traceback" not in log and "Finished server process" in log


def test_redis_restarted_with_its_append_only_file_still_replays_a_finished_run(tmp_path: Path) -> None:
    tokens = 20
    aof = tmp_path / "redis"
    aof.mkdir()
    with running_cluster(start_redis(aof_dir=aof), FAKE_REPLY_TOKENS=str(tokens)) as cluster:
        async def scenario() -> None:
            async with asyncio.timeout(60), crowd_of(cluster.balancer) as crowd:
                client = crowd.client
                finished = crowd.open(3)
                await crowd.finish(finished)
                for follower in finished:
                    assert_done_whole(follower, tokens)
                port = cluster.redis.port
                await asyncio.to_thread(stop_process, cluster.redis)  # SIGTERM: redis-server's own shutdown
                cluster.redis = await asyncio.to_thread(start_redis, port, 15, aof)
                for replica in cluster.replicas:
                    await until(partial(ready, client, replica), 15, f"{replica.url} ready again")
                await states_become(cluster.balancer, dict.fromkeys(SERVER_NAMES, "UP"), 10)
                # Each run through each replica: at least two of the three never had it in memory, so what they
                # replay came back from the append-only file.
                origins = [replica.url for replica in cluster.replicas] + [cluster.balancer.url]
                for follower, origin in itertools.product(finished, origins):
                    replay = await client.get(origin + f"/chat/runs/{follower.run_id}/stream")
                    assert replay.status_code == 200, (origin, replay.text)
                    assert [(e.id, e.data) for e in parse_sse(replay.text)] == [
                        (e.id, e.data) for e in follower.events]
                    middle = follower.events[tokens // 2].id or ""
                    rest = await client.get(origin + f"/chat/runs/{follower.run_id}/stream",
                                            headers={"Last-Event-ID": middle})
                    assert [e.id for e in parse_sse(rest.text)] == [e.id for e in follower.events[tokens // 2 + 1:]]
                after = crowd.open(1)
                await crowd.finish(after)
                assert_done_whole(after[0], tokens)
                await no_live_runs(client, cluster.replicas)

        asyncio.run(scenario())
