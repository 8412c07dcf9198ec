"""The two SSE encodings of the tutorial's events, byte for byte: what a client's parser sees."""

from __future__ import annotations

import json

from chains.api.chat.protocol import JsonEvents, RawText, data_lines
from chains.streaming.events import DoneEvent, ErrorEvent, StartEvent, Usage
from tests.support.sse import parse_sse

JSON, RAW = JsonEvents(), RawText()


def test_json_token_events_are_one_data_line_whatever_the_text() -> None:
    for text in ("Hello", "line\nbreak", "\r", "你好 🙂", '"quoted" \\ back', "\u2028"):
        encoded = JSON.tokens(b"r:7", text, 3)
        assert encoded.count(b"\n") == 3  # id line, data line, blank line
        (event,) = parse_sse(encoded.decode())
        assert (event.id, event.event, event.json()) == ("r:7", "message", {"token": text, "token_count": 3})


def test_json_start_done_and_error_events() -> None:
    start = parse_sse(JSON.start(b"r:0", StartEvent(timestamp=1.5, run_id="r")).decode())[0]
    assert (start.id, start.event, start.json()) == ("r:0", "start", {"status": "started", "timestamp": 1.5,
                                                                      "run_id": "r"})
    done = DoneEvent(full_response="a\nb", token_count=2, duration=0.5, tokens_per_second=4.0,
                     usage=Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7), finish_reason="length")
    (event,) = parse_sse(JSON.done(b"r:9", done).decode())
    assert (event.event, event.json()) == ("done", json.loads(done.model_dump_json()))
    (error,) = parse_sse(JSON.error(b"r:10", ErrorEvent(error="Timeout after 1s", type="timeout")).decode())
    assert (error.event, error.json()) == ("error", {"error": "Timeout after 1s", "type": "timeout"})


def test_raw_text_sends_each_line_as_a_data_line_so_newlines_survive() -> None:
    assert data_lines("plain") == b"data: plain\n"
    assert data_lines("a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n"
    (event,) = parse_sse(RAW.tokens(b"r:4", "two\nlines", 1).decode())
    assert (event.id, event.data) == ("r:4", "two\nlines")
    # The tutorial's raw routes have no start event.
    assert RAW.start(b"r:0", StartEvent(timestamp=0, run_id="r")) is None
    assert parse_sse(RAW.done(b"r:5", DoneEvent(full_response="", token_count=0, duration=0, tokens_per_second=0)
                              ).decode())[0].data == "Completed"
    cancelled = DoneEvent(status="cancelled", full_response="", token_count=0, duration=0, tokens_per_second=0)
    assert parse_sse(RAW.done(b"r:5", cancelled).decode())[0].data == "Cancelled"
    (error,) = parse_sse(RAW.error(b"r:6", ErrorEvent(error="bad\nthing", type="internal_error")).decode())
    assert (error.event, error.data) == ("error", "bad\nthing")


def test_reasoning_is_an_event_of_its_own_in_both_encodings() -> None:
    assert JSON.reasoning(b"r:3", "think\n<b>", 2) == (
        b'id: r:3\nevent: reasoning\ndata: {"token":"think\\n<b>","token_count":2}\n\n')
    # Raw text: a client joining the unnamed events' data lines gets the answer alone.
    assert RAW.reasoning(b"r:3", "one\ntwo", 2) == b"id: r:3\nevent: reasoning\ndata: one\ndata: two\n\n"
