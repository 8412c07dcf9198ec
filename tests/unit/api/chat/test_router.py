"""chains.api.chat.router in-process: each of the tutorial's routes is its chain, its encoding and its defaults
(the table in the module's docstring), and its query bounds. The whole app through httpx's ASGI transport."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from chains.models.fake import scripted_tokens
from tests.support.sse import Event, parse_sse
from tests.unit.api.app import client

TOKENS = scripted_tokens(20)  # the default app's reply (FAKE_REPLY_TOKENS)


def as_sse_delivers(text: str) -> str:
    """What a client joining a raw route's `data:` lines gets back: every line end is `\\n` (SSE's rule)."""
    return re.sub(r"\r\n|\r", "\n", text)


def message_events(events: list[Event]) -> list[Event]:
    return [e for e in events if e.event == "message"]


async def test_get_chat_is_the_json_events_for_an_event_source() -> None:
    async with client() as http:
        answer = await http.get("/chat", params={"message": "hi", "buffer_size": 5})
    events = parse_sse(answer.text)
    assert [e.event for e in events] == ["start", *["message"] * 4, "done"]
    assert [e.json()["token_count"] for e in message_events(events)] == [5, 10, 15, 20]


async def test_post_chat_takes_the_tutorials_query_form_too() -> None:
    async with client() as http:
        answer = await http.post("/chat", params={"message": "hi", "system_prompt": "be brief"})
    events = parse_sse(answer.text)
    assert events[0].event == "start" and events[-1].json()["full_response"] == "".join(TOKENS)


async def test_post_chat_without_a_message_says_where_to_give_one() -> None:
    async with client() as http:
        answer = await http.post("/chat")
    assert answer.status_code == 422
    assert answer.json()["detail"] == [{"loc": ["query", "message"], "type": "missing",
                                        "msg": "Field required: give `message` in the query or a JSON body"}]


@pytest.mark.parametrize(("path", "params", "per_event"), [
    ("/chat-token", {}, 1),
    ("/chat-buffered", {}, 3),  # its default
    ("/chat-buffered", {"buffer_size": 7}, 7),
    ("/chat-timeout", {}, 1),
])
async def test_the_raw_routes_send_the_text_as_data_lines_then_completed(path: str, params: dict[str, Any],
                                                                          per_event: int) -> None:
    async with client() as http:
        answer = await http.post(path, params={"message": "hi", **params})
    assert answer.status_code == 200 and answer.headers["content-type"] == "text/event-stream"
    events = parse_sse(answer.text)
    assert events[0].event == "message"  # no start event on the raw routes
    assert (events[-1].event, events[-1].data) == ("done", "Completed")
    texts = [e.data for e in message_events(events)]
    assert len(texts) == math.ceil(20 / per_event)
    assert "".join(texts) == as_sse_delivers("".join(TOKENS))  # newlines survive as data lines
    run_id = answer.headers["x-run-id"]
    assert all((e.id or "").startswith(f"{run_id}:") for e in events)


async def test_chat_conversation_takes_a_conversation_and_answers_raw() -> None:
    async with client() as http:
        answer = await http.post("/chat-conversation", json={
            "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"type": "human", "content": "c"}]})
    events = parse_sse(answer.text)
    assert "".join(e.data for e in message_events(events)) == as_sse_delivers("".join(TOKENS))
    assert (events[-1].event, events[-1].data) == ("done", "Completed")


async def test_chat_timeout_ends_with_the_tutorials_error_event() -> None:
    async with client(fake_token_delay_ms=50) as http:  # 20 tokens 50 ms apart: a second in all
        answer = await http.post("/chat-timeout", params={"message": "hi", "timeout": 0.1})
    events = parse_sse(answer.text)
    assert (events[-1].event, events[-1].data) == ("error", "Timeout after 0.1s")
    assert 0 < len(message_events(events)) < 20


@pytest.mark.parametrize(("path", "params", "loc"), [
    ("/chat-token", {}, ["query", "message"]),
    ("/chat-token", {"message": " "}, ["query", "message"]),
    ("/chat-buffered", {"message": "hi", "buffer_size": 0}, ["query", "buffer_size"]),
    ("/chat-buffered", {"message": "hi", "buffer_size": 1001}, ["query", "buffer_size"]),
    ("/chat-timeout", {"message": "hi", "timeout": 0}, ["query", "timeout"]),
    ("/chat-timeout", {"message": "hi", "timeout": 3601}, ["query", "timeout"]),
    ("/chat", {"message": "hi", "on_disconnect": "sometimes"}, ["query", "on_disconnect"]),
])
async def test_the_query_bounds_are_a_422_naming_the_parameter(path: str, params: dict[str, Any],
                                                               loc: list[str]) -> None:
    async with client() as http:
        answer = await http.post(path, params=params)
    assert answer.status_code == 422
    assert [error["loc"] for error in answer.json()["detail"]] == [loc]


async def test_chat_defaults_are_what_a_chat_page_starts_from() -> None:
    async with client(max_input_chars=10, max_messages=3) as http:
        answer = await http.get("/chat/defaults")
    assert answer.json() == {"system_prompt": DEFAULT_SYSTEM_PROMPT, "max_input_chars": 10, "max_messages": 3}
