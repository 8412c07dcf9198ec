"""chains.streaming.generation, the streaming core, in-process, driven by the scripted model: grouping, flush,
timeouts, failures, interrupts, the stop of the generation when the consumer goes away, what the observer gets, and
the outcome a surface reads (`first_token()`, `failure`, `record`). No server, no sockets."""

from __future__ import annotations

import asyncio
import time

from chains.api.chat.protocol import JsonEvents
from chains.models.fake import ScriptedChatModel, scripted_reasoning, scripted_tokens
from chains.runnables.chat import single_turn_chain
from chains.streaming.events import ErrorEvent
from chains.streaming.generation import Generation, LiveStreams, StreamOptions, generate
from chains.streaming.record import StreamLabels, StreamRecord
from chains.streaming.run import Listener, Run, new_run_id
from tests.support.core import token_events
from tests.support.sse import Event, parse_sse


async def stream(options: StreamOptions, live: LiveStreams | None = None, **model: object) -> list[Event]:
    chain = single_turn_chain(ScriptedChatModel(**model))  # type: ignore[arg-type]
    encoded = [chunk async for chunk in token_events(chain, "hi", options, JsonEvents(), live)]
    return parse_sse(b"".join(encoded).decode())


def tokens_of(events: list[Event]) -> list[str]:
    return [event.json()["token"] for event in events if event.event == "message"]


async def test_one_event_per_token_then_done_with_the_whole_reply() -> None:
    events = await stream(StreamOptions(), reply_tokens=13)
    assert [e.event for e in events] == ["start", *["message"] * 13, "done"]
    assert tokens_of(events) == scripted_tokens(13)
    done = events[-1].json()
    assert done["full_response"] == "".join(scripted_tokens(13)) and done["token_count"] == 13
    assert done["usage"]["completion_tokens"] == 13 and done["finish_reason"] == "stop"
    run_ids = {(e.id or "").split(":")[0] for e in events}
    assert len(run_ids) == 1 and len(run_ids.pop()) == 22  # one run, 128 random bits
    assert [int((e.id or "").split(":")[1]) for e in events] == list(range(15))  # <run>:<seq>, seq from 0
    assert events[0].json()["run_id"] == (events[0].id or "").split(":")[0]


async def test_buffering_groups_tokens_and_flushes_the_rest_at_the_end() -> None:
    events = await stream(StreamOptions(buffer_size=4, flush_ms=None), reply_tokens=10)
    groups = tokens_of(events)
    tokens = scripted_tokens(10)
    assert groups == ["".join(tokens[0:4]), "".join(tokens[4:8]), "".join(tokens[8:10])]
    assert [e.json()["token_count"] for e in events if e.event == "message"] == [4, 8, 10]


async def test_a_slow_stream_is_flushed_after_flush_ms_rather_than_held_for_a_full_group() -> None:
    started = time.monotonic()
    events = await stream(StreamOptions(buffer_size=100, flush_ms=30), reply_tokens=6, token_delay_ms=50)
    assert len(tokens_of(events)) >= 3  # without the flush it would be one event at the end
    assert "".join(tokens_of(events)) == "".join(scripted_tokens(6))
    assert time.monotonic() - started < 5


async def test_idle_timeout_ends_with_a_timeout_event_and_stops_the_model() -> None:
    events = await stream(StreamOptions(idle_timeout=0.05), reply_tokens=5, token_delay_ms=300)
    assert events[-1].event == "error"
    sent = tokens_of(events)  # a stopped stream says what it had sent until then
    assert events[-1].json() == {"error": "No token for 0.05s", "type": "timeout", "full_response": "".join(sent),
                                 "token_count": len(sent)}


async def test_whole_timeout_ends_the_stream_even_while_tokens_flow() -> None:
    events = await stream(StreamOptions(timeout=0.2), reply_tokens=1000, token_delay_ms=10)
    sent = tokens_of(events)
    assert events[-1].json() == {"error": "Timeout after 0.2s", "type": "timeout", "full_response": "".join(sent),
                                 "token_count": len(sent)}
    assert 0 < len(sent) < 1000


async def test_a_model_failure_becomes_the_error_event_after_the_tokens_sent() -> None:
    events = await stream(StreamOptions(), reply_tokens=10, fail_after=3)
    assert tokens_of(events) == scripted_tokens(3)
    assert events[-1].event == "error" and events[-1].json()["type"] == "internal_error"
    assert "Traceback" not in events[-1].json()["error"]


async def test_a_shutdown_interrupts_every_live_generation_with_a_terminal_event() -> None:
    live = LiveStreams()

    async def collect() -> list[Event]:
        return await stream(StreamOptions(), live, reply_tokens=1000, token_delay_ms=5)

    streams = [asyncio.create_task(collect()) for _ in range(3)]
    while len(live) < 3:
        await asyncio.sleep(0.01)
    live.shut_down()
    live.shut_down()  # every connection is told; the streams end once
    for events in await asyncio.gather(*streams):
        sent = tokens_of(events)
        assert events[-1].json() == {"error": "the server is shutting down; try again", "type": "shutdown",
                                     "full_response": "".join(sent), "token_count": len(sent)}


async def test_a_consumer_that_stops_reading_stops_the_generation() -> None:
    produced: list[int] = []

    class CountingModel(ScriptedChatModel):
        async def astream_text(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            async for item in super().astream_text(*args, **kwargs):
                produced.append(1)
                yield item

    chain = single_turn_chain(CountingModel(reply_tokens=10_000, token_delay_ms=1))
    events = token_events(chain, "hi", StreamOptions(), JsonEvents())
    for _ in range(5):
        await anext(events)
    await events.aclose()  # what the response does when its client goes away
    seen = len(produced)
    assert seen >= 4  # the start event, then at least four tokens
    await asyncio.sleep(0.1)
    assert len(produced) == seen, "the model went on producing for a consumer that left"



class RecordingObserver:
    """What chains.observability receives: one start, one first token, one record per generation."""

    def __init__(self) -> None:
        self.started: list[StreamLabels] = []
        self.first_tokens = 0
        self.records: list[StreamRecord] = []

    def stream_started(self, labels: StreamLabels) -> object:
        self.started.append(labels)
        return len(self.started)

    def first_token(self, handle: object) -> None:
        self.first_tokens += 1

    def stream_ended(self, handle: object, record: StreamRecord) -> None:
        self.records.append(record)


async def test_the_observer_gets_one_record_per_generation_with_its_ending_and_timings() -> None:
    observer = RecordingObserver()
    labels = StreamLabels("/chat", "single-turn")

    async def run(on_disconnect: str, options: StreamOptions, leave_after: int | None = None,
                  cancel_after: int | None = None, **model: object) -> None:
        run_ = Run(new_run_id(), None, on_disconnect, 1000)  # type: ignore[arg-type]
        listener = Listener(run_)
        generate(run_, single_turn_chain(ScriptedChatModel(**model)), "hi", options, JsonEvents(),  # type: ignore[arg-type]
                 labels, observer)
        events = 0
        async for chunk in listener:
            events += chunk.count(b"\n\n")
            if leave_after is not None and events > leave_after:
                await listener.aclose()
            if cancel_after is not None and events > cancel_after:
                run_.cancel()
        while not run_.finished:
            await asyncio.sleep(0.01)

    await run("cancel", StreamOptions(), reply_tokens=5, token_delay_ms=5)
    await run("cancel", StreamOptions(), cancel_after=3, reply_tokens=1000, token_delay_ms=2)
    await run("cancel", StreamOptions(), leave_after=3, reply_tokens=1000, token_delay_ms=2)
    await run("cancel", StreamOptions(timeout=0.1), reply_tokens=1000, token_delay_ms=5)
    await run("cancel", StreamOptions(), reply_tokens=10, fail_after=2)
    assert [r.ending for r in observer.records] == ["done", "cancelled", "disconnect", "timeout", "internal_error"]
    assert observer.started == [labels] * 5 and observer.first_tokens == 5
    done = observer.records[0]
    assert done.token_events == 5 and done.completion_tokens == 5 and done.prompt_tokens == 1
    assert done.finish_reason == "stop" and done.labels == labels and len(done.run_id) == 22
    assert 0 < done.time_to_first_token < done.seconds  # type: ignore[operator]
    assert done.time_per_output_token is not None and done.longest_gap is not None
    assert done.time_per_output_token <= done.longest_gap
    cancelled = observer.records[1]
    assert cancelled.finish_reason is None and cancelled.completion_tokens >= cancelled.token_events > 0  # type: ignore[operator]


# --- the outcome: first_token, failure, record ---------------------------------------------------------------

class Silent(ScriptedChatModel):
    """A model that says nothing for `seconds`, then streams its script."""

    seconds: float = 30.0

    async def astream_text(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.seconds)
        async for item in super().astream_text(*args, **kwargs):
            yield item


def generation_of(model: ScriptedChatModel, options: StreamOptions | None = None,
                  live: LiveStreams | None = None) -> Generation:
    run = Run(new_run_id(), None, "continue", 100_000)
    return generate(run, single_turn_chain(model), "hi", options or StreamOptions(), JsonEvents(), live=live)


async def until_finished(generation: Generation) -> None:
    for _ in range(1000):
        if generation.finished:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the generation did not finish")


async def test_first_token_returns_none_once_a_token_is_sent_while_the_rest_still_comes() -> None:
    generation = generation_of(ScriptedChatModel(reply_tokens=5, token_delay_ms=50))
    assert await generation.first_token() is None
    assert not generation.finished and generation.run.next_seq >= 2  # the start and the first token
    assert generation.failure is None and generation.record is None  # both set when the run finishes
    assert await generation.first_token() is None  # asked again: the same answer
    await until_finished(generation)
    assert generation.failure is None and generation.record is not None and generation.record.ending == "done"
    assert generation.run.status == "completed"


async def test_first_token_of_a_generation_that_fails_before_any_is_its_failure() -> None:
    generation = generation_of(ScriptedChatModel(reply_tokens=5, fail_after=0))
    failure = await generation.first_token()
    assert failure is not None and failure is generation.failure
    assert failure.type == "internal_error" and failure.error.startswith("internal error; the server logged it as ")
    assert generation.run.status == "failed" and generation.record is not None
    assert generation.record.ending == "internal_error" and generation.record.token_events == 0
    assert generation.record.time_to_first_token is None


async def test_first_token_of_a_timeout_before_any_is_the_timeout() -> None:
    generation = generation_of(Silent(), StreamOptions(timeout=0.05))
    failure = await asyncio.wait_for(generation.first_token(), 2)
    assert failure is not None and (failure.type, failure.error) == ("timeout", "Timeout after 0.05s")
    assert generation.failure == failure and generation.run.status == "failed"
    assert generation.record is not None and generation.record.ending == "timeout"


async def test_first_token_of_an_empty_reply_or_of_a_cancel_before_any_is_none() -> None:
    empty = generation_of(ScriptedChatModel(reply_tokens=0))
    assert await empty.first_token() is None
    assert empty.finished and empty.failure is None and empty.run.status == "completed"
    cancelled = generation_of(Silent())
    await asyncio.sleep(0.01)
    assert cancelled.cancel()
    assert await asyncio.wait_for(cancelled.first_token(), 2) is None
    assert cancelled.failure is None and cancelled.run.status == "cancelled"
    assert cancelled.record is not None and cancelled.record.ending == "cancelled"


async def test_a_waiter_that_gives_up_does_not_cancel_the_outcome_for_the_others() -> None:
    generation = generation_of(Silent(seconds=0.05, reply_tokens=2))
    impatient = asyncio.ensure_future(generation.first_token())
    await asyncio.sleep(0.01)
    impatient.cancel()  # a client that left while it waited
    assert await asyncio.wait_for(generation.first_token(), 2) is None
    await until_finished(generation)
    assert generation.run.status == "completed"


async def test_a_generation_stopped_before_it_began_still_ends_its_run() -> None:
    generation = generation_of(ScriptedChatModel(reply_tokens=5))
    assert generation.cancel()  # before its task took a step
    await until_finished(generation)
    events = parse_sse(b"".join(generation.run.events).decode())
    assert [e.event for e in events] == ["start", "done"] and events[-1].json()["status"] == "cancelled"
    assert generation.record is not None and generation.record.ending == "cancelled"


async def test_a_generation_is_stopped_once_by_whichever_comes_first() -> None:
    cancelled = generation_of(Silent())
    assert cancelled.cancel("disconnect") and not cancelled.cancel()  # a second cancel changes nothing
    cancelled.interrupt(ErrorEvent(error="late", type="shutdown"))  # nor does an interrupt after it
    await until_finished(cancelled)
    assert cancelled.run.status == "cancelled" and cancelled.record is not None
    assert cancelled.record.ending == "disconnect"
    interrupted = generation_of(Silent())
    interrupted.interrupt(ErrorEvent(error="the upstream went away", type="upstream_error"))
    assert not interrupted.cancel()
    await until_finished(interrupted)
    assert interrupted.failure == ErrorEvent(error="the upstream went away", type="upstream_error",
                                             full_response="", token_count=0)
    assert interrupted.record is not None and interrupted.record.ending == "upstream_error"
    done = generation_of(ScriptedChatModel(reply_tokens=1))
    await until_finished(done)
    assert not done.cancel()
    done.interrupt(ErrorEvent(error="too late", type="shutdown"))
    assert done.run.status == "completed" and done.failure is None


async def test_live_streams_count_what_is_in_flight_and_end_all_with_the_reason_given() -> None:
    live = LiveStreams()
    quick = generation_of(ScriptedChatModel(reply_tokens=1), live=live)
    slow = [generation_of(Silent(), live=live) for _ in range(2)]
    await until_finished(quick)
    assert len(live) == 2 and not live.shutting_down
    live.end_all(ErrorEvent(error="maintenance", type="overloaded"))
    for generation in slow:
        await until_finished(generation)
        assert generation.failure == ErrorEvent(error="maintenance", type="overloaded", full_response="",
                                                token_count=0)
    assert len(live) == 0 and not live.shutting_down  # end_all is not the shutdown


# --- a model that reasons aloud before its answer -----------------------------------------------------------------

async def test_reasoning_pieces_are_their_own_events_before_the_answer_in_one_sequence_of_ids() -> None:
    events = await stream(StreamOptions(), reasoning_tokens=5, reply_tokens=4)
    assert [e.event for e in events] == ["start", *["reasoning"] * 5, *["message"] * 4, "done"]
    reasoning = [e.json() for e in events if e.event == "reasoning"]
    assert [r["token"] for r in reasoning] == scripted_reasoning(5)
    assert [r["token_count"] for r in reasoning] == [1, 2, 3, 4, 5]  # reasoning pieces counted apart
    assert [e.json()["token_count"] for e in events if e.event == "message"] == [1, 2, 3, 4]
    assert [int((e.id or "").split(":")[1]) for e in events] == list(range(11))  # one sequence: a resume replays all
    done = events[-1].json()
    assert done["full_reasoning"] == "".join(scripted_reasoning(5))
    assert done["full_response"] == "".join(scripted_tokens(4)) and done["token_count"] == 4
    assert done["usage"]["completion_tokens"] == 9
    assert done["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}


async def test_a_reply_without_reasoning_has_an_empty_full_reasoning_and_no_reasoning_details() -> None:
    done = (await stream(StreamOptions(), reply_tokens=3))[-1].json()
    assert done["full_reasoning"] == "" and done["usage"]["completion_tokens_details"] is None


async def test_buffering_never_mixes_reasoning_into_the_answers_groups() -> None:
    events = await stream(StreamOptions(buffer_size=3, flush_ms=None), reasoning_tokens=4, reply_tokens=5)
    assert [e.event for e in events] == ["start", *["reasoning"] * 4, "message", "message", "done"]
    assert tokens_of(events) == ["".join(scripted_tokens(5)[:3]), "".join(scripted_tokens(5)[3:])]


async def test_reasoning_pieces_count_as_activity_for_the_idle_timeout_but_not_past_the_whole_timeout() -> None:
    # 14 pieces of reasoning 100 ms apart: 1.3 s of thinking, never more than a tenth of the 1 s idle limit silent
    # (a margin that a loaded machine's scheduling does not eat).
    thinking = await stream(StreamOptions(idle_timeout=1.0), reasoning_tokens=14, reply_tokens=2, token_delay_ms=100)
    assert thinking[-1].event == "done" and thinking[-1].json()["full_reasoning"] == "".join(scripted_reasoning(14))
    bounded = await stream(StreamOptions(timeout=0.3), reasoning_tokens=14, reply_tokens=2, token_delay_ms=100)
    assert bounded[-1].event == "error" and bounded[-1].json()["type"] == "timeout"
    assert not tokens_of(bounded)  # it timed out while still thinking


async def test_the_first_reasoning_piece_is_the_first_output_and_the_record_times_both() -> None:
    records: list[StreamRecord] = []

    class Recorder:
        def stream_started(self, labels: StreamLabels) -> object:
            return None

        def first_token(self, handle: object) -> None:
            pass

        def stream_ended(self, handle: object, record: StreamRecord) -> None:
            records.append(record)

    chain = single_turn_chain(ScriptedChatModel(reasoning_tokens=3, reply_tokens=2, token_delay_ms=20))
    run = Run(new_run_id(), None, "cancel", max_events=100)
    listener = Listener(run)
    generation = generate(run, chain, "hi", StreamOptions(), JsonEvents(), observer=Recorder())
    assert await generation.first_token() is None
    assert generation.first_output_at is not None and generation.first_token_at is None  # still thinking
    _ = [chunk async for chunk in listener]
    [record] = records
    assert record.reasoning_events == 3 and record.token_events == 2 and record.reasoning_tokens == 3
    assert record.time_to_first_reasoning is not None and record.time_to_first_answer is not None
    assert record.time_to_first_token == record.time_to_first_reasoning < record.time_to_first_answer
