"""The Redis run store (`RUN_STORE_URL=redis://…`): runs that any replica or worker can join and cancel.

A run generates in one process, in that process's memory store, and is mirrored into Redis by its write-behind
(chains.streaming.redis_mirror, where the keys are described). Another process follows a run with `XREAD BLOCK`
on its stream (replay and live are the same read), and cancels it by publishing on the generating process's
channel, which that process subscribes to.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from chains.common.settings import ConfigError
from chains.streaming.redis_mirror import (
    CHANNEL,
    COMMAND_TIMEOUT,
    LIVE_KEY,
    REDIS_ERRORS,
    REGISTER,
    REPLICAS_KEY,
    RUN_LIFE,
    Leases,
    RunMirror,
    address_key,
    entry_id,
    entry_seq,
    events_after,
    events_key,
    first_seq,
    meta_key,
    name_key,
    owner_key,
)
from chains.streaming.run import OnDisconnect, Run, RunStatus
from chains.streaming.store import (
    CancelOutcome,
    MemoryRunStore,
    RunInfo,
    RunLimits,
    RunNotFound,
    RunStoreFull,
    RunStoreUnavailable,
    TooManyRuns,
    already_ended,
    check_resume,
    resume_after,
)

log = logging.getLogger(__name__)

# A stream entry as Redis answers it with decode_responses off: its id and its fields, all bytes (redis-py's
# stubs say `bytes | str` for every reply, whatever the client's decoding).
Entry = tuple[bytes, dict[bytes, bytes]]
StreamReply = list[tuple[bytes, list[Entry]]]

START_UP_TIMEOUT = 2.0  # the synchronous ping at construction
FOLLOW_BLOCK_MS = 5000  # a follower's XREAD BLOCK; when it comes back empty, the follower checks the run exists
READ_BATCH = 1000
CATCH_UP_SECONDS = 1.0  # beyond a lease: a resume may name an event the generating replica sent but never wrote
CANCEL_WAIT = 2.0  # how long a cancel through another replica waits for the run's end to be written
CANCEL_POLL = 0.02
CANCEL_REPUBLISH = 0.5
COMMAND_CONNECTIONS = 32  # per process: creates, joins, cancels and the flusher's pipelines
FOLLOWER_CONNECTIONS = 1024  # per process: listeners following runs that generate elsewhere
UNAVAILABLE = "the run store (Redis) cannot be reached; try again shortly"
BUSY = (f"the run store (Redis) is reachable but busy: all {COMMAND_CONNECTIONS} connections this server keeps to "
        f"it were in use for {COMMAND_TIMEOUT:g} s; try again shortly")


def pool_exhausted(exc: BaseException) -> bool:
    """A blocking pool that had no connection free within its timeout: Redis is up, this process is busy."""
    return isinstance(exc, redis.ConnectionError) and str(exc) == "No connection available."


def unavailable(exc: BaseException) -> RunStoreUnavailable:
    """What a failed Redis command tells the client: busy (no connection free) or unreachable."""
    return RunStoreUnavailable(BUSY if pool_exhausted(exc) else UNAVAILABLE)


def without_secrets(url: str) -> str:
    """The URL as a log line or an error may show it: scheme, host, port and path; no user, no password."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "RUN_STORE_URL"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def client(url: str, connections: int, socket_timeout: float | None) -> aredis.Redis:
    """A client whose pool waits (up to COMMAND_TIMEOUT) for a free connection rather than failing when many
    requests arrive at once. No retries: redis-py retries a failed connection 10 times with backoff by default,
    so a lost Redis would stall every request for seconds; we fail at once (503) and come back by ourselves."""
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=COMMAND_TIMEOUT, socket_timeout=socket_timeout,
        socket_connect_timeout=COMMAND_TIMEOUT, socket_keepalive=True, retry=Retry(NoBackoff(), 0))
    return aredis.Redis(connection_pool=pool)


class RedisRunStore:
    """Runs shared through Redis: joinable and cancellable through every process that uses the same URL."""

    def __init__(self, url: str, limits: RunLimits, leases: Leases | None = None) -> None:
        self.limits = limits
        self.url_shown = without_secrets(url)
        self._check_reachable(url)
        self.local = MemoryRunStore(limits)  # the runs generating (and finished) in this process
        self.redis = client(url, COMMAND_CONNECTIONS, COMMAND_TIMEOUT)
        # Each follower holds a connection while it blocks in XREAD; the subscription waits for messages as long
        # as it takes.
        self.followers = client(url, FOLLOWER_CONNECTIONS, FOLLOW_BLOCK_MS / 1000 + COMMAND_TIMEOUT)
        self.subscriber = client(url, 2, None)
        self.mirror = RunMirror(self.redis, self.subscriber, limits, secrets.token_hex(8), self.url_shown,
                                leases or Leases())
        self._waited_for_subscription = False

    def _check_reachable(self, url: str) -> None:
        """Start-up: one clear line (a ConfigError) when Redis does not answer, without the URL's secrets."""
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=START_UP_TIMEOUT,
                                          socket_timeout=START_UP_TIMEOUT, retry=SyncRetry(NoBackoff(), 0))
            try:
                client.ping()
            finally:
                client.close()
        except (*REDIS_ERRORS, ValueError) as exc:
            password = urlsplit(url).password if "://" in url else None
            reason = " ".join(str(exc).split()) or type(exc).__name__  # one line
            if password:
                reason = reason.replace(password, "***")
            raise ConfigError(f"RUN_STORE_URL: cannot reach Redis at {self.url_shown}: {reason}") from None

    # -- the store -------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """At start-up: this replica's lease is held, and its reaper runs, before any run is asked for."""
        with suppress(*REDIS_ERRORS):
            await self.redis.zadd(REPLICAS_KEY, {self.mirror.replica: time.time() + self.mirror.leases.seconds})
        self.mirror.start()

    def unready(self) -> str | None:
        return self.mirror.unready()

    async def create(self, owner: str | None, on_disconnect: OnDisconnect, address: str | None = None,
                     encoding: str = "") -> Run:
        mirror, limits = self.mirror, self.limits
        mirror.start()
        reason = mirror.unready()
        if reason is not None:  # refused at once: a run here would be joinable nowhere else, and leased by none
            raise RunStoreUnavailable(UNAVAILABLE)
        run = self.local.create_now(owner, on_disconnect, address, encoding)  # this process's own bounds first
        if not self._waited_for_subscription:
            # The first run here: be subscribed for its cancel before anyone knows its id.
            self._waited_for_subscription = True
            with suppress(TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await mirror.subscribed.wait()
        now = time.time()
        try:
            # The store's bound and the client's budgets, counted over every replica.
            answer, live = cast(list[int], await self.redis.eval(
                REGISTER, 5, LIVE_KEY, meta_key(run.id), address_key(address), owner_key(owner), events_key(run.id),
                now, limits.max_live, now + mirror.leases.seconds, run.id, owner or "", mirror.replica,
                int(RUN_LIFE * 1000), address or "", limits.max_live_per_address, limits.max_live_per_key, 1,
                encoding))
        except REDIS_ERRORS as exc:
            self.local.withdraw(run)
            if not pool_exhausted(exc):
                mirror.unreachable(exc)
            raise unavailable(exc) from None
        if answer != 1:
            self.local.withdraw(run)
            if answer == -1:
                raise TooManyRuns("address", live, limits.max_live_per_address)
            if answer == -2:
                raise TooManyRuns("key", live, limits.max_live_per_key)
            raise RunStoreFull(f"{limits.max_live} runs are generating across the replicas, the most "
                               "the store keeps (RUN_MAX_LIVE)")
        mirror.add(run, True)
        return run

    async def name(self, name: str, run_id: str, owner: str | None) -> None:
        self.local.name_now(name, run_id, owner)
        try:  # kept while the run can be: its longest reply (an hour, STREAM_TIMEOUT's most) and RUN_TTL after
            await self.redis.set(name_key(name, owner), run_id, ex=int(RUN_LIFE + self.limits.ttl))
        except REDIS_ERRORS as exc:  # this replica still knows it: a resume through another one will not
            log.warning("run store: cannot name run %s in Redis (%s): it resumes through this replica only", run_id,
                        type(exc).__name__)

    async def named(self, name: str, owner: str | None) -> str | None:
        try:
            run_id = await self.redis.get(name_key(name, owner))
        except REDIS_ERRORS:
            return await self.local.named(name, owner)  # what this replica knows
        return None if run_id is None else cast(bytes, run_id).decode()

    async def _meta(self, run_id: str, owner: str | None) -> dict[bytes, bytes]:
        try:
            meta = cast(dict[bytes, bytes], await self.redis.hgetall(meta_key(run_id)))
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        if not meta or meta.get(b"owner", b"").decode() != (owner or ""):
            raise RunNotFound(run_id)
        return meta

    async def listen(self, run_id: str, owner: str | None, last_event_id: str | None) -> AsyncIterator[bytes]:
        if self.local.holds(run_id):
            return await self.local.listen(run_id, owner, last_event_id)
        self.mirror.start()
        after = resume_after(run_id, last_event_id)
        meta = await self._meta(run_id, owner)
        key = events_key(run_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
            first, last = cast(tuple[list[Entry], list[Entry]], tuple(await pipe.execute()))
            last_seq, ended = (entry_seq(last[0][0]), b"end" in last[0][1]) if last else (-1, False)
            if after > last_seq and meta.get(b"status") == b"running":
                last_seq, ended = await self._catch_up(key, after, last_seq)
            if ended and after >= last_seq and await self.redis.hget(meta_key(run_id), "reason") == b"replica_lost":
                # Its replica sent this listener events it never wrote, then died: the reaper's terminal event
                # (whose seq may be one the listener has seen) is still what ends its stream.
                after = last_seq - 1
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        check_resume(run_id, after, first_seq(first[0]) if first else 0, last_seq, ended)
        replica = meta.get(b"replica", b"").decode() if meta.get(b"status") == b"running" and not ended else None
        follower = RemoteFollower(self, run_id, after, replica)
        await follower.announce(b"join")
        return follower

    async def _catch_up(self, key: str, after: int, last_seq: int) -> tuple[int, bool]:
        """Waits until the stream holds event `after`, or the run's end: the replica generating it may have sent it
        to its own listeners a moment before writing it (then it comes within ms), or have died just after (then
        a reaper ends the run within a lease and a renewal). Beyond that the id names no event of the run."""
        loop = asyncio.get_running_loop()
        leases = self.mirror.leases
        deadline = loop.time() + leases.seconds + leases.renewal + CATCH_UP_SECONDS
        ended = False
        while last_seq < after and not ended and (left := deadline - loop.time()) > 0:
            reply = cast(StreamReply | None, await self.followers.xread(
                {key: entry_id(last_seq)}, count=READ_BATCH, block=max(1, int(left * 1000))))
            for _, entries in reply or ():
                last_seq = entry_seq(entries[-1][0])
                ended = b"end" in entries[-1][1]
        return last_seq, ended

    async def cancel(self, run_id: str, owner: str | None) -> CancelOutcome:
        if self.local.holds(run_id):
            return await self.local.cancel(run_id, owner)
        self.mirror.start()
        meta = await self._meta(run_id, owner)
        status = meta.get(b"status", b"").decode()
        if status != "running":
            return already_ended(run_id, known_status(status))
        nonce = secrets.token_hex(8)
        message = f"cancel {run_id} {nonce}".encode()
        channel = CHANNEL + meta.get(b"replica", b"").decode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT
        publish_at = loop.time()
        try:
            while loop.time() < deadline:
                if loop.time() >= publish_at:  # again, in case the generating replica was resubscribing
                    await self.redis.publish(channel, message)
                    publish_at = loop.time() + CANCEL_REPUBLISH
                await asyncio.sleep(CANCEL_POLL)
                status_now, cancelled_by = cast(list[bytes | None], await self.redis.hmget(
                    meta_key(run_id), ["status", "cancelled_by"]))
                if status_now is None:
                    raise RunNotFound(run_id)
                if status_now != b"running":
                    if cancelled_by == nonce.encode():
                        return CancelOutcome(run_id=run_id, cancelled=True, status="cancelled",
                                             detail="the run was cancelled")
                    return already_ended(run_id, known_status(status_now.decode()))
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        return CancelOutcome(run_id=run_id, cancelled=False, status="cancelling", detail=(
            f"the cancel was sent to the replica generating the run, which has not confirmed it within "
            f"{CANCEL_WAIT:g}s; the run's stream tells how it ends"))

    async def info(self, run_id: str, owner: str | None) -> RunInfo:
        if self.local.holds(run_id):
            return await self.local.info(run_id, owner)
        meta = await self._meta(run_id, owner)
        try:
            last = cast(list[Entry], await self.redis.xrevrange(events_key(run_id), count=1))
        except REDIS_ERRORS as exc:
            raise unavailable(exc) from None
        ended = meta.get(b"ended")
        return RunInfo(run_id=run_id, status=known_status(meta.get(b"status", b"").decode()),
                       events=entry_seq(last[0][0]) + 1 if last else 0, listeners=None,
                       created=float(meta.get(b"created", b"0")), ended=float(ended) if ended else None,
                       reason=meta.get(b"reason", b"").decode() or None)

    def stats(self) -> dict[str, int]:
        return self.local.stats()

    async def close(self) -> None:
        await self.mirror.close()
        for client in (self.redis, self.followers, self.subscriber):
            with suppress(Exception):
                await client.aclose()


def known_status(status: str) -> RunStatus:
    match status:
        case "running" | "completed" | "cancelled" | "failed":
            return status
    return "failed"


class RemoteFollower:
    """Follows a run generating in another process: its stream from after `after`, replayed then live (one
    `XREAD BLOCK` does both), until the terminal entry. Each step returns what one read brought, in one piece.
    If Redis goes away, the stream ends without its terminal event: the client reconnects and resumes. A run whose
    replica is lost gets its terminal event from a reaper (chains.streaming.redis_mirror), like any other."""

    def __init__(self, store: RedisRunStore, run_id: str, after: int, replica: str | None) -> None:
        self.store = store
        self.run_id = run_id
        self.key = events_key(run_id)
        self.after = after  # the seq of the last event read
        self.replica = replica  # the generating process, told when this listener joins and leaves
        self.ended = False
        self.closed = False

    def __aiter__(self) -> RemoteFollower:
        return self

    async def __anext__(self) -> bytes:
        redis_ = self.store.followers
        while not (self.ended or self.closed):
            try:
                reply = cast(StreamReply | None, await redis_.xread({self.key: entry_id(self.after)},
                                                                    count=READ_BATCH, block=FOLLOW_BLOCK_MS))
                if not reply:  # quiet for a while: has the run gone (expired)?
                    status = await redis_.hget(meta_key(self.run_id), "status")
                    if status != b"running":
                        break
                    continue
            except REDIS_ERRORS as exc:  # Redis lost, or no connection free: the client reconnects and resumes
                log.info("run store: a listener following a run through Redis stopped (%s)", type(exc).__name__)
                break
            pieces = []
            for entry in reply[0][1]:
                pieces.append(events_after(entry, self.after))
                self.after = entry_seq(entry[0])
                if b"end" in entry[1]:  # nothing after the terminal event counts
                    self.ended = True
                    break
            chunk = b"".join(pieces)
            if chunk:
                return chunk
        await self.aclose()
        raise StopAsyncIteration

    async def announce(self, kind: bytes) -> None:
        """Tells the generating process a listener joined or left (through this replica, whose lease it watches),
        so that its disconnect policy counts it."""
        if self.replica is None:
            return
        with suppress(*REDIS_ERRORS):
            await self.store.redis.publish(CHANNEL + self.replica, b"%b %b %b" % (
                kind, self.run_id.encode(), self.store.mirror.replica.encode()))

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.announce(b"leave")
