"""Where runs are kept: the interface every store implements, and the in-memory store (the default).

A store creates runs (refusing beyond its bounds), finds one for a listener (a run is visible only to the key
that started it), and cancels one wherever it generates. Finished runs stay joinable for `RUN_TTL` seconds; the
oldest are forgotten first when `RUN_MAX_FINISHED` would be exceeded. Nothing in a store grows without bound.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from chains.common.settings import Settings
from chains.streaming.run import InvalidEventId, Listener, OnDisconnect, Run, RunStatus, new_run_id, parse_event_id


class RunNotFound(LookupError):
    """No such run for this caller: unknown, expired, or started with another key (all look the same)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id[:40]!r}: unknown, expired, or not yours")


class RunOver(Exception):
    """The listener already has the run's terminal event: nothing will follow (answered 204, which tells an
    EventSource to stop reconnecting)."""


class RunStoreFull(RuntimeError):
    """The store holds as many live runs as it may."""


class RunStoreUnavailable(RuntimeError):
    """The shared store cannot be reached, or has no connection free."""


Budget = Literal["address", "key"]
BUDGET_SETTING: dict[Budget, str] = {"address": "MAX_LIVE_RUNS_PER_ADDRESS", "key": "MAX_LIVE_RUNS_PER_KEY"}


class TooManyRuns(RuntimeError):
    """The client already has as many runs generating as its budget allows: the runs its address started, or its
    API key, whether or not their connections are still open (with Redis, on every replica)."""

    def __init__(self, budget: Budget, live: int, limit: int) -> None:
        who = "client address" if budget == "address" else "API key"
        super().__init__(f"this {who} has {live} runs generating (connected or not), the most "
                         f"{BUDGET_SETTING[budget]}={limit} allows; wait for one to end, or cancel one "
                         "(POST /chat/runs/{run_id}/cancel)")
        self.budget, self.live, self.limit = budget, live, limit


@dataclass(frozen=True, slots=True)
class RunLimits:
    max_events: int = 10_000
    max_live: int = 4096
    max_finished: int = 1000
    ttl: float = 300.0
    max_live_per_address: int = 0  # 0: no limit
    max_live_per_key: int = 0


class CancelOutcome(BaseModel):
    """What `POST /chat/runs/{run_id}/cancel` answers."""

    run_id: str
    cancelled: bool = Field(description="true if this request stopped the run; false if it had ended already")
    status: RunStatus | Literal["cancelling"] = Field(description="the run's state after the request")
    detail: str


class RunInfo(BaseModel):
    """What `GET /chat/runs/{run_id}` answers."""

    run_id: str
    status: RunStatus
    events: int = Field(description="events so far, the start and the terminal one included")
    listeners: int | None = Field(description="connected now (None when the run generates on another replica)")
    created: float = Field(description="unix seconds")
    ended: float | None = Field(description="unix seconds; the run can be replayed until ended + RUN_TTL")
    reason: str | None = Field(None, description="why a failed run failed: its error type (`replica_lost` when the "
                               "replica generating it was lost, `shutdown`, `timeout`, …); null otherwise")


def run_info(run: Run) -> RunInfo:
    return RunInfo(run_id=run.id, status=run.status, events=run.next_seq, listeners=run.listeners,
                   created=run.created, ended=run.ended, reason=run.reason)


class RunStore(Protocol):
    """What the streaming surfaces need of a store."""

    async def create(self, owner: str | None, on_disconnect: OnDisconnect, address: str | None = None,
                     encoding: str = "") -> Run:
        """A new run, generating in this process, started by `owner` (a key's fingerprint, or None) from
        `address` (None: not counted by address), encoded by the EventFormat named `encoding`. Raises
        RunStoreFull, TooManyRuns (or RunStoreUnavailable)."""
        ...

    def unready(self) -> str | None:
        """Why this process cannot take new runs now (the shared store is unreachable), or None."""
        ...

    async def open(self) -> None:
        """At start-up, before any run (with Redis: this replica's lease is taken, its reaper started)."""
        ...

    async def listen(self, run_id: str, owner: str | None, last_event_id: str | None) -> AsyncIterator[bytes]:
        """The run's events after `last_event_id` (all of them when None), then live ones to the end. Raises
        RunNotFound, InvalidEventId, RunOver (the id is the run's terminal event) or RunStoreUnavailable before
        anything is sent."""
        ...

    async def cancel(self, run_id: str, owner: str | None) -> CancelOutcome:
        """Stop the run wherever it generates. Raises RunNotFound or RunStoreUnavailable."""
        ...

    async def info(self, run_id: str, owner: str | None) -> RunInfo:
        """The run's state. Raises RunNotFound or RunStoreUnavailable."""
        ...

    async def name(self, name: str, run_id: str, owner: str | None) -> None:
        """Names the run for its owner (a chat's id names its latest run): `named` finds it, from every process
        that shares the store, while the store keeps the run. A new run under the same name replaces it."""
        ...

    async def named(self, name: str, owner: str | None) -> str | None:
        """The id of the run last given this name by this owner, or None. Raises RunStoreUnavailable."""
        ...

    def stats(self) -> dict[str, int]:
        """Runs live and finished in this process, and runs started."""
        ...

    async def close(self) -> None: ...


def resume_after(run_id: str, last_event_id: str | None) -> int:
    """The seq a listener of `run_id` resumes after (-1: from the start): a well-formed id of this run."""
    if last_event_id is None:
        return -1
    named_run, seq = parse_event_id(last_event_id)
    if named_run != run_id:
        raise InvalidEventId(f"Last-Event-ID {last_event_id[:80]!r} belongs to another run, not {run_id}")
    return seq


def check_resume(run_id: str, after: int, first_seq: int, last_seq: int, ended: bool) -> None:
    """A listener may resume after any event the run still keeps (`first_seq`…`last_seq`), wherever it is kept;
    after the terminal event there is nothing to follow (RunOver)."""
    if after > last_seq:
        raise InvalidEventId(f"Last-Event-ID {run_id}:{after} is beyond the run's events (the last is "
                             f"{run_id}:{last_seq})")
    if after < first_seq - 1:
        raise InvalidEventId(f"the run no longer keeps the events after {run_id}:{after} (it keeps the last "
                             f"{last_seq - first_seq + 1})")
    if ended and after == last_seq:
        raise RunOver()


def check_budget(budget: Budget, live: int, limit: int) -> None:
    if live >= limit:
        raise TooManyRuns(budget, live, limit)


def already_ended(run_id: str, status: RunStatus) -> CancelOutcome:
    """A cancel that found the run ended: said plainly, with how it ended."""
    return CancelOutcome(run_id=run_id, cancelled=False, status=status,
                         detail=f"the run had already ended ({status}); nothing to cancel")


class MemoryRunStore:
    """Runs in this process's memory: joinable and cancellable through this process only."""

    def __init__(self, limits: RunLimits) -> None:
        self.limits = limits
        self.live: dict[str, Run] = {}
        self.finished: OrderedDict[str, Run] = OrderedDict()  # in the order they ended: the oldest first
        self.started = 0
        # Live runs per client, for the budgets (a Counter reads 0 for a client it has not seen, without adding it).
        self.live_by_address: Counter[str] = Counter()
        self.live_by_key: Counter[str] = Counter()
        # (owner, name) → run id, the latest named last; bounded like the runs it points to.
        self.names: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def create(self, owner: str | None, on_disconnect: OnDisconnect, address: str | None = None,
                     encoding: str = "") -> Run:
        return self.create_now(owner, on_disconnect, address, encoding)

    def unready(self) -> str | None:
        return None

    async def open(self) -> None:
        return None

    def create_now(self, owner: str | None, on_disconnect: OnDisconnect, address: str | None = None,
                   encoding: str = "") -> Run:
        self.forget_expired()
        limits = self.limits
        if len(self.live) >= limits.max_live:
            raise RunStoreFull(f"{len(self.live)} runs are generating, the most this server keeps (RUN_MAX_LIVE)")
        if address is not None and limits.max_live_per_address:
            check_budget("address", self.live_by_address[address], limits.max_live_per_address)
        if owner is not None and limits.max_live_per_key:
            check_budget("key", self.live_by_key[owner], limits.max_live_per_key)
        run = Run(new_run_id(), owner, on_disconnect, limits.max_events, on_end=self._ended, address=address,
                  encoding=encoding)
        self.live[run.id] = run
        self._count(run, 1)
        self.started += 1
        return run

    def _count(self, run: Run, step: int) -> None:
        for counts, client in ((self.live_by_address, run.address), (self.live_by_key, run.owner)):
            if client is not None:
                counts[client] += step
                if counts[client] <= 0:
                    del counts[client]

    def withdraw(self, run: Run) -> None:
        """Undoes `create_now` for a run that never generated (a shared store refused it)."""
        if self.live.pop(run.id, None) is not None:
            self._count(run, -1)
            self.started -= 1

    def holds(self, run_id: str) -> bool:
        """Whether the run generates, or generated, in this process."""
        return run_id in self.live or run_id in self.finished

    def _ended(self, run: Run) -> None:
        if self.live.pop(run.id, None) is not None:
            self._count(run, -1)
        if self.limits.max_finished:
            self.finished[run.id] = run
            while len(self.finished) > self.limits.max_finished:
                self.finished.popitem(last=False)

    def forget_expired(self, now: float | None = None) -> None:
        deadline = (time.time() if now is None else now) - self.limits.ttl
        finished = self.finished
        while finished:
            run = next(iter(finished.values()))
            if run.ended is None or run.ended > deadline:
                break
            finished.popitem(last=False)

    def find(self, run_id: str, owner: str | None) -> Run:
        self.forget_expired()
        run = self.live.get(run_id) or self.finished.get(run_id)
        if run is None or run.owner != owner:
            raise RunNotFound(run_id)
        return run

    async def listen(self, run_id: str, owner: str | None, last_event_id: str | None) -> AsyncIterator[bytes]:
        run = self.find(run_id, owner)
        after = resume_after(run.id, last_event_id)
        check_resume(run.id, after, run.first_seq, run.next_seq - 1, run.finished)
        return Listener(run, after)

    async def cancel(self, run_id: str, owner: str | None) -> CancelOutcome:
        run = self.find(run_id, owner)
        if run.cancel():
            return CancelOutcome(run_id=run.id, cancelled=True, status="cancelled", detail="the run was cancelled")
        return already_ended(run.id, run.status)

    async def info(self, run_id: str, owner: str | None) -> RunInfo:
        return run_info(self.find(run_id, owner))

    async def name(self, name: str, run_id: str, owner: str | None) -> None:
        self.name_now(name, run_id, owner)

    def name_now(self, name: str, run_id: str, owner: str | None) -> None:
        names, key = self.names, (owner or "", name)
        names.pop(key, None)
        names[key] = run_id
        while len(names) > self.limits.max_live + self.limits.max_finished:
            names.popitem(last=False)

    async def named(self, name: str, owner: str | None) -> str | None:
        key = (owner or "", name)
        run_id = self.names.get(key)
        if run_id is not None and not self.holds(run_id):  # the run was forgotten: so is its name
            del self.names[key]
            return None
        return run_id

    def stats(self) -> dict[str, int]:
        return {"live": len(self.live), "finished": len(self.finished), "started": self.started}

    async def close(self) -> None:
        return None


def build_run_store(settings: Settings) -> RunStore:
    """The store the settings name: Redis for `RUN_STORE_URL`, else this process's memory."""
    limits = RunLimits(max_events=settings.run_max_events, max_live=settings.run_max_live,
                       max_finished=settings.run_max_finished, ttl=settings.run_ttl,
                       max_live_per_address=settings.max_live_runs_per_address,
                       max_live_per_key=settings.max_live_runs_per_key)
    if settings.run_store_url:
        # Only a deployment that uses Redis imports it.
        from chains.streaming.redis_mirror import Leases
        from chains.streaming.redis_store import RedisRunStore

        return RedisRunStore(settings.run_store_url, limits, Leases(settings.run_lease_seconds,
                                                                    settings.run_lease_renewal_seconds))
    return MemoryRunStore(limits)
