"""chains.api.openai and the OpenAI rendering of the one error model, in-process: the chunk and completion
encodings (checked against the `openai` SDK's own types), the request model's refusals, the mapping of messages
onto the chains, the caps, and the app answering through httpx's ASGI transport (no socket)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk as SdkChunk
from pydantic import ValidationError

from chains.api.openai.protocol import (
    ChatCompletionBody,
    ChatCompletionChunks,
    ChatCompletionRequest,
)
from chains.api.openai.serving import InvalidRequest, OpenAIServing, chain_input
from chains.api.runs.serving import RunServing
from chains.common.errors import describe_failure, openai_param
from chains.common.responses import refuse
from chains.common.scope import runs_the_model
from chains.common.settings import load_settings
from chains.models.fake import ScriptedChatModel, scripted_tokens
from chains.runnables.chat import ConversationInput, SystemPromptInput, build_chains
from chains.streaming.events import DoneEvent, ErrorEvent, StartEvent, Usage
from chains.streaming.store import MemoryRunStore, RunLimits
from tests.unit.asgi import call, scope

USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


def done(finish_reason: str | None = "stop", usage: Usage | None = USAGE, text: str = "ab") -> DoneEvent:
    return DoneEvent(full_response=text, token_count=2, duration=0.1, tokens_per_second=20, usage=usage,
                     finish_reason=finish_reason)


def data_of(encoded: bytes) -> list[str]:
    """The `data:` of each SSE event in `encoded`; each event must be exactly one data line."""
    events = encoded.decode().split("\n\n")
    assert events[-1] == ""
    for event in events[:-1]:
        assert event.startswith("data: ") and "\n" not in event and "\r" not in event, event
    return [event.removeprefix("data: ") for event in events[:-1]]


# --- the streaming encoding ------------------------------------------------------------------------------------

def test_chunks_are_what_the_sdk_parses_and_each_token_is_one_line() -> None:
    fmt = ChatCompletionChunks("conversation", include_usage=False)
    role = SdkChunk.model_validate_json(data_of(fmt.start(b"r:0", StartEvent(timestamp=0, run_id="x" * 22)))[0])
    assert role.choices[0].delta.role == "assistant" and role.choices[0].delta.content == ""
    tokens = ["Hello", "\n", "\r\n", '"quoted"', "你好", " 🙂", "\\", "\u2028"]
    for i, token in enumerate(tokens, 1):
        [line] = data_of(fmt.tokens(b"r:%d" % i, token, i))
        chunk = SdkChunk.model_validate_json(line)
        assert chunk.choices[0].delta.content == token and chunk.choices[0].finish_reason is None
        assert (chunk.id, chunk.model, chunk.object) == (role.id, "conversation", "chat.completion.chunk")
        assert "usage" not in json.loads(line)  # not asked for: not in the chunks
    finish, last = data_of(fmt.done(b"r:9", done()))
    assert SdkChunk.model_validate_json(finish).choices[0].finish_reason == "stop"
    assert last == "[DONE]"


def test_usage_asked_for_is_a_last_chunk_without_choices_and_null_before() -> None:
    fmt = ChatCompletionChunks("single-turn", include_usage=True)
    assert json.loads(data_of(fmt.tokens(b"", "x", 1))[0])["usage"] is None
    finish, usage, last = data_of(fmt.done(b"", done(finish_reason="length")))
    assert json.loads(finish)["choices"][0]["finish_reason"] == "length"
    parsed = SdkChunk.model_validate_json(usage)
    assert parsed.choices == [] and parsed.usage is not None and parsed.usage.total_tokens == 5
    assert last == "[DONE]"
    # A model that reports no usage or finish reason: no usage chunk, and `stop`.
    finish, last = data_of(ChatCompletionChunks("x", include_usage=True).done(b"", done(None, None)))
    assert json.loads(finish)["choices"][0]["finish_reason"] == "stop" and last == "[DONE]"


def test_a_failure_in_the_stream_is_an_error_chunk_the_sdk_raises() -> None:
    fmt = ChatCompletionChunks("conversation", include_usage=False)
    error, last = data_of(fmt.error(b"", ErrorEvent(error="the upstream model did not answer in time",
                                                    type="timeout")))
    assert json.loads(error) == {"error": {"message": "the upstream model did not answer in time",
                                           "type": "server_error", "param": None, "code": "timeout"}}
    assert last == "[DONE]"


def test_the_completion_body_is_the_sdks_chat_completion() -> None:
    fmt = ChatCompletionBody("system-prompt")
    assert fmt.start(b"", StartEvent(timestamp=0, run_id="x" * 22)) is None
    assert fmt.tokens(b"", "a", 1) == b""
    completion = SdkCompletion.model_validate_json(fmt.done(b"", done(text="a\nb 🙂")))
    assert completion.choices[0].message.content == "a\nb 🙂" and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 3
    assert completion.model == "system-prompt" and completion.id.startswith("chatcmpl-")
    failed = ChatCompletionBody("x")
    assert failed.error(b"", ErrorEvent(error="no", type="rate_limited")) == b""


# --- the request ---------------------------------------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "conversation", "messages": USER, **fields})


def refused_field(**fields: Any) -> tuple[str, str]:
    with pytest.raises(ValidationError) as refused:
        request(**fields)
    error = refused.value.errors()[0]
    return openai_param(error["loc"]) or "", error["msg"]


def test_fields_are_accepted_at_the_value_that_asks_for_nothing() -> None:
    accepted = request(n=1, top_p=1, presence_penalty=0, frequency_penalty=0, logprobs=False, top_logprobs=0,
                       logit_bias={}, tools=[], tool_choice="none", parallel_tool_calls=False,
                       response_format={"type": "text"}, modalities=["text"], store=False, user="u",
                       stream_options={"include_usage": True, "include_obfuscation": False})
    assert accepted.n == 1 and accepted.stream_options is not None and accepted.stream_options.include_usage


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 3}, "n"), ({"top_p": 0.9}, "top_p"), ({"logprobs": True}, "logprobs"), ({"tools": [{}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"), ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_schema"}}, "response_format"), ({"modalities": ["audio"]}, "modalities"),
    ({"store": True}, "store"), ({"presence_penalty": 1}, "presence_penalty"), ({"temperature": -1}, "temperature"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"), ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
    ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"), ({"audio": {}}, "audio"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_field(fields: dict[str, Any], param: str) -> None:
    assert refused_field(**fields)[0] == param


def test_content_parts_are_joined_and_other_parts_refused_by_their_type() -> None:
    parts = [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]
    assert request(messages=[{"role": "user", "content": parts}]).messages[0].content == "one two"
    param, message = refused_field(messages=[{"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "input_audio", "input_audio": {}}]}])
    assert param == "messages[0].content" and "part 1 is a 'input_audio' part" in message


def test_stop_is_one_string_or_up_to_four() -> None:
    assert request(stop="END").stop == ["END"]
    assert request(stop=["a", "b"]).stop == ["a", "b"]


def test_openai_param_names_a_field_as_openai_does() -> None:
    assert openai_param(("body", "messages", 0, "content")) == "messages[0].content"
    assert openai_param(("body", "n")) == "n"
    assert openai_param(("body",)) is None and openai_param(()) is None


# --- messages onto the chains, and the caps --------------------------------------------------------------------

def messages(*turns: tuple[str, str]) -> list[Any]:
    return request(messages=[{"role": role, "content": content} for role, content in turns]).messages


def test_each_chain_gets_its_own_input() -> None:
    conversation = chain_input("conversation", messages(("developer", "be brief"), ("user", "a"),
                                                        ("assistant", "b"), ("user", "c")))
    assert isinstance(conversation, ConversationInput)
    assert [(m.role, m.content) for m in conversation.messages] == [
        ("system", "be brief"), ("user", "a"), ("assistant", "b"), ("user", "c")]
    prompted = chain_input("system-prompt", messages(("system", "one"), ("developer", "two"), ("user", "hi")))
    assert prompted == SystemPromptInput(message="hi", system_prompt="one\n\ntwo")
    assert chain_input("system-prompt", messages(("user", "hi"))) == SystemPromptInput(message="hi")
    assert chain_input("single-turn", messages(("user", "hi"))) == "hi"
    for chain, turns in (("single-turn", [("system", "s"), ("user", "hi")]),
                         ("single-turn", [("user", "a"), ("user", "b")]),
                         ("system-prompt", [("user", "a"), ("assistant", "b"), ("user", "c")]),
                         ("system-prompt", [("system", "s")])):
        with pytest.raises(InvalidRequest) as refused:
            chain_input(chain, messages(*turns))
        assert refused.value.param == "messages"


def test_the_chain_inputs_limits_apply() -> None:
    limits = load_settings(_env_file=None, chat_provider="fake")
    too_long = "x" * (limits.max_input_chars + 1)
    with pytest.raises(ValidationError):
        chain_input("conversation", messages(("user", too_long)))
    with pytest.raises(ValidationError):
        chain_input("single-turn", messages(("user", "  ")))


def test_sampling_is_passed_to_the_model_within_the_servers_cap() -> None:
    settings = load_settings(_env_file=None, chat_provider="fake", max_tokens=100)
    serving = OpenAIServing(build_chains(ScriptedChatModel()), settings, RunServing(MemoryRunStore(RunLimits()), 15))
    plain = serving.chain_for(request())
    assert plain is serving.chains["conversation"] and plain.model_params == {}
    tuned = serving.chain_for(request(max_tokens=5000, temperature=0.3, stop="x", seed=4))
    assert tuned.model_params == {"max_tokens": 100, "temperature": 0.3, "stop": ["x"], "seed": 4}
    assert serving.chain_for(request(max_tokens=7, max_completion_tokens=9)).model_params == {"max_tokens": 9}
    assert serving.chains["conversation"].model_params == {}  # the shared chain is left as it was


# --- the one error model, two renderings ----------------------------------------------------------------------

async def test_one_refusal_answers_in_the_shape_of_the_path_it_answers() -> None:
    refusal = refuse(429, "too_many_streams", "more than MAX_STREAMS_PER_CLIENT=1 requests in flight")
    ours = await call(refusal, scope(path="/chat"))
    assert ours.json() == {"error": "more than MAX_STREAMS_PER_CLIENT=1 requests in flight", "type": "too_many_streams"}
    theirs = await call(refusal, scope(path="/v1/chat/completions"))
    assert theirs.json() == {"error": {"message": "more than MAX_STREAMS_PER_CLIENT=1 requests in flight",
                                       "type": "rate_limit_error", "param": None, "code": "too_many_streams"}}
    for answer in (ours, theirs):
        assert answer.status == 429 and answer.headers["retry-after"] == "1"
        assert int(answer.headers["content-length"]) == len(answer.body)
        assert answer.headers["content-type"] == "application/json"
    assert (await call(refusal, scope(path="/v1x"))).json()["type"] == "too_many_streams"  # not a /v1 path
    named = await call(refuse(400, "invalid_body", "n: only 1", param="n"), scope(path="/v1/chat/completions"))
    assert named.json()["error"]["param"] == "n" and named.json()["error"]["type"] == "invalid_request_error"


def test_an_error_event_in_an_upstream_stream_is_an_upstream_error() -> None:
    request_ = httpx.Request("POST", "http://upstream/v1/chat/completions")
    failure = describe_failure(openai.APIError("boom", request_, body={"message": "boom sk-secret", "code": "timeout"}))
    assert failure.kind == "upstream_error" and failure.message == "the upstream model failed mid-stream (timeout)"
    odd = describe_failure(openai.APIError("boom", request_, body={"code": "not an identifier; sk-secret"}))
    assert odd.message == "the upstream model failed mid-stream"


def test_completions_run_the_model_and_models_do_not() -> None:
    assert runs_the_model("/v1/chat/completions")
    assert not runs_the_model("/v1/models") and not runs_the_model("/v1/models/conversation")


# --- the app, in-process ---------------------------------------------------------------------------------------

def client_of(**settings: Any) -> httpx.AsyncClient:
    from server import create_app

    app = create_app(load_settings(_env_file=None, chat_provider="fake", **settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


BODY = {"model": "conversation", "messages": USER}


async def test_a_failure_before_the_first_token_is_an_http_error_and_after_it_an_error_chunk() -> None:
    async with client_of(fake_fail_after=0) as client:
        for stream in (False, True):
            failed = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
            assert failed.status_code == 500
            error = failed.json()["error"]
            assert error["code"] == "internal_error" and error["type"] == "server_error"
            assert "ScriptedFailure" not in failed.text and "Traceback" not in failed.text
    async with client_of(fake_fail_after=3) as client:
        streamed = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert streamed.status_code == 200
        lines = data_of(streamed.content)
        assert [json.loads(line)["choices"][0]["delta"].get("content") for line in lines[1:4]] == scripted_tokens(3)
        assert json.loads(lines[4])["error"]["code"] == "internal_error" and lines[5] == "[DONE]"


async def test_a_v1_reply_is_a_run_and_its_id_is_in_the_header() -> None:
    async with client_of(fake_reply_tokens=4) as client:
        for stream in (False, True):
            answer = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
            assert answer.status_code == 200
            run_id = answer.headers["x-run-id"]
            state = (await client.get(f"/chat/runs/{run_id}")).json()
            assert state["run_id"] == run_id and state["status"] == "completed"
            replay = await client.get(f"/chat/runs/{run_id}/stream")  # the same bytes, kept as sent
            if stream:
                assert replay.content == answer.content
            else:
                assert replay.content.endswith(answer.content)


async def test_an_empty_reply_is_still_a_whole_stream() -> None:
    async with client_of(fake_reply_tokens=0) as client:
        streamed = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
        lines = data_of(streamed.content)
        assert len(lines) == 3 and json.loads(lines[1])["choices"][0]["finish_reason"] == "stop"
        completion = (await client.post("/v1/chat/completions", json=BODY)).json()
        assert completion["choices"][0]["message"]["content"] == ""
