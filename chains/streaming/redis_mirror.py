"""The Redis side of the runs that generate in this process: the write-behind that mirrors them into Redis, the
leases that tell the other replicas this one is alive, and the reaper that ends the runs of a replica that is not.

A run generates here as an ordinary in-memory `Run`: its listeners here follow it in memory and never wait for
Redis. Each append marks the run dirty (a dict store, the whole per-token cost); one flusher task writes every dirty
run's new events with one pipeline, as one entry of a Redis Stream per run per flush (a chunk: its events' bytes
and their lengths, entry id the seq of its last event), at most every `MIN_FLUSH_GAP` so that a fast run writes
many events per round trip. Every `RUN_LEASE_RENEWAL_SECONDS` the same pipeline renews the leases: this replica's
own, and each of its live runs'. A subscriber task hears what other replicas send about these runs: a cancel, a
listener joining or leaving through them.

A run whose lease lapsed (its replica died, froze, or lost Redis for `RUN_LEASE_SECONDS`) is ended by whichever
replica's reaper sees it first: it reads the events the run kept, builds the terminal `replica_lost` event as the
run's own encoding would have (chains.streaming.events.LOST_ENDINGS), and appends it atomically (LOSE) only if
the lease is still lapsed and nothing was written meanwhile. The run is then failed, replayable for `RUN_TTL`, and
counted nowhere; a late write by the lost replica is refused (the stream's last id is moved past any seq).

Keys (`<p>` = `chains:run:`): `<p><id>` a hash (owner, status, reason, replica, address, encoding, created, ended,
cancelled_by); `<p><id>:events` the stream; `chains:runs:live` a sorted set of live runs by lease deadline
(RUN_MAX_LIVE across replicas, and the reaper's work); `chains:runs:finished` finished runs by end time
(RUN_MAX_FINISHED); `chains:replicas` the replicas by lease deadline (a listener through a replica that lapsed no
longer counts). A live run's keys expire `RUN_LIFE` after it started at the latest (a backstop: the reaper ends it
long before); a finished run's, `RUN_TTL` after its end. The store that reads them (joins, cancels through other
replicas) is chains.streaming.redis_store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from contextlib import suppress
from dataclasses import dataclass
from typing import cast

import redis
import redis.asyncio as aredis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT, FieldT

from chains.streaming.events import LOST_ENDINGS, ErrorEvent
from chains.streaming.run import Run
from chains.streaming.store import RunLimits

log = logging.getLogger(__name__)

RUN_KEY = "chains:run:"
LIVE_KEY = "chains:runs:live"
FINISHED_KEY = "chains:runs:finished"
REPLICAS_KEY = "chains:replicas"
REAPING_KEY = "chains:reaping:"
CHANNEL = "chains:replica:"

# The longest a reply may generate (STREAM_TIMEOUT's upper bound): a live run's keys, and a name, outlive it.
RUN_LIFE = 3600.0
COMMAND_TIMEOUT = 2.0
RETRY_MAX = 2.0  # longest pause between attempts to reach Redis again
FLUSH_EVENTS = 5000  # events written by one pipeline at most
MIN_FLUSH_GAP = 0.002  # seconds between two flushes at least: a fast run's events go in one chunk, not one each
REAP_BATCH = 64  # lapsed runs one reaper pass ends at most
LAST_ID = "0-999999999"  # a lost run's stream is moved here: any later write by its replica is refused
LOST = ("the replica generating this run was lost (it stopped renewing its lease); what it had sent is kept, "
        "and the run is over: start a new one")

REDIS_ERRORS = (redis.RedisError, OSError)
LENGTHS = "I"  # a chunk's event lengths, as 32-bit unsigned ints in the machine's order
assert array(LENGTHS).itemsize == 4


@dataclass(frozen=True, slots=True)
class Leases:
    """How long a replica's leases last (`RUN_LEASE_SECONDS`) and how often it renews them."""

    seconds: float = 5.0
    renewal: float = 1.0


# The ending every finished run goes through (END for its own replica, LOSE for a reaper): status and reason,
# leaves the live sets (the store's, its address's and its key's), expires after the TTL, and the oldest finished
# runs beyond max_finished are forgotten.
_FINISH = """
local function finish(meta, events, live, finished, by_address, by_key, status, ended, ttl_ms, max_finished,
                      run_id, cutoff, cancelled_by, prefix, reason)
  redis.call('HSET', meta, 'status', status, 'ended', ended, 'cancelled_by', cancelled_by, 'reason', reason)
  redis.call('ZREM', live, run_id)
  redis.call('ZREM', by_address, run_id)
  redis.call('ZREM', by_key, run_id)
  max_finished = tonumber(max_finished)
  if max_finished == 0 then redis.call('DEL', meta, events) return end
  redis.call('PEXPIRE', meta, ttl_ms)
  redis.call('PEXPIRE', events, ttl_ms)
  redis.call('ZADD', finished, ended, run_id)
  redis.call('ZREMRANGEBYSCORE', finished, '-inf', cutoff)
  local excess = redis.call('ZCARD', finished) - max_finished
  if excess > 0 then
    local oldest = redis.call('ZPOPMIN', finished, excess)
    for i = 1, #oldest, 2 do redis.call('DEL', prefix .. oldest[i], prefix .. oldest[i] .. ':events') end
  end
end
"""

# Registers a run: when `check` is 1, refuses beyond max_live (0: no limit; lapsed leases do not count) and beyond
# the budgets of its address and its key (0: none). A budget in force keeps the client's live runs in a sorted set
# of its own (until they end, or RUN_LIFE). With `check` 0 it writes again a run that already generates (after
# Redis came back, perhaps empty), unless the run has ended there meanwhile (a reaper ended it: {-3, 0}).
# Answers {1, 0}, or the refusal: {0, 0} the store is full, {-1, n} the address has n live runs, {-2, n} the key.
# KEYS: live, meta, the address's set, the key's set, events. ARGV: now, max_live, lease deadline, run id, owner,
# replica, life ms, address, max per address, max per key, check, encoding.
REGISTER = """
local now = tonumber(ARGV[1])
local check = ARGV[11] == '1'
if not check then
  local status = redis.call('HGET', KEYS[2], 'status')
  if status and status ~= 'running' then return {-3, 0} end
end
local max_live = tonumber(ARGV[2])
if check and max_live > 0 and redis.call('ZCOUNT', KEYS[1], now, '+inf') >= max_live then return {0, 0} end
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
local life_end = now + tonumber(ARGV[7]) / 1000
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
if by_address then redis.call('ZADD', KEYS[3], life_end, ARGV[4]) redis.call('PEXPIRE', KEYS[3], ARGV[7]) end
if by_key then redis.call('ZADD', KEYS[4], life_end, ARGV[4]) redis.call('PEXPIRE', KEYS[4], ARGV[7]) end
redis.call('HSET', KEYS[2], 'owner', ARGV[5], 'status', 'running', 'replica', ARGV[6], 'created', now,
           'address', ARGV[8], 'encoding', ARGV[12])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
if not check then redis.call('DEL', KEYS[5]) end
return {1, 0}
"""

# Ends a run its own replica ended, unless a reaper ended it first (then the reaper's ending stands).
# KEYS: meta, events, live, finished, the address's set, the key's set. ARGV: status, ended, ttl ms, max_finished,
# run id, cutoff, cancelled_by, key prefix, reason.
END = _FINISH + """
if redis.call('HGET', KEYS[1], 'reason') == 'replica_lost' then return 0 end
finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
       ARGV[7], ARGV[8], ARGV[9])
return 1
"""

# Ends a run whose lease lapsed, with the terminal entry a reaper built: only if the lease is still lapsed, the run
# still running, and its last entry the one the reaper read (else -1: read again). Its stream's last id moves to
# LAST_ID, so that a late write of the lost replica is refused. KEYS: meta, events, live, finished, the address's
# set, the key's set. ARGV: now, ttl ms, max_finished, run id, cutoff, key prefix, last entry id read ('' none),
# terminal entry id, terminal bytes, last id.
LOSE = _FINISH + """
local deadline = redis.call('ZSCORE', KEYS[3], ARGV[4])
if not deadline or tonumber(deadline) >= tonumber(ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then redis.call('ZREM', KEYS[3], ARGV[4]) return 0 end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last_id = last[1] and last[1][1] or ''
if last_id ~= ARGV[7] then return -1 end
redis.call('XADD', KEYS[2], ARGV[8], 'd', ARGV[9], 'end', 'failed')
redis.call('XSETID', KEYS[2], ARGV[10])
finish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], 'failed', ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
       '', ARGV[6], 'replica_lost')
return 1
"""

# Renews this replica's lease and its live runs' leases; answers the runs that are no longer live in Redis (a
# reaper ended them while this replica could not renew). KEYS: live, replicas. ARGV: deadline, replica, run ids….
RENEW = """
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
local gone = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
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
    """The stream entry whose last event is `seq`: ids are the seqs, so a resume position is an XREAD start."""
    return f"0-{seq + 1}"


def entry_seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1]) - 1


def event_id(run_id: str, seq: int) -> bytes:
    return b"%b:%d" % (run_id.encode(), seq)


def chunk_lengths(fields: dict[bytes, bytes]) -> array[int] | None:
    """The lengths of a chunk's events; None for a chunk of one event."""
    packed = fields.get(b"o")
    if packed is None:
        return None
    lengths = array(LENGTHS)
    lengths.frombytes(packed)
    return lengths


def first_seq(entry: tuple[bytes, dict[bytes, bytes]]) -> int:
    """The seq of a chunk's first event."""
    lengths = chunk_lengths(entry[1])
    return entry_seq(entry[0]) - (len(lengths) - 1 if lengths is not None else 0)


def events_after(entry: tuple[bytes, dict[bytes, bytes]], after: int) -> bytes:
    """The bytes of a chunk's events whose seq is above `after`."""
    fields = entry[1]
    data = fields.get(b"d", b"")
    lengths = chunk_lengths(fields)
    last = entry_seq(entry[0])
    if lengths is None:
        return data if last > after else b""
    skip = after + 1 - (last - len(lengths) + 1)
    if skip <= 0:
        return data
    return data[sum(lengths[:skip]):] if skip < len(lengths) else b""


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
    """Stands, among a run's readers, for a listener that follows it through another replica (`replica`): it counts
    for the disconnect policy while that replica holds its lease, and holds no events back (it reads them from
    Redis)."""

    __slots__ = ("replica", "run")

    def __init__(self, run: Run, replica: str) -> None:
        self.run = run
        self.replica = replica

    @property
    def position(self) -> int:
        return self.run.next_seq


class _Written:
    """What one pipeline wrote of one run: to be undone if the pipeline fails."""

    __slots__ = ("ends", "mirrored", "registers_at", "written_before")

    def __init__(self, mirrored: MirroredRun, written_before: int, ends: bool, registers_at: int | None) -> None:
        self.mirrored, self.written_before, self.ends = mirrored, written_before, ends
        self.registers_at = registers_at  # the REGISTER's place in the pipeline, when it registers the run again


class RunMirror:
    """The write-behind of this process's runs: the flusher (events, registrations, ends), the leases, the reaper,
    and the subscription to this replica's channel."""

    def __init__(self, redis_client: aredis.Redis, subscriber: aredis.Redis, limits: RunLimits, replica: str,
                 url_shown: str, leases: Leases | None = None) -> None:
        self.redis = redis_client
        self.subscriber = subscriber
        self.limits = limits
        self.leases = leases or Leases()
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
        # Monotonic times: the last pipeline Redis answered, and since when it has answered without a gap longer
        # than a lease (a reaper acts only then: after an outage of Redis itself, no replica could renew).
        self.last_contact = self.in_contact_since = time.monotonic()
        self.reaped = 0  # runs this replica's reaper ended

    def start(self) -> None:
        if not self.tasks:
            self.wake.set()  # the first flush renews at once: this replica's lease is there before its listeners
            self.last_contact = self.in_contact_since = time.monotonic()
            self.tasks = [asyncio.create_task(self._flush_forever(), name="run-store-flusher"),
                          asyncio.create_task(self._subscribe_forever(), name="run-store-subscriber"),
                          asyncio.create_task(self._reap_forever(), name="run-store-reaper")]

    def add(self, run: Run, registered: bool) -> None:
        """Mirror `run` from now on (`registered`: its hash is in Redis already)."""
        mirrored = MirroredRun(self, run, registered)
        run.mirror = mirrored.mark
        self.live[run.id] = mirrored

    def unreachable(self, exc: BaseException) -> None:
        self.rewrite_all = True  # Redis may come back empty (restarted, nothing persisted)
        if self.healthy:  # one line per outage, not one per token
            self.healthy = False
            log.warning("run store: Redis at %s unreachable (%s); runs generating here go on streaming here, new "
                        "runs are refused (503) and joins through other replicas wait for it until it is back",
                        self.url_shown, type(exc).__name__)
            self.wake.set()

    def unready(self) -> str | None:
        """Why this replica should take no new run: Redis did not answer lately (the flusher asks it at every
        renewal)."""
        if not self.tasks:  # not started: nothing asked of Redis yet (the first command will tell)
            return None
        silent = time.monotonic() - self.last_contact
        if not self.healthy or silent > self.leases.renewal + COMMAND_TIMEOUT + 0.5:
            # No address: the probe answers without a key (the log names it).
            return f"the run store (Redis) has not answered for {silent:.1f} s"
        return None

    async def close(self) -> None:
        """The terminal events of the streams ended by the shutdown are written, then the tasks stop, and this
        replica gives up its lease."""
        self.closing = True
        if self.tasks and self.healthy:
            with suppress(*REDIS_ERRORS, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    if self.dirty:
                        await self.flush()
                    if not self.live:
                        await self.redis.zrem(REPLICAS_KEY, self.replica)
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=COMMAND_TIMEOUT)
        self.tasks = []

    # -- the flusher -----------------------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        pause = 0.1
        loop = asyncio.get_running_loop()
        flushed_at = 0.0
        while not self.closing:
            if self.healthy:
                with suppress(TimeoutError):  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(self.leases.renewal):
                        await self.wake.wait()
                gap = flushed_at + MIN_FLUSH_GAP - loop.time()
                if gap > 0:  # what arrives meanwhile goes in the same pipeline
                    await asyncio.sleep(gap)
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
            self.wake.clear()
            flushed_at = loop.time()
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
        renew = now - self.last_renewal >= self.leases.renewal
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
        renewed: list[MirroredRun] = []
        readers: list[str] = []
        renews_at = len(pipe.command_stack)  # RENEW's place in the pipeline (ZMSCORE's next)
        if renew:
            renewed, readers = self._renew_leases(pipe, now)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._undo(written)
            self._forget_stale(now)
            raise
        self._contact()
        self._check_results(results)
        for step in written:
            step.mirrored.registered = True
            if step.ends:
                self.live.pop(step.mirrored.run.id, None)
            elif step.registers_at is not None and _refused_as_lost(results[step.registers_at]):
                self.lost(step.mirrored)
        if renew:
            self.last_renewal = now
            self._renewed(renewed, readers, results, renews_at)

    def _contact(self) -> None:
        at = time.monotonic()
        if at - self.last_contact > self.leases.seconds:
            self.in_contact_since = at  # after a silence as long as a lease, the reaper waits for one more
        self.last_contact = at

    def _again(self, mirrored: MirroredRun) -> None:
        """Written by the next pipeline."""
        self.dirty.setdefault(mirrored.run.id, mirrored)
        self.wake.set()

    def _write_run(self, pipe: Pipeline, mirrored: MirroredRun, now: float, budget: int) -> tuple[int, _Written]:
        """Queues the run's registration (when new to Redis), its events not yet written (at most `budget`) as one
        chunk, and its end. Returns the budget left and what was queued."""
        run, limits = mirrored.run, self.limits
        key = events_key(run.id)
        registers_at = None
        if not mirrored.registered:  # new to Redis, or to write again whole: from what the run keeps
            # A run that already generates: counted again (after an outage), never refused.
            registers_at = len(pipe.command_stack)
            pipe.eval(REGISTER, 5, LIVE_KEY, meta_key(run.id), address_key(run.address), owner_key(run.owner), key,
                      now, 0, now + self.leases.seconds, run.id, run.owner or "", self.replica,
                      int(RUN_LIFE * 1000), run.address or "", limits.max_live_per_address,
                      limits.max_live_per_key, 0, run.encoding)
            mirrored.written = run.first_seq
        start = max(mirrored.written, run.first_seq)
        end = min(run.next_seq, start + budget)
        if start > mirrored.written:
            # The run dropped events before they were written (a fast generation, a long outage): what Redis
            # keeps must have no hole, so it starts where the run does, and an older resume gets 400.
            pipe.xtrim(key, minid=entry_id(start), approximate=False)
        ends = run.finished and end == run.next_seq
        if end > start:
            self._append_chunk(pipe, run, start, end, ends)
        if ends:
            pipe.eval(END, 6, meta_key(run.id), key, LIVE_KEY, FINISHED_KEY, address_key(run.address),
                      owner_key(run.owner), run.status, run.ended or now,
                      int(limits.ttl * 1000), limits.max_finished, run.id, now - limits.ttl,
                      mirrored.cancelled_by, RUN_KEY, run.reason or "")
        if end < run.next_seq:
            self._again(mirrored)
        step = _Written(mirrored, mirrored.written, ends, registers_at)
        mirrored.written = end
        return budget - (end - start + 1), step

    def _append_chunk(self, pipe: Pipeline, run: Run, start: int, end: int, ends: bool) -> None:
        """Events `start`…`end - 1` as one stream entry: their bytes, and their lengths when more than one; the
        entry with the terminal event says how the run ended. The stream keeps about `max_events` events."""
        events = run.events[start - run.first_seq:end - run.first_seq]
        fields: dict[FieldT, EncodableT] = {b"d": events[0] if len(events) == 1 else b"".join(events)}
        if len(events) > 1:
            fields[b"o"] = array(LENGTHS, map(len, events)).tobytes()
        if ends:
            fields[b"end"] = run.status.encode()
        oldest = end - 1 - self.limits.max_events
        pipe.xadd(events_key(run.id), fields, id=entry_id(end - 1),
                  minid=entry_id(oldest) if oldest > 0 else None, approximate=False)

    def _renew_leases(self, pipe: Pipeline, now: float) -> tuple[list[MirroredRun], list[str]]:
        """This replica's lease and its live runs' (RENEW); and whether the replicas its runs' remote listeners
        follow through still hold theirs. Returns the runs renewed and the replicas asked about."""
        renewed = [mirrored for mirrored in self.live.values() if mirrored.registered and not mirrored.run.finished]
        pipe.eval(RENEW, 2, LIVE_KEY, REPLICAS_KEY, now + self.leases.seconds, self.replica,
                  *(mirrored.run.id for mirrored in renewed))
        readers = sorted({reader.replica for mirrored in self.live.values() for reader in mirrored.remote_listeners})
        if readers:
            pipe.zmscore(REPLICAS_KEY, readers)
        return renewed, readers

    def _renewed(self, renewed: list[MirroredRun], readers: list[str], results: list[object], at: int) -> None:
        """After the renewal: runs a reaper ended while this replica could not renew end here too, and listeners
        through replicas that lost their lease no longer count."""
        gone = results[at]
        if isinstance(gone, list) and gone:
            by_id = {mirrored.run.id: mirrored for mirrored in renewed}
            for run_id in gone:
                mirrored = by_id.get(run_id.decode() if isinstance(run_id, bytes) else str(run_id))
                if mirrored is not None:
                    self.lost(mirrored)
        if not readers:
            return
        scores = results[at + 1]
        if not isinstance(scores, list):
            return
        now = time.time()
        lapsed = {replica for replica, score in zip(readers, scores, strict=False)
                  if score is None or float(score) < now}
        for mirrored in list(self.live.values()):
            for reader in [reader for reader in mirrored.remote_listeners if reader.replica in lapsed]:
                mirrored.remote_listeners.remove(reader)
                mirrored.run.left(reader)

    def lost(self, mirrored: MirroredRun) -> None:
        """A run of this replica that Redis says is over (a reaper ended it while this replica was cut off): it is
        no longer mirrored, and it ends here too, so that its listeners here are told the same."""
        run = mirrored.run
        self.live.pop(run.id, None)
        self.dirty.pop(run.id, None)
        run.mirror = None
        log.warning("run store: run %s was ended as replica_lost while this replica could not renew its lease",
                    run.id)
        if run.generation is not None:
            run.generation.interrupt(ErrorEvent(error=LOST, type="replica_lost"))

    def _undo(self, written: list[_Written]) -> None:
        """A pipeline that failed: its runs are written again next time (an entry that got there is refused)."""
        for step in written:
            step.mirrored.written = step.written_before
            self.dirty.setdefault(step.mirrored.run.id, step.mirrored)

    @staticmethod
    def _check_results(results: list[object]) -> None:
        for result in results:
            # An entry written by an attempt that failed after sending it, or after a reaper ended the run: already
            # there, or refused on purpose.
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

    # -- the reaper ------------------------------------------------------------------------------------------

    async def _reap_forever(self) -> None:
        """Every renewal, ends the runs whose lease lapsed, whichever replica they belonged to."""
        while not self.closing:
            await asyncio.sleep(self.leases.renewal)
            if not self.healthy or time.monotonic() - self.in_contact_since < self.leases.seconds:
                continue
            try:
                await self.reap()
            except REDIS_ERRORS:
                continue  # the flusher says so
            except Exception as exc:  # noqa: BLE001 - the reaper outlives any surprise
                log.error("run store: ending lapsed runs failed (%s: %s)", type(exc).__name__,
                          " ".join(str(exc).split())[:200])

    async def reap(self) -> int:
        """Ends (as replica_lost) the runs whose lease lapsed; returns how many this call ended."""
        now = time.time()
        lapsed = cast(list[bytes], await self.redis.zrangebyscore(LIVE_KEY, "-inf", now, start=0, num=REAP_BATCH))
        ended = 0
        for raw in lapsed:
            run_id = raw.decode()
            # One reaper does the reading and building (the LOSE script would refuse the others anyway).
            if run_id in self.live or not await self.redis.set(REAPING_KEY + run_id, self.replica, nx=True,
                                                                px=int(self.leases.seconds * 1000)):
                continue
            for _ in range(3):  # written meanwhile (a replica that only froze): read again
                outcome = await self._lose(run_id, now)
                if outcome != -1:
                    ended += outcome
                    break
        self.reaped += ended
        if ended:
            log.warning("run store: ended %d run(s) of a replica that stopped renewing its lease (replica_lost)",
                        ended)
        return ended

    async def _lose(self, run_id: str, now: float) -> int:
        meta = cast(dict[bytes, bytes], await self.redis.hgetall(meta_key(run_id)))
        if not meta:  # expired: nothing to end, nothing to count
            await self.redis.zrem(LIVE_KEY, run_id)
            return 0
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await self.redis.xrange(events_key(run_id)))
        kept = b"".join(fields.get(b"d", b"") for _, fields in entries)
        last = entries[-1][0] if entries else b""
        seq = entry_seq(last) + 1 if entries else 0
        ending = LOST_ENDINGS[meta.get(b"encoding", b"").decode()](
            kept, event_id(run_id, seq), ErrorEvent(error=LOST, type="replica_lost"))
        address, owner = meta.get(b"address", b"").decode() or None, meta.get(b"owner", b"").decode() or None
        limits = self.limits
        return cast(int, await self.redis.eval(
            LOSE, 6, meta_key(run_id), events_key(run_id), LIVE_KEY, FINISHED_KEY, address_key(address),
            owner_key(owner), now, int(limits.ttl * 1000), limits.max_finished, run_id, now - limits.ttl, RUN_KEY,
            last, entry_id(seq), ending, LAST_ID))

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
        """`cancel <run> <nonce>`, `join <run> <replica>`, `leave <run> <replica>`."""
        kind, _, rest = data.partition(b" ")
        run_id, _, detail = rest.decode(errors="replace").partition(" ")
        mirrored = self.live.get(run_id)
        if mirrored is None:
            return
        run = mirrored.run
        if kind == b"cancel":
            if run.cancel():
                mirrored.cancelled_by = detail
        elif kind == b"join":
            reader = RemoteReader(run, detail)
            mirrored.remote_listeners.append(reader)
            run.joined(reader)
        elif kind == b"leave":
            leaving = next((reader for reader in mirrored.remote_listeners if reader.replica == detail), None)
            if leaving is not None:
                mirrored.remote_listeners.remove(leaving)
                run.left(leaving)


def _refused_as_lost(result: object) -> bool:
    """A REGISTER that found the run ended in Redis (a reaper ended it): {-3, 0}."""
    return isinstance(result, list) and bool(result) and result[0] == -3
