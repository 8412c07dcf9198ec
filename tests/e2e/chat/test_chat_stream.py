"""`/chat` and the tutorial's variants over HTTP on a live server: events, fields, text fidelity, buffering,
timeouts, heartbeats, errors and parameter validation."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from chains.models.fake import scripted_tokens
from tests.support.sse import Event, parse_sse, run_positions

TOKENS = scripted_tokens(20)  # the fake server's reply
REPLY = "".join(TOKENS)


def post(server, path: str, **kwargs: Any) -> httpx.Response:
    response = httpx.post(server.url + path, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return response


def check_json_stream(events: list[Event], expected_tokens: list[str]) -> dict[str, Any]:
    """The tutorial's /chat schema, field by field; returns the done payload."""
    run_id, positions = run_positions([e.id for e in events])
    assert positions == list(range(len(events))), "every event has the next id"
    start, *tokens, done = events
    assert start.json()["run_id"] == run_id
    assert start.event == "start"
    assert start.json()["status"] == "started" and abs(start.json()["timestamp"] - time.time()) < 60
    assert all(e.event == "message" for e in tokens)
    payloads = [e.json() for e in tokens]
    assert [p["token"] for p in payloads] == expected_tokens
    assert [p["token_count"] for p in payloads] == list(range(1, len(expected_tokens) + 1))
    assert done.event == "done"
    summary = done.json()
    assert summary["status"] == "completed"
    assert summary["full_response"] == "".join(p["token"] for p in payloads) == "".join(expected_tokens)
    assert summary["token_count"] == len(expected_tokens)
    assert summary["duration"] > 0
    assert summary["tokens_per_second"] == pytest.approx(len(expected_tokens) / summary["duration"])
    assert summary["finish_reason"] == "stop"
    usage = summary["usage"]
    assert usage["completion_tokens"] == len(expected_tokens)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return summary


def test_post_chat_with_query_as_the_tutorial(fake_server) -> None:
    response = post(fake_server, "/chat", params={"message": "讲个笑话", "system_prompt": "你是一个有用的助手"})
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    check_json_stream(parse_sse(response.text), TOKENS)


@pytest.mark.parametrize("body", [
    {"message": "讲个笑话"},
    {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好!"},
                  {"role": "user", "content": "讲个笑话"}], "system_prompt": "Be brief."},
])
def test_post_chat_with_json_body(fake_server, body: dict[str, Any]) -> None:
    check_json_stream(parse_sse(post(fake_server, "/chat", json=body).text), TOKENS)


def test_get_chat_for_event_source(fake_server) -> None:
    response = httpx.get(fake_server.url + "/chat", params={"message": "讲个笑话"}, timeout=30)
    assert response.status_code == 200
    check_json_stream(parse_sse(response.text), TOKENS)


def test_json_tokens_keep_newlines_carriage_returns_chinese_and_emoji(fake_server) -> None:
    summary = check_json_stream(parse_sse(post(fake_server, "/chat", json={"message": "x"}).text), TOKENS)
    for piece in ("\n", "\r\n", "你好", "🙂"):
        assert piece in summary["full_response"]


def raw_texts(events: list[Event]) -> list[str]:
    return [e.data for e in events if e.event == "message"]


# In raw `data:` text a CR or CRLF is a line end (SSE itself has no way to carry a bare CR): it arrives as LF.
RAW_REPLY = re.sub(r"\r\n?", "\n", REPLY)


@pytest.mark.parametrize(("path", "kwargs"), [
    ("/chat-token", {"params": {"message": "讲个笑话"}}),
    ("/chat-buffered", {"params": {"message": "讲个笑话", "buffer_size": 3}}),
    ("/chat-timeout", {"params": {"message": "讲个笑话", "timeout": 30}}),
    ("/chat-conversation", {"json": {"messages": [{"role": "user", "content": "讲个笑话"}]}}),
])
def test_raw_variants_round_trip_text_and_end_with_done(fake_server, path: str, kwargs: dict[str, Any]) -> None:
    response = post(fake_server, path, **kwargs)
    assert response.headers["content-type"] == "text/event-stream"
    events = parse_sse(response.text)
    assert "".join(raw_texts(events)) == RAW_REPLY
    assert (events[-1].event, events[-1].data) == ("done", "Completed")
    assert all(e.id is not None for e in events)
    # A multi-line token is sent as several data: lines, never as a raw newline inside one line.
    assert "data: \ndata: " in response.text


def test_buffered_groups_exactly_buffer_size_tokens(fake_server) -> None:
    events = parse_sse(post(fake_server, "/chat-buffered", params={"message": "hi", "buffer_size": 3}).text)
    expected = [re.sub(r"\r\n?", "\n", "".join(TOKENS[i:i + 3])) for i in range(0, 20, 3)]
    assert raw_texts(events) == expected


def test_chat_buffer_size_groups_tokens_and_counts_them(fake_server) -> None:
    events = parse_sse(post(fake_server, "/chat", json={"message": "hi", "buffer_size": 6}).text)
    groups = [e.json() for e in events if e.event == "message"]
    assert [g["token"] for g in groups] == ["".join(TOKENS[i:i + 6]) for i in range(0, 20, 6)]
    assert [g["token_count"] for g in groups] == [6, 12, 18, 20]
    assert events[-1].json()["token_count"] == 20


def test_flush_ms_bounds_how_long_a_token_waits(slow_fake_server) -> None:
    # 8 tokens 150 ms apart; a buffer of 100 would hold them all to the end without the flush time.
    arrivals: list[dict[str, Any]] = []
    with httpx.stream("POST", slow_fake_server.url + "/chat", timeout=30,
                      json={"message": "hi", "buffer_size": 100, "flush_ms": 200}) as response:
        buffer = ""
        for text in response.iter_text():
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                for event in parse_sse(block + "\n\n"):
                    if event.event == "message":
                        arrivals.append(event.json())
    sizes = [p["token_count"] for p in arrivals]
    assert len(arrivals) >= 3, "tokens should be flushed in several groups, not held for a full buffer"
    assert sizes[-1] == 8
    groups = [b - a for a, b in zip([0, *sizes], sizes)]
    assert max(groups) <= 3, f"a group held tokens longer than flush_ms: {groups}"
    assert "".join(p["token"] for p in arrivals) == "".join(scripted_tokens(8))


def test_whole_generation_timeout(slow_fake_server) -> None:
    events = parse_sse(post(slow_fake_server, "/chat", json={"message": "hi", "timeout": 0.4}).text)
    assert events[-1].event == "error"
    sent = [e.json()["token"] for e in events if e.event == "message"]  # with what it had sent until then
    assert events[-1].json() == {"error": "Timeout after 0.4s", "type": "timeout", "full_response": "".join(sent),
                                 "token_count": len(sent)}
    assert not any(e.event == "done" for e in events)
    assert 1 <= len([e for e in events if e.event == "message"]) < 8


def test_idle_timeout(slow_fake_server) -> None:
    # The first token comes at once, the next one 150 ms later: longer than the allowed 50 ms of silence.
    events = parse_sse(post(slow_fake_server, "/chat", json={"message": "hi", "idle_timeout": 0.05}).text)
    assert [e.event for e in events] == ["start", "message", "error"]
    assert events[-1].json() == {"error": "No token for 0.05s", "type": "timeout",
                                 "full_response": events[1].json()["token"], "token_count": 1}


def test_tutorial_timeout_route_message(slow_fake_server) -> None:
    events = parse_sse(post(slow_fake_server, "/chat-timeout", params={"message": "hi", "timeout": 0.2}).text)
    assert (events[-1].event, events[-1].data) == ("error", "Timeout after 0.2s")


def test_heartbeat_comments_keep_a_slow_stream_alive(slow_fake_server) -> None:
    response = post(slow_fake_server, "/chat", json={"message": "hi"})
    # 8 tokens 150 ms apart with a 0.1 s heartbeat: several comments, and the events around them intact.
    assert response.text.count(": heartbeat\n\n") >= 3
    check_json_stream(parse_sse(response.text), scripted_tokens(8))


def test_model_error_becomes_an_error_event(failing_server) -> None:
    events = parse_sse(post(failing_server, "/chat", json={"message": "hi"}).text)
    assert [e.event for e in events] == ["start", "message", "message", "message", "error"]
    # A failure without a name is told as an internal error with the id the log has it under: no exception text.
    error = events[-1].json()
    assert error["type"] == "internal_error" and "ScriptedFailure" not in error["error"]
    assert re.fullmatch(r"internal error; the server logged it as [0-9a-f]{12}", error["error"])
    assert error["error"].rsplit(" ", 1)[-1] in failing_server.output()  # the traceback is in the log, under the id
    raw = parse_sse(post(failing_server, "/chat-conversation",
                         json={"messages": [{"role": "user", "content": "hi"}]}).text)
    assert raw[-1].event == "error" and raw[-1].data.startswith("internal error; the server logged it as ")
    assert "Traceback" not in post(failing_server, "/chat-token", params={"message": "hi"}).text
    assert httpx.get(failing_server.url + "/health").json()["status"] == "ok"


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), [
    ("POST", "/chat", {"json": {"message": "hi", "buffer_size": 0}}, "buffer_size"),
    ("POST", "/chat", {"json": {"message": "hi", "flush_ms": 0}}, "flush_ms"),
    ("POST", "/chat", {"json": {"message": "hi", "timeout": -1}}, "timeout"),
    ("POST", "/chat", {"json": {"message": "hi", "idle_timeout": 99999}}, "idle_timeout"),
    ("POST", "/chat", {"json": {"message": ""}}, "message"),
    ("POST", "/chat", {"json": {"message": "hi", "messages": [{"role": "user", "content": "hi"}]}}, "messages"),
    ("POST", "/chat", {"json": {"messages": []}}, "messages"),
    ("POST", "/chat", {}, "message"),
    ("GET", "/chat", {"params": {"message": "hi", "buffer_size": 5000}}, "buffer_size"),
    ("GET", "/chat", {}, "message"),
    ("POST", "/chat-buffered", {"params": {"message": "hi", "buffer_size": 0}}, "buffer_size"),
    ("POST", "/chat-timeout", {"params": {"message": "hi", "timeout": 0}}, "timeout"),
    ("POST", "/chat-token", {}, "message"),
    ("POST", "/chat-conversation", {"json": {"messages": [{"role": "robot", "content": "hi"}]}}, "role"),
])
def test_out_of_range_parameters_get_422_naming_the_field(fake_server, method: str, path: str,
                                                          kwargs: dict[str, Any], field: str) -> None:
    response = httpx.request(method, fake_server.url + path, timeout=10, **kwargs)
    assert response.status_code == 422, response.text
    assert field in response.text


def test_openapi_documents_each_route_and_its_parameters(fake_server) -> None:
    spec = httpx.get(fake_server.url + "/openapi.json").json()
    paths = spec["paths"]
    assert {"get", "post"} <= set(paths["/chat"])
    query = {p["name"] for p in paths["/chat"]["get"]["parameters"]}
    assert {"message", "system_prompt", "buffer_size", "flush_ms", "timeout", "idle_timeout"} <= query
    assert "text/event-stream" in paths["/chat"]["post"]["responses"]["200"]["content"]
    run = {"on_disconnect", "last-event-id"}  # every route that starts a run: its disconnect policy, and resume
    assert run <= query
    assert {p["name"] for p in paths["/chat-buffered"]["post"]["parameters"]} == {"message", "buffer_size", *run}
    assert {p["name"] for p in paths["/chat-timeout"]["post"]["parameters"]} == {"message", "timeout", *run}
    assert {p["name"] for p in paths["/chat-token"]["post"]["parameters"]} == {"message", *run}
    assert "requestBody" in paths["/chat-conversation"]["post"]
    resume = {p["name"] for p in paths["/chat/runs/{run_id}/stream"]["get"]["parameters"]}
    assert resume == {"run_id", "last_event_id", "last-event-id"}
    assert "text/event-stream" in paths["/chat/runs/{run_id}/stream"]["get"]["responses"]["200"]["content"]
    assert "post" in paths["/chat/runs/{run_id}/cancel"]
