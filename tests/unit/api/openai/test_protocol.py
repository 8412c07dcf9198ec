"""chains.api.openai.protocol in-process: the chunk and completion encodings (checked against the `openai` SDK's
own types), the request model (what it accepts, what it refuses naming the field), and the errors /v1 declares."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk as SdkChunk
from pydantic import ValidationError

from chains.api.openai.protocol import (
    OPENAI_ERROR_RESPONSES,
    ChatCompletionBody,
    ChatCompletionChunks,
    ChatCompletionRequest,
    OpenAIError,
)
from chains.common.errors import openai_error_body, openai_param
from chains.common.responses import ERROR_RESPONSES
from chains.streaming.events import DoneEvent, ErrorEvent, StartEvent, Usage
from tests.support.sse import data_of

USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


def done(finish_reason: str | None = "stop", usage: Usage | None = USAGE, text: str = "ab") -> DoneEvent:
    return DoneEvent(full_response=text, token_count=2, duration=0.1, tokens_per_second=20, usage=usage,
                     finish_reason=finish_reason)


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
                       response_format={"type": "text"}, modalities=["text"], store=False, user="u", stream=True,
                       stream_options={"include_usage": True, "include_obfuscation": False})
    assert accepted.n == 1 and accepted.stream_options is not None and accepted.stream_options.include_usage


def test_fields_that_change_nothing_in_the_reply_are_accepted_and_reasoning_effort_is_kept() -> None:
    accepted = request(metadata={"team": "a"}, service_tier="auto", user="u", prompt_cache_key="k",
                       safety_identifier="s", verbosity="low", reasoning_effort="low")
    assert accepted.reasoning_effort == "low"
    assert refused_field(reasoning_effort="extreme")[0] == "reasoning_effort"
    assert refused_field(verbosity="loud")[0] == "verbosity"


def test_stream_options_without_a_stream_are_refused_as_openai_refuses_them() -> None:
    param, message = refused_field(stream_options={"include_usage": True})
    assert param == "stream_options" and "only allowed when 'stream' is enabled" in message
    assert refused_field(stream=False, stream_options={"include_usage": True})[0] == "stream_options"


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 3}, "n"), ({"top_p": 0.9}, "top_p"), ({"logprobs": True}, "logprobs"), ({"tools": [{}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"), ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_schema"}}, "response_format"), ({"modalities": ["audio"]}, "modalities"),
    ({"store": True}, "store"), ({"presence_penalty": 1}, "presence_penalty"), ({"temperature": -1}, "temperature"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"), ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
    ({"stream": True, "stream_options": {"include_usage": True, "x": 1}}, "stream_options.x"), ({"audio": {}}, "audio"),
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


@pytest.mark.parametrize(("fields", "param"), [
    ({"stop": ["ok", "x" * 32_001]}, "stop[1]"), ({"stop": "x" * 32_001}, "stop[0]"),
    ({"user": "\ud800"}, "user"), ({"stop": ["\udc00"]}, "stop[0]"),
    ({"messages": [{"role": "user", "content": "hi", "name": "x" * 32_001}]}, "messages[0].name"),
])
def test_every_string_that_could_reach_the_model_server_is_checked_like_a_message(fields: dict[str, Any],
                                                                                  param: str) -> None:
    """`stop` goes upstream as it is: a lone surrogate there was a 500 inside langchain-openai."""
    name, message = refused_field(**fields)
    assert name == param and ("MAX_INPUT_CHARS" in message or "surrogate" in message)


# --- what the /v1 operations declare ----------------------------------------------------------------------------

def test_every_declared_status_is_in_openais_shape_and_400_and_404_say_what_v1_means() -> None:
    assert sorted(OPENAI_ERROR_RESPONSES) == sorted(ERROR_RESPONSES)  # type: ignore[type-var]
    for status, spec in OPENAI_ERROR_RESPONSES.items():
        assert spec["model"] is OpenAIError
        if status not in (400, 404):
            assert spec["description"] == ERROR_RESPONSES[status]["description"]
    assert "param" in OPENAI_ERROR_RESPONSES[400]["description"]
    assert OPENAI_ERROR_RESPONSES[404]["description"].startswith("no such model")
    documented = OpenAIError.model_validate(openai_error_body(404, "not_found", "no such model", "model"))
    assert documented.model_dump() == openai_error_body(404, "not_found", "no such model", "model")
