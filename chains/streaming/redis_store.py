"""The Redis run store (`RUN_STORE_URL=redis://…`): runs that any replica or worker can join and cancel.

A run generates in one process, as an ordinary in-memory `Run`: the listeners of that process follow it in
memory and never wait for Redis (and keep streaming if Redis goes away). Each append marks the run dirty (a dict
store, the whole per-token cost); one flusher task per process writes every dirty run's new events with one
pipeline, as entries of a Redis Stream per run whose ids are the events' seqs. Another process follows a run
with `XREAD BLOCK` on that stream (replay and live are the same read), and cancels it by publishing on the
generating process's channel, which that process subscribes to.

Keys (`<p>` = `chains:run:`): `<p><id>` a hash (owner, status, replica, created, ended, cancelled_by);
`<p><id>:events` the stream (entry id `0-<seq+1>`, field `d` the encoded event, `end` on the terminal one);
`chains:runs:live` a sorted set of live runs by lease deadline (RUN_MAX_LIVE across replicas);
`chains:runs:finished` finished runs by end time (RUN_MAX_FINISHED). A live run's keys expire `LIVE_LEASE`
seconds after its process last renewed them (a crashed replica's runs go away); a finished run's, `RUN_TTL`
after its end.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry

from chains.common.settings import ConfigError
from chains.streaming.run import OnDisconnect, Run, RunStatus
from chains.streaming.store import (
    CancelOutcome,
    MemoryRunStore,
    RunInfo,
    RunLimits,
    RunNotFound,
    RunStoreFull,
    RunStoreUnavailable,
    already_ended,
    check_resume,
    resume_after,
)

log = logging.getLogger(__name__)

RUN_KEY = "chains:run:"
LIVE_KEY = "chains:runs:live"
FINISHED_KEY = "chains:runs:finished"
CHANNEL = "chains:replica:"

LIVE_LEASE = 60.0  # seconds a live run's keys outlive the last renewal by its process
LEASE_RENEWAL = 15.0
START_UP_TIMEOUT = 2.0  # the synchronous ping at construction
COMMAND_TIMEOUT = 2.0
FOLLOW_BLOCK_MS = 5000  # a follower's XREAD BLOCK; when it comes back empty, the follower checks the run exists
READ_BATCH = 1000
CATCH_UP_SECONDS = 1.0  # a resume may name an event the generating replica sent but has not written yet
CANCEL_WAIT = 2.0  # how long a cancel through another replica waits for the run's end to be written
CANCEL_POLL = 0.02
CANCEL_REPUBLISH = 0.5
RETRY_MAX = 2.0  # longest pause between attempts to reach Redis again
FLUSH_EVENTS = 5000  # events written by one pipeline at most
COMMAND_CONNECTIONS = 32  # per process: creates, joins, cancels and the flusher's pipelines
FOLLOWER_CONNECTIONS = 1024  # per process: listeners following runs that generate elsewhere

REDIS_ERRORS = (redis.RedisError, OSError)
UNAVAILABLE = "the run store (Redis) cannot be reached; try again shortly"

# Registers a run: prunes expired leases, refuses beyond max_live (0: no limit, a run that already generates).
# KEYS: live, meta. ARGV: now, max_live, deadline, run id, owner, replica, lease ms.
REGISTER = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local max_live = tonumber(ARGV[2])
if max_live > 0 and redis.call('ZCARD', KEYS[1]) >= max_live then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[2], 'owner', ARGV[5], 'status', 'running', 'replica', ARGV[6], 'created', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return 1
"""

# Ends a run: status, leaves the live set, expires after the TTL, and the oldest finished runs beyond max_finished
# are forgotten. KEYS: meta, events, live, finished. ARGV: status, ended, ttl ms, max_finished, run id, cutoff,
# cancelled_by, key prefix.
END = """
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended', ARGV[2], 'cancelled_by', ARGV[7])
redis.call('ZREM', KEYS[3], ARGV[5])
local max_finished = tonumber(ARGV[4])
if max_finished == 0 then redis.call('DEL', KEYS[1], KEYS[2]) return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[6])
local excess = redis.call('ZCARD', KEYS[4]) - max_finished
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[4], excess)
  for i = 1, #oldest, 2 do redis.call('DEL', ARGV[8] .. oldest[i], ARGV[8] .. oldest[i] .. ':events') end
end
return 1
"""


def meta_key(run_id: str) -> str:
    return RUN_KEY + run_id


def events_key(run_id: str) -> str:
    return RUN_KEY + run_id + ":events"


def entry_id(seq: int) -> str:
    """The stream entry of event `seq`: ids are the seqs, so a resume position is an XREAD start."""
    return f"0-{seq + 1}"


def entry_seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1]) - 1


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
    so a lost Redis would stall every request for seconds; we fail at once and decide (503, or generate here)."""
    pool = aredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=COMMAND_TIMEOUT, socket_timeout=socket_timeout,
        socket_connect_timeout=COMMAND_TIMEOUT, socket_keepalive=True, retry=Retry(NoBackoff(), 0))
    return aredis.Redis(connection_pool=pool)


class _Mirror:
    """A run generating in this process, as written to Redis: how far, and whether its hash exists there."""

    __slots__ = ("store", "run", "written", "registered", "cancelled_by", "remote_listeners")

    def __init__(self, store: RedisRunStore, run: Run, registered: bool) -> None:
        self.store = store
        self.run = run
        self.written = 0  # the next seq to write
        self.registered = registered
        self.cancelled_by = ""  # the nonce of the cancel request (from any replica) that stopped it
        self.remote_listeners: list[RemoteReader] = []  # listeners following it through other replicas

    def mark(self, run: Run) -> None:
        """`Run.mirror`: called on every append; the flusher writes what is new."""
        store = self.store
        store.dirty[run.id] = self
        store.wake.set()


class RemoteReader:
    """Stands, among a run's readers, for a listener that follows it through another replica: it counts for the
    disconnect policy, and holds no events back (it reads them from Redis)."""

    __slots__ = ("run",)

    def __init__(self, run: Run) -> None:
        self.run = run

    @property
    def position(self) -> int:
        return self.run.next_seq


class RedisRunStore:
    """Runs shared through Redis: joinable and cancellable through every process that uses the same URL."""

    def __init__(self, url: str, limits: RunLimits) -> None:
        self.limits = limits
        self.url_shown = without_secrets(url)
        self._check_reachable(url)
        self.local = MemoryRunStore(limits)  # the runs generating (and finished) in this process
        self.replica = secrets.token_hex(8)
        self.channel = CHANNEL + self.replica
        self.redis = client(url, COMMAND_CONNECTIONS, COMMAND_TIMEOUT)
        # Each follower holds a connection while it blocks in XREAD; the subscription waits for messages as long
        # as it takes.
        self.followers = client(url, FOLLOWER_CONNECTIONS, FOLLOW_BLOCK_MS / 1000 + COMMAND_TIMEOUT)
        self.subscriber = client(url, 2, None)
        self.dirty: dict[str, _Mirror] = {}
        self.live: dict[str, _Mirror] = {}  # this process's live runs: their leases are renewed
        self.wake = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.healthy = True
        self.tasks: list[asyncio.Task[None]] = []
        self.closing = False
        self.rewrite_all = False
        self.last_renewal = 0.0

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

    # -- background tasks --------------------------------------------------------------------------------------

    def _start(self) -> None:
        if not self.tasks:
            self.tasks = [asyncio.create_task(self._flush_forever(), name="run-store-flusher"),
                          asyncio.create_task(self._subscribe_forever(), name="run-store-subscriber")]

    def _unreachable(self, exc: BaseException) -> None:
        self.rewrite_all = True  # Redis may come back empty (restarted, nothing persisted)
        if self.healthy:  # one line per outage, not one per token
            self.healthy = False
            log.warning("run store: Redis at %s unreachable (%s); runs generate and stream here, joins through "
                        "other replicas wait for it", self.url_shown, type(exc).__name__)
            self.wake.set()

    def _rewrite_all(self) -> None:
        """After an outage (Redis may have restarted empty): every run here that is live or not yet written is
        registered and written again, whole."""
        self.rewrite_all = False
        for mirror in self.live.values():
            self.dirty[mirror.run.id] = mirror
        for mirror in self.dirty.values():
            mirror.registered = False

    async def _flush_forever(self) -> None:
        pause = 0.1
        while not self.closing:
            if self.healthy:
                with suppress(TimeoutError):  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(LEASE_RENEWAL):
                        await self.wake.wait()
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
            self.wake.clear()
            try:
                await self._flush()
            except REDIS_ERRORS as exc:
                self._unreachable(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the flusher outlives any surprise; generations never wait
                log.error("run store: writing runs to Redis failed (%s: %s)", type(exc).__name__,
                          " ".join(str(exc).split())[:200])
                await asyncio.sleep(RETRY_MAX)
                continue
            if not self.healthy:
                self.healthy = True
                pause = 0.1
                log.warning("run store: Redis at %s reachable again", self.url_shown)

    async def _flush(self) -> None:
        """One pipeline: every dirty run's new events, its registration or end, and the leases when due."""
        if self.rewrite_all:
            self._rewrite_all()
        dirty, self.dirty = self.dirty, {}
        now = time.time()
        renew = now - self.last_renewal >= LEASE_RENEWAL
        if not dirty and not renew and self.healthy:
            return
        limits = self.limits
        lease_ms = int(LIVE_LEASE * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.ping()  # a probe when nothing else is sent (Redis coming back)
        done: list[tuple[_Mirror, int, bool]] = []
        budget = FLUSH_EVENTS
        for mirror in dirty.values():
            run = mirror.run
            if budget <= 0:  # the rest next time: one pipeline stays well within the socket timeout
                self.dirty.setdefault(run.id, mirror)
                self.wake.set()
                continue
            events, first, key = run.events, run.first_seq, events_key(run.id)
            if not mirror.registered:  # new to Redis, or to write again whole: from what the run keeps
                pipe.eval(REGISTER, 2, LIVE_KEY, meta_key(run.id), now, 0, now + LIVE_LEASE, run.id,
                          run.owner or "", self.replica, lease_ms)
                pipe.delete(key)
                mirror.written = first
            start = max(mirror.written, first)
            end = min(run.next_seq, start + budget)
            budget -= end - start + 1
            if start > mirror.written:
                # The run dropped events before they were written (a fast generation, a long outage): what Redis
                # keeps must have no hole, so it starts where the run does, and an older resume gets 400.
                pipe.xtrim(key, minid=entry_id(start), approximate=False)
            for seq in range(start, end):
                fields: dict[bytes, bytes] = {b"d": events[seq - first]}
                if run.finished and seq == run.next_seq - 1:
                    fields[b"end"] = run.status.encode()
                pipe.xadd(key, fields, id=entry_id(seq), maxlen=limits.max_events, approximate=False)
            ends = run.finished and end == run.next_seq
            if ends:
                ended = run.ended or now
                pipe.eval(END, 4, meta_key(run.id), key, LIVE_KEY, FINISHED_KEY, run.status, ended,
                          int(limits.ttl * 1000), limits.max_finished, run.id, now - limits.ttl,
                          mirror.cancelled_by, RUN_KEY)
            elif end > start:
                pipe.pexpire(key, lease_ms)
            if end < run.next_seq:
                self.dirty.setdefault(run.id, mirror)
                self.wake.set()
            done.append((mirror, mirror.written, ends))
            mirror.written = end
        if renew:
            for mirror in self.live.values():
                if mirror.registered and not mirror.run.finished:
                    run_id = mirror.run.id
                    pipe.zadd(LIVE_KEY, {run_id: now + LIVE_LEASE}, xx=True)
                    pipe.pexpire(meta_key(run_id), lease_ms)
                    pipe.pexpire(events_key(run_id), lease_ms)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException:
            for mirror, written, _ in done:  # written again next time (an entry that got there is refused)
                mirror.written = written
                self.dirty.setdefault(mirror.run.id, mirror)
            self._forget_stale(now)
            raise
        for result in results:
            # An entry written by an attempt that failed after sending it: already there, nothing lost.
            if isinstance(result, redis.ResponseError) and "equal or smaller" not in str(result):
                log.warning("run store: Redis refused a write: %s", str(result)[:200])
        if renew:
            self.last_renewal = now
        for mirror, _, ends in done:
            mirror.registered = True
            if ends:
                self.live.pop(mirror.run.id, None)

    def _forget_stale(self, now: float) -> None:
        """While Redis is away, runs that ended longer than RUN_TTL ago need not be written any more: what waits
        for Redis stays bounded."""
        for run_id, mirror in list(self.dirty.items()):
            run = mirror.run
            if run.finished and (run.ended or now) < now - self.limits.ttl:
                del self.dirty[run_id]
                self.live.pop(run_id, None)

    async def _subscribe_forever(self) -> None:
        """Cancels, joins and leaves that other replicas send about the runs generating here."""
        pause = 0.1
        lost = False
        while not self.closing:
            pubsub = self.subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                if lost:  # Redis may have restarted without our runs
                    self.rewrite_all = True
                    self.wake.set()
                    lost, pause = False, 0.1
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except REDIS_ERRORS as exc:
                lost = True
                self._unreachable(exc)
            finally:
                self.subscribed.clear()
                with suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    def _on_message(self, data: bytes) -> None:
        kind, _, rest = data.partition(b" ")
        run_id, _, nonce = rest.decode(errors="replace").partition(" ")
        mirror = self.live.get(run_id)
        if mirror is None:
            return
        run = mirror.run
        if kind == b"cancel":
            if run.cancel():
                mirror.cancelled_by = nonce
        elif kind == b"join":
            reader = RemoteReader(run)
            mirror.remote_listeners.append(reader)
            run.joined(reader)  # type: ignore[arg-type]
        elif kind == b"leave" and mirror.remote_listeners:
            run.left(mirror.remote_listeners.pop())  # type: ignore[arg-type]

    # -- the store -------------------------------------------------------------------------------------------

    async def create(self, owner: str | None, on_disconnect: OnDisconnect) -> Run:
        self._start()
        run = self.local.create_now(owner, on_disconnect)
        registered = False
        if self.healthy:
            if self.local.started == 1 and not self.subscribed.is_set():
                # The first run here: be subscribed for its cancel before anyone knows its id.
                with suppress(TimeoutError):
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await self.subscribed.wait()
            now = time.time()
            try:
                registered = bool(await self.redis.eval(
                    REGISTER, 2, LIVE_KEY, meta_key(run.id), now, self.limits.max_live, now + LIVE_LEASE, run.id,
                    owner or "", self.replica, int(LIVE_LEASE * 1000)))
            except REDIS_ERRORS as exc:
                # Generate anyway: this replica serves it; the flusher registers it when Redis is back.
                self._unreachable(exc)
            else:
                if not registered:
                    self.local.live.pop(run.id, None)
                    self.local.started -= 1
                    raise RunStoreFull(f"{self.limits.max_live} runs are generating across the replicas, the most "
                                       "the store keeps (RUN_MAX_LIVE)")
        mirror = _Mirror(self, run, registered)
        run.mirror = mirror.mark
        self.live[run.id] = mirror
        return run

    def _is_local(self, run_id: str) -> bool:
        return run_id in self.local.live or run_id in self.local.finished

    async def _meta(self, run_id: str, owner: str | None) -> dict[bytes, bytes]:
        try:
            meta: dict[bytes, bytes] = await self.redis.hgetall(meta_key(run_id))
        except REDIS_ERRORS:
            raise RunStoreUnavailable(UNAVAILABLE) from None
        if not meta or meta.get(b"owner", b"").decode() != (owner or ""):
            raise RunNotFound(run_id)
        return meta

    async def listen(self, run_id: str, owner: str | None, last_event_id: str | None) -> AsyncIterator[bytes]:
        if self._is_local(run_id):
            return await self.local.listen(run_id, owner, last_event_id)
        self._start()
        after = resume_after(run_id, last_event_id)
        meta = await self._meta(run_id, owner)
        key = events_key(run_id)
        try:
            first, last = await self.redis.pipeline(transaction=False).xrange(key, count=1).xrevrange(
                key, count=1).execute()
            last_seq, ended = (entry_seq(last[0][0]), b"end" in last[0][1]) if last else (-1, False)
            if after > last_seq and meta.get(b"status") == b"running":
                last_seq, ended = await self._catch_up(key, after, last_seq)
        except REDIS_ERRORS:
            raise RunStoreUnavailable(UNAVAILABLE) from None
        check_resume(run_id, after, entry_seq(first[0][0]) if first else 0, last_seq, ended)
        replica = meta.get(b"replica", b"").decode() if meta.get(b"status") == b"running" and not ended else None
        follower = RemoteFollower(self, run_id, after, replica)
        await follower.announce(b"join")
        return follower

    async def _catch_up(self, key: str, after: int, last_seq: int) -> tuple[int, bool]:
        """Waits (briefly) until the stream holds event `after`: the replica generating it may have sent it to
        its own listeners a moment before writing it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_SECONDS
        ended = False
        while last_seq < after and not ended and (left := deadline - loop.time()) > 0:
            reply = await self.followers.xread({key: entry_id(last_seq)}, count=READ_BATCH,
                                               block=max(1, int(left * 1000)))
            for _, entries in reply or ():
                last_seq = entry_seq(entries[-1][0])
                ended = b"end" in entries[-1][1]
        return last_seq, ended

    async def cancel(self, run_id: str, owner: str | None) -> CancelOutcome:
        if self._is_local(run_id):
            return await self.local.cancel(run_id, owner)
        self._start()
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
                status_now, cancelled_by = await self.redis.hmget(meta_key(run_id), ["status", "cancelled_by"])
                if status_now is None:
                    raise RunNotFound(run_id)
                if status_now != b"running":
                    if cancelled_by == nonce.encode():
                        return CancelOutcome(run_id=run_id, cancelled=True, status="cancelled",
                                             detail="the run was cancelled")
                    return already_ended(run_id, known_status(status_now.decode()))
        except REDIS_ERRORS:
            raise RunStoreUnavailable(UNAVAILABLE) from None
        return CancelOutcome(run_id=run_id, cancelled=False, status="cancelling", detail=(
            f"the cancel was sent to the replica generating the run, which has not confirmed it within "
            f"{CANCEL_WAIT:g}s; the run's stream tells how it ends"))

    async def info(self, run_id: str, owner: str | None) -> RunInfo:
        if self._is_local(run_id):
            return await self.local.info(run_id, owner)
        meta = await self._meta(run_id, owner)
        try:
            last = await self.redis.xrevrange(events_key(run_id), count=1)
        except REDIS_ERRORS:
            raise RunStoreUnavailable(UNAVAILABLE) from None
        ended = meta.get(b"ended")
        return RunInfo(run_id=run_id, status=known_status(meta.get(b"status", b"").decode()),
                       events=entry_seq(last[0][0]) + 1 if last else 0, listeners=None,
                       created=float(meta.get(b"created", b"0")), ended=float(ended) if ended else None)

    def stats(self) -> dict[str, int]:
        return self.local.stats()

    async def close(self) -> None:
        self.closing = True
        if self.tasks and self.healthy and self.dirty:  # the terminal events of the streams ended by the shutdown
            with suppress(*REDIS_ERRORS, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self._flush()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=COMMAND_TIMEOUT)
        self.tasks = []
        for client in (self.redis, self.followers, self.subscriber):
            with suppress(Exception):
                await client.aclose()


def known_status(status: str) -> RunStatus:
    return status if status in ("running", "completed", "cancelled", "failed") else "failed"  # type: ignore[return-value]


class RemoteFollower:
    """Follows a run generating in another process: its stream from after `after`, replayed then live (one
    `XREAD BLOCK` does both), until the terminal entry. Each step returns what one read brought, in one piece.
    If Redis goes away, the stream ends without its terminal event: the client reconnects and resumes."""

    def __init__(self, store: RedisRunStore, run_id: str, after: int, replica: str | None) -> None:
        self.store = store
        self.run_id = run_id
        self.key = events_key(run_id)
        self.position = entry_id(after)  # the last entry read
        self.replica = replica  # the generating process, told when this listener joins and leaves
        self.ended = False
        self.closed = False

    def __aiter__(self) -> RemoteFollower:
        return self

    async def __anext__(self) -> bytes:
        redis_ = self.store.followers
        while not (self.ended or self.closed):
            try:
                reply = await redis_.xread({self.key: self.position}, count=READ_BATCH, block=FOLLOW_BLOCK_MS)
                if not reply:  # quiet for a while: has the run gone (expired, or its replica died)?
                    status = await redis_.hget(meta_key(self.run_id), "status")
                    if status != b"running":
                        break
                    continue
            except REDIS_ERRORS as exc:  # Redis lost, or no connection free: the client reconnects and resumes
                log.info("run store: a listener following a run through Redis stopped (%s)", type(exc).__name__)
                break
            entries = reply[0][1]
            self.position = entries[-1][0]
            self.ended = b"end" in entries[-1][1]
            chunk = b"".join(fields.get(b"d", b"") for _, fields in entries)
            if chunk:
                return chunk
        await self.aclose()
        raise StopAsyncIteration

    async def announce(self, kind: bytes) -> None:
        """Tells the generating process a listener joined or left, so that its disconnect policy counts it."""
        if self.replica is None:
            return
        with suppress(*REDIS_ERRORS):
            await self.store.redis.publish(CHANNEL + self.replica, kind + b" " + self.run_id.encode())

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.announce(b"leave")
