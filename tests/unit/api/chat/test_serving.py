"""chains.api.chat.serving in-process: a validated `/chat` request → its chain, its stream options (the request's,
else the route's, else the server's) → the one core → the tutorial's SSE events. The whole app answers through
httpx's ASGI transport (no socket) with the scripted model; what needs to see inside drives `ChatServing` itself."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from pydantic import Field

from chains.api.chat.protocol import ChatBody, StreamParams
from chains.api.chat.serving import ChatServing
from chains.api.runs.protocol import RunCaller
from chains.api.runs.serving import RunServing
from chains.common.settings import DEFAULT_SYSTEM_PROMPT, load_settings
from chains.models.fake import ScriptedChatModel, scripted_tokens
from chains.runnables.chat import ChatMessage, build_chains
from chains.streaming.generation import StreamOptions
from chains.streaming.record import StreamLabels, StreamRecord
from chains.streaming.store import MemoryRunStore, RunLimits
from tests.support.asgi import Client, call, scope
from tests.support.sse import Event, parse_sse
from tests.unit.api.app import client

TOKENS = scripted_tokens(20)  # the default app's reply (FAKE_REPLY_TOKENS)
CALLER = RunCaller(owner=None, last_event_id=None, on_disconnect="cancel")


class Recording(ScriptedChatModel):
    """The scripted model, keeping the messages each generation was given."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    async def astream_text(self, messages: list[BaseMessage], *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.seen.append(messages)
        async for item in super().astream_text(messages, *args, **kwargs):
            yield item


class Observer:
    def __init__(self) -> None:
        self.started: list[StreamLabels] = []
        self.records: list[StreamRecord] = []

    def stream_started(self, labels: StreamLabels) -> object:
        self.started.append(labels)
        return None

    def first_token(self, handle: object) -> None:
        pass

    def stream_ended(self, handle: object, record: StreamRecord) -> None:
        self.records.append(record)


def serving_of(model: ScriptedChatModel | None = None, observer: Observer | None = None,
               **settings: Any) -> ChatServing:
    chosen = load_settings(_env_file=None, chat_provider="fake", **settings)
    runs = RunServing(MemoryRunStore(RunLimits()), 15, observer)
    return ChatServing(build_chains(model or ScriptedChatModel(), chosen.system_prompt), chosen, runs)


# --- the options --------------------------------------------------------------------------------------------

def test_the_options_are_the_requests_else_the_routes_else_the_servers() -> None:
    serving = serving_of(stream_flush_ms=50, stream_timeout=100, stream_idle_timeout=10)
    assert serving.options() == StreamOptions(buffer_size=1, flush_ms=50, timeout=100, idle_timeout=10)
    assert serving.options(buffer_size=3, timeout=30) == StreamOptions(3, 50, 30, 10)  # the route's
    assert serving.options(StreamParams(timeout=5, flush_ms=7), timeout=30) == StreamOptions(1, 7, 5, 10)
    assert serving.options(StreamParams(), timeout=30) == StreamOptions(1, 50, 30, 10)  # unset: not given
    # A request model with more than the stream fields: only those are options.
    body = ChatBody(message="hi", system_prompt="be brief", buffer_size=4, idle_timeout=2)
    assert serving.options(body) == StreamOptions(4, 50, 100, 2)


def test_the_defaults_a_chat_page_starts_from_are_the_servers() -> None:
    defaults = serving_of(system_prompt="be brief", max_input_chars=500, max_messages=7).defaults()
    assert (defaults.system_prompt, defaults.max_input_chars, defaults.max_messages) == ("be brief", 500, 7)


# --- which chain, with what ---------------------------------------------------------------------------------

async def stream_of(serving: ChatServing, message: str | None, messages: list[ChatMessage] | None,
                    system_prompt: str | None) -> list[Event]:
    response = await serving.chat(message, messages, system_prompt, StreamParams(), CALLER)
    answer = await call(response, scope(path="/chat"), Client())
    assert answer.status == 200 and answer.complete
    return parse_sse(answer.body.decode())


async def test_a_message_goes_to_the_system_prompt_chain_under_the_given_or_the_servers_prompt() -> None:
    model, observer = Recording(reply_tokens=3), Observer()
    serving = serving_of(model, observer)
    await stream_of(serving, "hi", None, "be brief")
    await stream_of(serving, "hi", None, None)
    assert observer.started == [StreamLabels("/chat", "system-prompt")] * 2
    assert model.seen == [[SystemMessage("be brief"), HumanMessage("hi")],
                          [SystemMessage(DEFAULT_SYSTEM_PROMPT), HumanMessage("hi")]]


async def test_messages_go_to_the_conversation_chain() -> None:
    model, observer = Recording(reply_tokens=3), Observer()
    serving = serving_of(model, observer, system_prompt="server prompt")
    turns = [ChatMessage(role="user", content="a"), ChatMessage(role="assistant", content="b"),
             ChatMessage(role="user", content="c")]
    events = await stream_of(serving, None, turns, None)
    assert observer.started == [StreamLabels("/chat", "conversation")]
    assert [(type(m).__name__, m.content) for m in model.seen[0]] == [
        ("SystemMessage", "server prompt"), ("HumanMessage", "a"), ("AIMessage", "b"), ("HumanMessage", "c")]
    assert events[-1].json()["full_response"] == "".join(scripted_tokens(3))
    assert [r.ending for r in observer.records] == ["done"]


# --- the app: POST /chat on the wire -----------------------------------------------------------------------

async def test_post_chat_streams_start_a_token_event_each_and_done_in_the_sse_wire_format() -> None:
    async with client() as http:
        answer = await http.post("/chat", json={"message": "hi"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/event-stream"  # no charset appended
    assert (answer.headers["cache-control"], answer.headers["x-accel-buffering"]) == ("no-cache", "no")
    run_id = answer.headers["x-run-id"]
    first_token = f'id: {run_id}:1\ndata: {{"token":{json.dumps(TOKENS[0])},"token_count":1}}\n\n'
    assert answer.text.startswith(f"id: {run_id}:0\nevent: start\ndata: ") and first_token in answer.text
    events = parse_sse(answer.text)
    assert [e.event for e in events] == ["start", *["message"] * 20, "done"]
    assert [e.id for e in events] == [f"{run_id}:{seq}" for seq in range(22)]
    start = events[0].json()
    assert (start["status"], start["run_id"]) == ("started", run_id) and isinstance(start["timestamp"], float)
    assert [e.json()["token"] for e in events[1:-1]] == TOKENS
    assert [e.json()["token_count"] for e in events[1:-1]] == list(range(1, 21))
    done = events[-1].json()
    assert (done["status"], done["full_response"], done["token_count"]) == ("completed", "".join(TOKENS), 20)
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] == 20


async def test_post_chat_with_messages_answers_the_conversation() -> None:
    async with client() as http:
        answer = await http.post("/chat", json={"messages": [{"role": "user", "content": "hi"}], "buffer_size": 10})
    events = parse_sse(answer.text)
    assert [e.event for e in events] == ["start", "message", "message", "done"]  # 20 tokens, 10 an event
    assert "".join(e.json()["token"] for e in events[1:-1]) == events[-1].json()["full_response"] == "".join(TOKENS)


@pytest.mark.parametrize(("body", "loc", "says"), [
    ({"message": "hi", "messages": [{"role": "user", "content": "hi"}]}, ["body"],
     "give exactly one of `message` or `messages`"),
    ({}, ["body"], "give exactly one of `message` or `messages`"),
    ({"message": "   "}, ["body", "message"], "must not be empty or only whitespace"),
    ({"message": "x" * 11}, ["body", "message"], "has 11 characters, more than MAX_INPUT_CHARS=10"),
    ({"message": "hi", "system_prompt": "y" * 11}, ["body", "system_prompt"], "MAX_INPUT_CHARS=10"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, ["body"], "no user turn has any text"),
    ({"messages": [{"role": "user", "content": "a"}] * 4}, ["body"], "4 messages, more than MAX_MESSAGES=3"),
    ({"messages": [{"role": "robot", "content": "a"}]}, ["body", "messages", 0, "role"], "'user', 'assistant'"),
    ({"message": "hi", "buffer_size": 0}, ["body", "buffer_size"], "greater than or equal to 1"),
    ({"message": "hi", "timeout": 7200}, ["body", "timeout"], "less than or equal to 3600"),
])
async def test_bad_input_is_a_422_naming_the_field_and_the_problem(body: dict[str, Any], loc: list[Any],
                                                                   says: str) -> None:
    async with client(max_input_chars=10, max_messages=3) as http:
        answer = await http.post("/chat", json=body)
    assert answer.status_code == 422 and "x-run-id" not in answer.headers
    errors = answer.json()["detail"]
    assert any(error["loc"] == loc and says in error["msg"] for error in errors), errors


async def test_a_model_failure_is_an_error_event_after_the_tokens_sent_without_its_text() -> None:
    async with client(fake_fail_after=3) as http:
        answer = await http.post("/chat", json={"message": "hi"})
    assert answer.status_code == 200  # the stream had started: the failure is its last event
    events = parse_sse(answer.text)
    assert [e.event for e in events] == ["start", "message", "message", "message", "error"]
    assert [e.json()["token"] for e in events[1:4]] == scripted_tokens(3)
    error = events[-1].json()
    assert set(error) == {"error", "type"} and error["type"] == "internal_error"
    assert re.fullmatch(r"internal error; the server logged it as [0-9a-f]{12}", error["error"])
    assert "ScriptedFailure" not in answer.text and "Traceback" not in answer.text


async def test_a_model_that_fails_at_once_still_gives_a_start_and_an_error() -> None:
    async with client(fake_fail_after=0) as http:
        answer = await http.post("/chat", json={"message": "hi"})
    assert answer.status_code == 200
    assert [e.event for e in parse_sse(answer.text)] == ["start", "error"]
