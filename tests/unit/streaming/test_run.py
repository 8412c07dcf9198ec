"""chains.streaming.run in-process: a run's events kept as encoded bytes, listeners that follow them each from its
own position, the disconnect policies when the last one leaves, the bound on what a run keeps, and event ids.
Driven by a stand-in generation or by the scripted model; no server, no sockets."""

from __future__ import annotations

import asyncio

import pytest

from chains.models.fake import scripted_tokens
from chains.streaming.run import (
    EVENT_ID_PATTERN,
    RUN_ID_PATTERN,
    CancelReason,
    InvalidEventId,
    Listener,
    OnDisconnect,
    Run,
    new_run_id,
    parse_event_id,
)
from chains.streaming.store import MemoryRunStore, RunLimits
from tests.unit.streaming.runs import read, start, tokens, wait_until


class Generation:
    """A stand-in for the generation a run stops: records each cancel and its reason."""

    def __init__(self, stops: bool = True) -> None:
        self.reasons: list[CancelReason] = []
        self.stops = stops

    def cancel(self, reason: CancelReason = "cancelled") -> bool:
        self.reasons.append(reason)
        return self.stops


def generating(on_disconnect: OnDisconnect = "cancel", max_events: int = 1000) -> tuple[Run, Generation]:
    run = Run(new_run_id(), None, on_disconnect, max_events)
    run.generation = generation = Generation()
    return run, generation


async def pending(listener: Listener) -> bytes | None:
    """The listener's next piece if it has one now, else None (it would wait)."""
    step = asyncio.ensure_future(anext(listener))
    await asyncio.sleep(0)
    if step.done():
        return step.result()
    step.cancel()
    return None


# --- ids ------------------------------------------------------------------------------------------------------

def test_a_run_id_is_22_url_safe_characters_and_never_the_same() -> None:
    ids = {new_run_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(RUN_ID_PATTERN.fullmatch(run_id) for run_id in ids)


def test_an_event_id_is_the_run_and_the_position_in_it() -> None:
    run = Run("A" * 22, None, "cancel", 100)
    assert run.event_id(0) == b"AAAAAAAAAAAAAAAAAAAAAA:0" and run.event_id(12) == b"A" * 22 + b":12"
    assert parse_event_id(run.event_id(12).decode()) == ("A" * 22, 12)
    assert parse_event_id(f" {'A' * 22}:3\n") == ("A" * 22, 3)  # as a header may carry it
    assert EVENT_ID_PATTERN.fullmatch("A" * 22 + ":123456789") is not None


@pytest.mark.parametrize("bad", ["", "7", "A" * 22, "A" * 22 + ":", "A" * 21 + ":1", "A" * 23 + ":1",
                                 "A" * 22 + ":-1", "A" * 22 + ":1x", "A" * 22 + ":1234567890", "A" * 21 + "!:1"])
def test_anything_else_is_not_an_event_id(bad: str) -> None:
    with pytest.raises(InvalidEventId, match="is not an event id of this server"):
        parse_event_id(bad)


def test_a_refused_id_is_shown_cut_short() -> None:
    with pytest.raises(InvalidEventId) as refused:
        parse_event_id("x" * 10_000)
    assert len(str(refused.value)) < 200


# --- listeners --------------------------------------------------------------------------------------------------

async def test_a_listener_gets_everything_new_in_one_piece_then_waits_then_ends_with_the_run() -> None:
    run, _ = generating()
    for n in range(3):
        run.append(b"event %d\n\n" % n)
    listener = Listener(run)
    assert await anext(listener) == b"event 0\n\nevent 1\n\nevent 2\n\n"  # one write
    assert await pending(listener) is None  # nothing new: it waits
    waiting = asyncio.ensure_future(anext(listener))
    await asyncio.sleep(0)
    run.append(b"event 3\n\n")
    assert await waiting == b"event 3\n\n"
    run.finish(b"done\n\n", "completed")
    assert await anext(listener) == b"done\n\n"
    with pytest.raises(StopAsyncIteration):
        await anext(listener)
    assert run.listeners == 0


async def test_a_listener_starts_after_the_event_it_is_given() -> None:
    run, _ = generating()
    for n in range(5):
        run.append(b"%d;" % n)
    assert await anext(Listener(run, after=2)) == b"3;4;"
    assert await anext(Listener(run, after=-1)) == b"0;1;2;3;4;"
    assert run.listeners == 2


async def test_every_listener_reads_the_same_bytes_from_its_own_position() -> None:
    run, _ = generating()
    early = Listener(run)
    run.append(b"a;")
    assert await anext(early) == b"a;"
    late = Listener(run)
    run.append(b"b;")
    assert (await anext(early), await anext(late)) == (b"b;", b"a;b;")


async def test_the_end_comes_once_and_the_store_hears_of_it_once() -> None:
    ended: list[Run] = []
    run = Run(new_run_id(), None, "cancel", 100, on_end=ended.append)
    run.generation = Generation()
    run.finish(b"done;", "completed")
    run.finish(b"again;", "failed")
    assert (run.status, run.events, ended) == ("completed", [b"done;"], [run])
    assert run.ended is not None and run.generation is None and not run.cancel()


# --- the disconnect policies ------------------------------------------------------------------------------------

async def test_cancel_stops_the_generation_when_the_last_listener_leaves() -> None:
    run, generation = generating("cancel")
    first, second = Listener(run), Listener(run)
    await first.aclose()
    assert generation.reasons == []  # one still listens
    await second.aclose()
    await second.aclose()  # closing twice leaves once
    assert generation.reasons == ["disconnect"]


async def test_continue_lets_the_generation_run_for_nobody() -> None:
    run, generation = generating("continue")
    await Listener(run).aclose()
    await asyncio.sleep(0.01)
    assert generation.reasons == []


async def test_a_grace_waits_that_long_for_a_listener_and_a_rejoin_keeps_the_run() -> None:
    run, generation = generating(0.05)
    await Listener(run).aclose()
    rejoined = Listener(run)  # within the grace
    await asyncio.sleep(0.1)
    assert generation.reasons == []
    await rejoined.aclose()
    await asyncio.sleep(0.02)
    assert generation.reasons == []  # the grace starts again
    await wait_until(lambda: generation.reasons == ["disconnect"], seconds=1)


async def test_a_finished_run_stops_nothing_when_its_listeners_leave() -> None:
    run, generation = generating("cancel")
    listener = Listener(run)
    run.finish(b"done;", "completed")
    await listener.aclose()
    assert generation.reasons == []


def test_a_cancel_reaches_the_generation_of_a_run_generating_here_only() -> None:
    run, generation = generating()
    assert run.cancel() and generation.reasons == ["cancelled"]
    elsewhere = Run(new_run_id(), None, "cancel", 100)  # generating in another process: no generation here
    assert not elsewhere.cancel()


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


# --- what a run keeps -------------------------------------------------------------------------------------------

async def test_a_slow_listener_holds_the_events_it_has_not_read_and_lets_them_go_when_it_leaves() -> None:
    run, _ = generating("continue", max_events=16)
    slow, quick = Listener(run), Listener(run)
    for n in range(40):
        run.append(b"%d;" % n)
        await anext(quick)
    assert run.first_seq == 0 and len(run.events) == 40  # nothing the slow one has not read is dropped
    await slow.aclose()
    assert len(run.events) <= 16 and run.next_seq == 40  # the newest kept, the positions unchanged
    assert run.events[-1] == b"39;" and run.first_seq == 40 - len(run.events)
    late = Listener(run, after=run.first_seq - 1)
    assert await anext(late) == b"".join(b"%d;" % n for n in range(run.first_seq, 40))
