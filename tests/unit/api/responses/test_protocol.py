"""chains.api.responses.protocol without an app: the request's refusals, the encoding driven event by event as the
core drives it (validated against the `openai` SDK's own event and Response types), the fold back into the
Response, and the resume filter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from chains.api.responses.protocol import (
    STRIDE,
    ResponseEvents,
    ResponseRequest,
    after_sequence,
    frames_of,
    response_of,
)
from chains.streaming.events import CompletionTokensDetails, DoneEvent, ErrorEvent, StartEvent, Usage

RUN = "A" * 22
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def request(**fields: Any) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "conversation", "input": "hi", **fields})


def event_id(seq: int) -> bytes:
    return f"{RUN}:{seq}".encode()


def done(text: str, **fields: Any) -> DoneEvent:
    return DoneEvent(full_response=text, token_count=1, duration=0.1, tokens_per_second=10.0, **fields)


def encode(fmt: ResponseEvents, reasoning: list[str], tokens: list[str], end: DoneEvent | ErrorEvent) -> list[bytes]:
    """The run's events, as the core appends them: the start (seq 0), each piece, the terminal one."""
    events = [fmt.start(event_id(0), StartEvent(timestamp=0.0, run_id=RUN))]
    for piece in reasoning:
        events.append(fmt.reasoning(event_id(len(events)), piece, len(events)))
    for token in tokens:
        events.append(fmt.tokens(event_id(len(events)), token, len(events)))
    terminal = fmt.done if isinstance(end, DoneEvent) else fmt.error
    events.append(terminal(event_id(len(events)), end))  # type: ignore[arg-type]
    return events


def sdk_events(events: list[bytes]) -> list[Any]:
    return [STREAM_EVENT.validate_python(frame) for frame in frames_of(b"".join(events))]


# --- the request -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "function", "name": "f"}]}, "tools"),
    ({"previous_response_id": "resp_x"}, "previous_response_id"),
    ({"store": False}, "store"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"text": {"format": {"type": "json_object"}}}, "text"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input"),
    ({"input": []}, "input"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_what_cannot_be_honoured_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as refused:
        request(**fields)
    assert refused.value.errors()[0]["loc"][0] == param


def test_what_asks_for_nothing_is_accepted_and_an_earlier_output_can_be_sent_back() -> None:
    accepted = request(store=True, tools=[], tool_choice="auto", include=[], truncation="disabled", top_p=1,
                       parallel_tool_calls=True, text={"format": {"type": "text"}}, reasoning={"summary": "auto"},
                       input=[{"type": "reasoning", "id": "rs_1", "summary": []},
                              {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                               "content": [{"type": "output_text", "text": "Hel"}, {"type": "output_text",
                                                                                    "text": "lo"}]},
                              {"role": "user", "content": "again"}])
    assert not isinstance(accepted.input, str)
    assert [(m.role, m.content) for m in accepted.input] == [("assistant", "Hello"), ("user", "again")]


# --- the encoding ------------------------------------------------------------------------------------------------

def test_a_reply_streams_in_openais_order_with_numbers_from_the_runs_seq() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7,
                  completion_tokens_details=CompletionTokensDetails(reasoning_tokens=2))
    events = encode(ResponseEvents(request()), ["th", "ink"], ["Hel", "lo"], done("Hello", usage=usage))
    parsed = sdk_events(events)
    assert [event.type for event in parsed] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    # Frame i of run event seq is seq * STRIDE + i: each run event's frames start at its own multiple.
    for seq, event in enumerate(events):
        numbers = [frame["sequence_number"] for frame in frames_of(event)]
        assert numbers == list(range(seq * STRIDE, seq * STRIDE + len(numbers))) and len(numbers) <= STRIDE
    assert [e.delta for e in parsed if e.type == "response.reasoning_text.delta"] == ["th", "ink"]
    assert [e.delta for e in parsed if e.type == "response.output_text.delta"] == ["Hel", "lo"]
    final = parsed[-1].response
    assert final.id == f"resp_{RUN}" and final.status == "completed" and final.output_text == "Hello"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "think"
    assert final.usage.model_dump(include={"input_tokens", "output_tokens", "total_tokens"}) == {
        "input_tokens": 3, "output_tokens": 4, "total_tokens": 7}
    assert final.usage.output_tokens_details.reasoning_tokens == 2


def test_the_fold_of_the_frames_so_far_is_the_response_as_it_stands() -> None:
    events = encode(ResponseEvents(request(instructions="be brief", metadata={"k": "v"})), ["hm"], ["a", "b"],
                    done("ab"))
    so_far = response_of(b"".join(events[:-1]), f"resp_{RUN}")  # everything but the terminal event
    assert so_far is not None
    midway = Response.model_validate(so_far)
    assert midway.status == "in_progress" and midway.output_text == "ab"
    assert (midway.instructions, midway.metadata) == ("be brief", {"k": "v"})
    assert [item.status for item in midway.output] == ["completed", "in_progress"]  # reasoning done, message not
    assert response_of(b"".join(events), f"resp_{RUN}") == frames_of(events[-1])[-1]["response"]
    assert response_of(b"".join(events), "resp_" + "B" * 22) is None  # not this response's frames
    assert response_of(b"data: {}\n\nevent: start\ndata: {}\n\n", f"resp_{RUN}") is None  # another surface's


@pytest.mark.parametrize(("end", "status", "terminal"), [
    (done("ab", finish_reason="length"), "incomplete", "response.incomplete"),
    (done("ab", status="cancelled", finish_reason="cancelled"), "cancelled", "response.incomplete"),
    (ErrorEvent(error="the upstream model is rate limited (HTTP 429)", type="rate_limited"), "failed",
     "response.failed"),
])
def test_a_reply_that_did_not_complete_says_how_with_what_it_said(end: DoneEvent | ErrorEvent, status: str,
                                                                  terminal: str) -> None:
    last = sdk_events(encode(ResponseEvents(request()), [], ["a", "b"], end))[-1]
    assert last.type == terminal and last.response.status == status
    assert last.response.output_text == "ab" and last.response.output[0].status == "incomplete"
    if status == "incomplete":
        assert last.response.incomplete_details.reason == "max_output_tokens"
    if status == "failed":
        assert (last.response.error.code, last.response.error.message) == (
            "rate_limit_exceeded", "the upstream model is rate limited (HTTP 429)")


def test_an_empty_reply_still_has_its_message_and_reasoning_after_the_answer_is_dropped() -> None:
    fmt = ResponseEvents(request())
    events = encode(fmt, [], [], done(""))
    final = sdk_events(events)[-1].response
    assert final.status == "completed" and [item.type for item in final.output] == ["message"]
    assert final.output_text == ""
    assert fmt.reasoning(event_id(9), "late", 1) == b""  # no place for it once the answer has begun


# --- resuming ----------------------------------------------------------------------------------------------------

async def _iterate(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_after_sequence_drops_the_frames_up_to_n_and_passes_the_rest_as_they_are() -> None:
    events = encode(ResponseEvents(request()), [], ["a", "b", "c"], done("abc"))
    everything = frames_of(b"".join(events))
    for n in (0, 1, 10, 12, 13, 29, 40):  # within composite events (the first token's), and at their ends
        event = n // STRIDE
        resumed = b"".join([chunk async for chunk in after_sequence(_iterate(events[event:]), n)])
        assert frames_of(resumed) == [f for f in everything if f["sequence_number"] > n]
        assert resumed.endswith(b"".join(events[event + 1:]))  # later events untouched
