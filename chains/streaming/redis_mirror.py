"""The Redis side of the runs that generate in this process: the write-behind that mirrors them into Redis.

A run generates here as an ordinary in-memory `Run`: its listeners here follow it in memory and never wait for
Redis (and keep streaming if Redis goes away). Each append marks the run dirty (a dict store, the whole per-token
cost); one flusher task writes every dirty run's new events with one pipeline, as entries of a Redis Stream per
run whose ids are the events' seqs, and renews the leases of the runs live here. A subscriber task hears what
other replicas send about these runs: a cancel, a listener joining or leaving through them.

Keys (`<p>` = `chains:run:`): `<p><id>` a hash (owner, status, replica, created, ended, cancelled_by);
`<p><id>:events` the stream (entry id `0-<seq+1>`, field `d` the encoded event, `end` on the terminal one);
`chains:runs:live` a sorted set of live runs by lease deadline (RUN_MAX_LIVE across replicas);
`chains:runs:finished` finished runs by end time (RUN_MAX_FINISHED). A live run's keys expire `LIVE_LEASE`
seconds after its process last renewed them (a crashed replica's runs go away); a finished run's, `RUN_TTL`
after its end. The store that reads them (joins, cancels through other replicas) is chains.streaming.redis_store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress

import redis
import redis.asyncio as aredis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from chains.streaming.run import Run
from chains.streaming.store import RunLimits

log = logging.getLogger(__name__)

RUN_KEY = "chains:run:"
LIVE_KEY = "chains:runs:live"
FINISHED_KEY = "chains:runs:finished"
CHANNEL = "chains:replica:"

LIVE_LEASE = 60.0  # seconds a live run's keys outlive the last renewal by its process
LEASE_RENEWAL = 15.0
COMMAND_TIMEOUT = 2.0
RETRY_MAX = 2.0  # longest pause between attempts to reach Redis again
FLUSH_EVENTS = 5000  # events written by one pipeline at most

REDIS_ERRORS = (redis.RedisError, OSError)

# Registers a run: prunes expired leases and, when `check` is 1, refuses beyond max_live (0: no limit) and beyond
# the budgets of its address and its key (0: none). A budget in force keeps the client's live runs in a sorted set
# of its own, by lease deadline like the live set. Answers {1, 0}, or the refusal: {0, 0} the store is full,
# {-1, n} the address has n live runs, {-2, n} the key has.
# KEYS: live, meta, the address's set, the key's set. ARGV: now, max_live, deadline, run id, owner, replica,
# lease ms, address, max per address, max per key, check.
REGISTER = """
local now = ARGV[1]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local check = ARGV[11] == '1'
local max_live = tonumber(ARGV[2])
if check and max_live > 0 and redis.call('ZCARD', KEYS[1]) >= max_live then return {0, 0} end
local by_address = tonumber(ARGV[9]) > 0 and ARGV[8] ~= ''
local by_key = tonumber(ARGV[10]) > 0 and ARGV[5] ~= ''
if by_address then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local n = redis.call('ZCARD', KEYS[3])
  if check and n >= tonumber(ARGV[9]) then return {-1, n} end
end
if by_key then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  local n = redis.call('ZCARD', KEYS[4])
  if check and n >= tonumber(ARGV[10]) then return {-2, n} end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
if by_address then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4]) redis.call('PEXPIRE', KEYS[3], ARGV[7]) end
if by_key then redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4]) redis.call('PEXPIRE', KEYS[4], ARGV[7]) end
redis.call('HSET', KEYS[2], 'owner', ARGV[5], 'status', 'running', 'replica', ARGV[6], 'created', now)
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return {1, 0}
"""

# Ends a run: status, leaves the live sets (the store's, its address's and its key's), expires after the TTL, and
# the oldest finished runs beyond max_finished are forgotten. KEYS: meta, events, live, finished, the address's
# set, the key's set. ARGV: status, ended, ttl ms, max_finished, run id, cutoff, cancelled_by, key prefix.
END = """
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended', ARGV[2], 'cancelled_by', ARGV[7])
redis.call('ZREM', KEYS[3], ARGV[5])
redis.call('ZREM', KEYS[5], ARGV[5])
redis.call('ZREM', KEYS[6], ARGV[5])
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


def address_key(address: str | None) -> str:
    """The sorted set of the live runs an address started (a placeholder key when there is none)."""
    return LIVE_KEY + ":address:" + (address or "")


def owner_key(owner: str | None) -> str:
    """The sorted set of the live runs an API key started (a placeholder key when there is none)."""
    return LIVE_KEY + ":key:" + (owner or "")


def name_key(name: str, owner: str | None) -> str:
    """A name an owner gave its latest run (a chat's id): the run's id."""
    return RUN_KEY + "name:" + (owner or "") + ":" + name


def meta_key(run_id: str) -> str:
    return RUN_KEY + run_id


def events_key(run_id: str) -> str:
    return RUN_KEY + run_id + ":events"


def entry_id(seq: int) -> str:
    """The stream entry of event `seq`: ids are the seqs, so a resume position is an XREAD start."""
    return f"0-{seq + 1}"


def entry_seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1]) - 1


class MirroredRun:
    """A run generating in this process, as written to Redis: how far, and whether its hash exists there."""

    __slots__ = ("cancelled_by", "mirror", "registered", "remote_listeners", "run", "written")

    def __init__(self, mirror: RunMirror, run: Run, registered: bool) -> None:
        self.mirror = mirror
        self.run = run
        self.written = 0  # the next seq to write
        self.registered = registered
        self.cancelled_by = ""  # the nonce of the cancel request (from any replica) that stopped it
        self.remote_listeners: list[RemoteReader] = []  # listeners following it through other replicas

    def mark(self, run: Run) -> None:
        """`Run.mirror`: called on every append; the flusher writes what is new."""
        mirror = self.mirror
        mirror.dirty[run.id] = self
        mirror.wake.set()


class RemoteReader:
    """Stands, among a run's readers, for a listener that follows it through another replica: it counts for the
    disconnect policy, and holds no events back (it reads them from Redis)."""

    __slots__ = ("run",)

    def __init__(self, run: Run) -> None:
        self.run = run

    @property
    def position(self) -> int:
        return self.run.next_seq


class _Written:
    """What one pipeline wrote of one run: to be undone if the pipeline fails."""

    __slots__ = ("ends", "mirrored", "written_before")

    def __init__(self, mirrored: MirroredRun, written_before: int, ends: bool) -> None:
        self.mirrored, self.written_before, self.ends = mirrored, written_before, ends


class RunMirror:
    """The write-behind of this process's runs: the flusher (events, registrations, ends), the leases, and the
    subscription to this replica's channel."""

    def __init__(self, redis_client: aredis.Redis, subscriber: aredis.Redis, limits: RunLimits, replica: str,
                 url_shown: str) -> None:
        self.redis = redis_client
        self.subscriber = subscriber
        self.limits = limits
        self.replica = replica
        self.channel = CHANNEL + replica
        self.url_shown = url_shown
        self.dirty: dict[str, MirroredRun] = {}
        self.live: dict[str, MirroredRun] = {}  # this process's live runs: their leases are renewed
        self.wake = asyncio.Event()
        self.subscribed = asyncio.Event()
        self.healthy = True
        self.tasks: list[asyncio.Task[None]] = []
        self.closing = False
        self.rewrite_all = False
        self.last_renewal = 0.0

    def start(self) -> None:
        if not self.tasks:
            self.tasks = [asyncio.create_task(self._flush_forever(), name="run-store-flusher"),
                          asyncio.create_task(self._subscribe_forever(), name="run-store-subscriber")]

    def add(self, run: Run, registered: bool) -> None:
        """Mirror `run` from now on (`registered`: its hash is in Redis already)."""
        mirrored = MirroredRun(self, run, registered)
        run.mirror = mirrored.mark
        self.live[run.id] = mirrored

    def unreachable(self, exc: BaseException) -> None:
        self.rewrite_all = True  # Redis may come back empty (restarted, nothing persisted)
        if self.healthy:  # one line per outage, not one per token
            self.healthy = False
            log.warning("run store: Redis at %s unreachable (%s); runs generate and stream here, joins through "
                        "other replicas wait for it", self.url_shown, type(exc).__name__)
            self.wake.set()

    async def close(self) -> None:
        """The terminal events of the streams ended by the shutdown are written, then the tasks stop."""
        self.closing = True
        if self.tasks and self.healthy and self.dirty:
            with suppress(*REDIS_ERRORS, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await self.flush()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=COMMAND_TIMEOUT)
        self.tasks = []

    # -- the flusher -----------------------------------------------------------------------------------------

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
                await self.flush()
            except REDIS_ERRORS as exc:
                self.unreachable(exc)
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

    async def flush(self) -> None:
        """One pipeline: every dirty run's new events, its registration or end, and the leases when due."""
        if self.rewrite_all:
            self._rewrite_all()
        dirty, self.dirty = self.dirty, {}
        now = time.time()
        renew = now - self.last_renewal >= LEASE_RENEWAL
        if not dirty and not renew and self.healthy:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.ping()  # a probe when nothing else is sent (Redis coming back)
        written: list[_Written] = []
        budget = FLUSH_EVENTS
        for mirrored in dirty.values():
            if budget <= 0:  # the rest next time: one pipeline stays well within the socket timeout
                self._again(mirrored)
                continue
            budget, step = self._write_run(pipe, mirrored, now, budget)
            written.append(step)
        if renew:
            self._renew_leases(pipe, now)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._undo(written)
            self._forget_stale(now)
            raise
        self._check_results(results)
        if renew:
            self.last_renewal = now
        for step in written:
            step.mirrored.registered = True
            if step.ends:
                self.live.pop(step.mirrored.run.id, None)

    def _again(self, mirrored: MirroredRun) -> None:
        """Written by the next pipeline."""
        self.dirty.setdefault(mirrored.run.id, mirrored)
        self.wake.set()

    def _write_run(self, pipe: Pipeline, mirrored: MirroredRun, now: float, budget: int) -> tuple[int, _Written]:
        """Queues the run's registration (when new to Redis), its events not yet written (at most `budget`), and
        its end or the events' lease. Returns the budget left and what was queued."""
        run, limits = mirrored.run, self.limits
        key = events_key(run.id)
        if not mirrored.registered:  # new to Redis, or to write again whole: from what the run keeps
            # A run that already generates: counted again (after an outage), never refused.
            pipe.eval(REGISTER, 4, LIVE_KEY, meta_key(run.id), address_key(run.address), owner_key(run.owner), now,
                      0, now + LIVE_LEASE, run.id, run.owner or "", self.replica, int(LIVE_LEASE * 1000),
                      run.address or "", limits.max_live_per_address, limits.max_live_per_key, 0)
            pipe.delete(key)
            mirrored.written = run.first_seq
        start = max(mirrored.written, run.first_seq)
        end = min(run.next_seq, start + budget)
        if start > mirrored.written:
            # The run dropped events before they were written (a fast generation, a long outage): what Redis
            # keeps must have no hole, so it starts where the run does, and an older resume gets 400.
            pipe.xtrim(key, minid=entry_id(start), approximate=False)
        self._append_events(pipe, run, start, end)
        ends = run.finished and end == run.next_seq
        if ends:
            pipe.eval(END, 6, meta_key(run.id), key, LIVE_KEY, FINISHED_KEY, address_key(run.address),
                      owner_key(run.owner), run.status, run.ended or now,
                      int(limits.ttl * 1000), limits.max_finished, run.id, now - limits.ttl,
                      mirrored.cancelled_by, RUN_KEY)
        elif end > start:
            pipe.pexpire(key, int(LIVE_LEASE * 1000))
        if end < run.next_seq:
            self._again(mirrored)
        step = _Written(mirrored, mirrored.written, ends)
        mirrored.written = end
        return budget - (end - start + 1), step

    def _append_events(self, pipe: Pipeline, run: Run, start: int, end: int) -> None:
        """Events `start`…`end - 1` as stream entries; the terminal one says how the run ended."""
        events, first, key = run.events, run.first_seq, events_key(run.id)
        last = run.next_seq - 1 if run.finished else -1
        for seq in range(start, end):
            fields: dict[FieldT, EncodableT] = {b"d": events[seq - first]}
            if seq == last:
                fields[b"end"] = run.status.encode()
            pipe.xadd(key, fields, id=entry_id(seq), maxlen=self.limits.max_events, approximate=False)

    def _renew_leases(self, pipe: Pipeline, now: float) -> None:
        lease_ms = int(LIVE_LEASE * 1000)
        by_address, by_key = self.limits.max_live_per_address > 0, self.limits.max_live_per_key > 0
        for mirrored in self.live.values():
            run = mirrored.run
            if mirrored.registered and not run.finished:
                deadline = {run.id: now + LIVE_LEASE}
                pipe.zadd(LIVE_KEY, deadline, xx=True)
                pipe.pexpire(meta_key(run.id), lease_ms)
                pipe.pexpire(events_key(run.id), lease_ms)
                for counted, client_key in ((by_address and run.address, address_key(run.address)),
                                            (by_key and run.owner, owner_key(run.owner))):
                    if counted:  # the client's set lives as long as its newest lease
                        pipe.zadd(client_key, deadline, xx=True)
                        pipe.pexpire(client_key, lease_ms)

    def _undo(self, written: list[_Written]) -> None:
        """A pipeline that failed: its runs are written again next time (an entry that got there is refused)."""
        for step in written:
            step.mirrored.written = step.written_before
            self.dirty.setdefault(step.mirrored.run.id, step.mirrored)

    @staticmethod
    def _check_results(results: list[object]) -> None:
        for result in results:
            # An entry written by an attempt that failed after sending it: already there, nothing lost.
            if isinstance(result, redis.ResponseError) and "equal or smaller" not in str(result):
                log.warning("run store: Redis refused a write: %s", str(result)[:200])

    def _rewrite_all(self) -> None:
        """After an outage (Redis may have restarted empty): every run here that is live or not yet written is
        registered and written again, whole."""
        self.rewrite_all = False
        for mirrored in self.live.values():
            self.dirty[mirrored.run.id] = mirrored
        for mirrored in self.dirty.values():
            mirrored.registered = False

    def _forget_stale(self, now: float) -> None:
        """While Redis is away, runs that ended longer than RUN_TTL ago need not be written any more: what waits
        for Redis stays bounded."""
        for run_id, mirrored in list(self.dirty.items()):
            run = mirrored.run
            if run.finished and (run.ended or now) < now - self.limits.ttl:
                del self.dirty[run_id]
                self.live.pop(run_id, None)

    # -- the subscriber --------------------------------------------------------------------------------------

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
                        self.on_message(message["data"])
            except REDIS_ERRORS as exc:
                lost = True
                self.unreachable(exc)
            finally:
                self.subscribed.clear()
                with suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    def on_message(self, data: bytes) -> None:
        kind, _, rest = data.partition(b" ")
        run_id, _, nonce = rest.decode(errors="replace").partition(" ")
        mirrored = self.live.get(run_id)
        if mirrored is None:
            return
        run = mirrored.run
        if kind == b"cancel":
            if run.cancel():
                mirrored.cancelled_by = nonce
        elif kind == b"join":
            reader = RemoteReader(run)
            mirrored.remote_listeners.append(reader)
            run.joined(reader)
        elif kind == b"leave" and mirrored.remote_listeners:
            run.left(mirrored.remote_listeners.pop())
