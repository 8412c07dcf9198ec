"""OpenAI's Responses API, `/v1/responses`, driven by the official `openai` SDK on 127.0.0.1: `responses.create`
(whole, streamed, in the background), `responses.stream` (new, and resumed by id after a sequence number),
`responses.retrieve` and `responses.cancel`; then schemathesis over the new operations. The scripted model
(`CHAT_PROVIDER=fake`): only the protocol matters here."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from chains.models.fake import scripted_reasoning, scripted_tokens
from tests.support.fixtures import app_fixture
from tests.support.servers import LiveServer

KEY = "sk-responses-test-key-0123456789"
OTHER_KEY = "sk-responses-other-key-0123456789"
REPLY = "".join(scripted_tokens(20))

responses_server = app_fixture("responses-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20",
                               API_KEYS=f"{KEY},{OTHER_KEY}", doc="The scripted model behind two API keys.")
reasoning_server = app_fixture("responses-reasoning-server", CHAT_PROVIDER="fake", FAKE_REASONING_TOKENS="4",
                               FAKE_REPLY_TOKENS="5", doc="The scripted model reasoning aloud before its reply.")
long_server = app_fixture("responses-long-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="3000",
                          FAKE_TOKEN_DELAY_MS="10", doc="A 30-second reply: for background runs that are cancelled.")


def sdk(server: LiveServer, key: str = KEY) -> openai.OpenAI:
    # No retries: each test sees exactly what the server answered.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def until(what: Callable[[], Response], done: Callable[[Response], bool], tries: int = 600) -> Response:
    """Polls `what` until `done` (a state the server reaches by itself); never a timing assertion."""
    for _ in range(tries):
        response = what()
        if done(response):
            return response
        time.sleep(0.05)
    raise AssertionError(f"never reached: {response.status}")


def test_create_answers_the_whole_response(responses_server: LiveServer) -> None:
    response = sdk(responses_server).responses.create(model="conversation", input="hi there",
                                                      instructions="be brief", metadata={"case": "whole"})
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == REPLY and response.model == "conversation"
    assert (response.instructions, response.metadata) == ("be brief", {"case": "whole"})
    assert response.usage is not None and response.usage.output_tokens == 20
    assert response.usage.total_tokens == response.usage.input_tokens + 20


def test_stream_gives_each_token_and_the_final_response(responses_server: LiveServer) -> None:
    with sdk(responses_server).responses.stream(model="conversation", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert [event.delta for event in deltas] == scripted_tokens(20)  # \r\n, Chinese and emoji as they were
    assert deltas[-1].snapshot == REPLY  # the SDK's own accumulation
    assert final.output_text == REPLY and final.status == "completed"


def test_create_with_stream_and_retrieve_agree(responses_server: LiveServer) -> None:
    client = sdk(responses_server)
    events = list(client.responses.create(model="conversation", input="hi", stream=True))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert client.responses.retrieve(completed.response.id) == completed.response


def test_a_reasoning_model_streams_a_reasoning_item_before_the_message(reasoning_server: LiveServer) -> None:
    with sdk(reasoning_server).responses.stream(model="conversation", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_text.delta")
    assert [e.delta for e in events if e.type == "response.reasoning_text.delta"] == scripted_reasoning(4)
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and message.type == "message"
    assert reasoning.content is not None and reasoning.content[0].text == "".join(scripted_reasoning(4))
    assert final.output_text == "".join(scripted_tokens(5))
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 4


def test_an_earlier_output_sent_back_as_input_continues_the_conversation(reasoning_server: LiveServer) -> None:
    client = sdk(reasoning_server)
    first = client.responses.create(model="conversation", input="hi")
    history: list[Any] = [item.model_dump(exclude_none=True) for item in first.output]  # its reasoning included
    second = client.responses.create(model="conversation", input=[*history, {"role": "user", "content": "again"}])
    assert second.status == "completed" and second.output_text == "".join(scripted_tokens(5))
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]


def test_a_background_response_is_retrieved_and_its_stream_resumed(responses_server: LiveServer) -> None:
    client = sdk(responses_server)
    started = client.responses.create(model="conversation", input="hi", background=True)
    assert started.status in ("queued", "in_progress") and started.background
    ended = until(lambda: client.responses.retrieve(started.id), lambda r: r.status == "completed")
    assert ended.output_text == REPLY and ended.id == started.id
    # The SDK's resume: it replays the response and skips what it had (sequence numbers ≤ starting_after).
    everything = list(client.responses.retrieve(started.id, stream=True))
    after = everything[5].sequence_number  # a token's delta
    with client.responses.stream(response_id=started.id, starting_after=after) as stream:
        resumed = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in everything if e.sequence_number > after]
    assert final.output_text == REPLY
    # The server's resume: only the events after it come over the wire.
    raw = list(client.responses.retrieve(started.id, stream=True, starting_after=after))
    assert [e.sequence_number for e in raw] == [e.sequence_number for e in resumed]


def test_cancel_stops_a_background_response(long_server: LiveServer) -> None:
    client = sdk(long_server, key="unused")
    started = client.responses.create(model="conversation", input="hi", background=True)
    until(lambda: client.responses.retrieve(started.id), lambda r: bool(r.output_text))  # it has begun
    cancelled = client.responses.cancel(started.id)
    assert cancelled.id == started.id and cancelled.status == "cancelled"
    assert 0 < len(cancelled.output_text) < len("".join(scripted_tokens(3000)))  # what it said until then
    assert client.responses.retrieve(started.id).status == "cancelled"
    events = list(client.responses.retrieve(started.id, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "cancelled"


def test_refusals_are_the_sdks_exceptions_naming_the_field(responses_server: LiveServer) -> None:
    client = sdk(responses_server)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="gpt-4o", input="hi")
    assert missing.value.code == "not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as tools:
        client.responses.create(model="conversation", input="hi", tools=[{"type": "web_search"}])
    assert tools.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as chained:
        client.responses.create(model="conversation", input="hi", previous_response_id="resp_" + "a" * 22)
    assert chained.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + "a" * 22)
    with pytest.raises(openai.AuthenticationError):
        sdk(responses_server, key="sk-wrong-key-0123456789").responses.create(model="conversation", input="hi")
    started = client.responses.create(model="conversation", input="hi")
    with pytest.raises(openai.NotFoundError):  # with keys set, a response is its key's alone
        sdk(responses_server, key=OTHER_KEY).responses.retrieve(started.id)
    with pytest.raises(openai.NotFoundError):
        sdk(responses_server, key=OTHER_KEY).responses.cancel(started.id)


def test_schemathesis_over_v1_responses_finds_no_server_error(responses_server: LiveServer, tmp_path: Path) -> None:
    """Property-based, over the /v1/responses operations only: bounded examples, a fixed seed."""
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", f"{responses_server.url}/openapi.json", "--include-path-regex", "^/v1/responses",
         "--max-examples", "60", "--seed", "20261125", "--checks", "not_a_server_error,response_schema_conformance",
         "--no-color", "--header", f"Authorization: Bearer {KEY}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert "Selected: 3/" in result.stdout, summary  # create, retrieve, cancel
    assert "Server error" not in result.stdout and "violates schema" not in result.stdout
