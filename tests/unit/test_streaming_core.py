"""The streaming core in-process, driven by the scripted model: grouping, flush, timeouts, failures, interrupts
and the stop of the generation when the consumer goes away. No server, no sockets."""

from __future__ import annotations

import asyncio
import time

from chains.chat import single_turn_chain
from chains.models.fake import ScriptedChatModel, scripted_tokens
from chains.api.chat.protocol import JsonEvents
from chains.api.events import ErrorEvent
from chains.api.streaming import StreamOptions, _live, end_all_streams, token_events
from tests.support.sse import Event, parse_sse


async def stream(options: StreamOptions, **model: object) -> list[Event]:
    chain = single_turn_chain(ScriptedChatModel(**model))  # type: ignore[arg-type]
    encoded = [chunk async for chunk in token_events(chain, "hi", options, JsonEvents())]
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
    assert events[-1].json() == {"error": "No token for 0.05s", "type": "timeout"}


async def test_whole_timeout_ends_the_stream_even_while_tokens_flow() -> None:
    events = await stream(StreamOptions(timeout=0.2), reply_tokens=1000, token_delay_ms=10)
    assert events[-1].json() == {"error": "Timeout after 0.2s", "type": "timeout"}
    assert 0 < len(tokens_of(events)) < 1000


async def test_a_model_failure_becomes_the_error_event_after_the_tokens_sent() -> None:
    events = await stream(StreamOptions(), reply_tokens=10, fail_after=3)
    assert tokens_of(events) == scripted_tokens(3)
    assert events[-1].event == "error" and events[-1].json()["type"] == "internal_error"
    assert "Traceback" not in events[-1].json()["error"]


async def test_end_all_streams_interrupts_every_generation_with_a_terminal_event() -> None:
    async def collect() -> list[Event]:
        return await stream(StreamOptions(), reply_tokens=1000, token_delay_ms=5)

    streams = [asyncio.create_task(collect()) for _ in range(3)]
    while sum(not generation.finished for generation in _live) < 3:
        await asyncio.sleep(0.01)
    end_all_streams(ErrorEvent(error="the server is shutting down; try again", type="shutdown"))
    for events in await asyncio.gather(*streams):
        assert events[-1].json() == {"error": "the server is shutting down; try again", "type": "shutdown"}


async def test_a_consumer_that_stops_reading_stops_the_generation() -> None:
    produced: list[int] = []

    class CountingModel(ScriptedChatModel):
        async def _astream(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            async for chunk in super()._astream(*args, **kwargs):
                produced.append(1)
                yield chunk

    chain = single_turn_chain(CountingModel(reply_tokens=10_000, token_delay_ms=1))
    events = token_events(chain, "hi", StreamOptions(), JsonEvents())
    for _ in range(5):
        await anext(events)
    await events.aclose()  # what the response does when its client goes away
    seen = len(produced)
    await asyncio.sleep(0.1)
    assert len(produced) == seen, "the model went on producing for a consumer that left"

