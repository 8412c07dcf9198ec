"""The OpenAI-compatible face, `/v1/chat/completions` and `/v1/models`, driven by real clients on 127.0.0.1: the
official `openai` SDK, LangChain's `ChatOpenAI`, and schemathesis. The scripted model (`CHAT_PROVIDER=fake`)
where only the protocol matters; the embedded model where sampling does (max tokens, temperature, seed, stop).
Upstream faults come from tests/support/fault_upstream.py, a real OpenAI-compatible server scripted per request."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from chains.models.fake import scripted_tokens
from tests.support.fixtures import app_fixture, pointed_at
from tests.support.servers import LiveServer

KEY = "sk-v1-test-key-0123456789"
SCRIPT = scripted_tokens(20)  # the scripted model's reply, token by token (FAKE_REPLY_TOKENS=20)
REPLY = "".join(SCRIPT)
USER = [{"role": "user", "content": "hi there"}]


v1_server = app_fixture("v1-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20", API_KEYS=KEY,
                        doc="The scripted model behind API keys: every call carries `Authorization: Bearer`.")


def said(error: openai.APIStatusError) -> str:
    """The server's own message (the SDK's `message` prefixes it with the status)."""
    assert isinstance(error.body, dict)
    return error.body["message"]


def sdk(server: LiveServer, key: str = KEY) -> openai.OpenAI:
    # No retries: each test sees exactly what the server answered.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


# --- /v1/models ------------------------------------------------------------------------------------------------

def test_models_are_the_chains(v1_server: LiveServer) -> None:
    client = sdk(v1_server)
    assert [model.id for model in client.models.list()] == ["single-turn", "system-prompt", "conversation"]
    assert client.models.retrieve("conversation").id == "conversation"
    with pytest.raises(openai.NotFoundError) as refused:
        client.models.retrieve("gpt-4o")
    assert refused.value.code == "not_found"


# --- chat.completions.create -----------------------------------------------------------------------------------

def test_non_streaming_completion_with_usage(v1_server: LiveServer) -> None:
    completion = sdk(v1_server).chat.completions.create(model="conversation", messages=USER)
    assert completion.object == "chat.completion" and completion.model == "conversation"
    assert completion.id.startswith("chatcmpl-")
    [choice] = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == REPLY
    assert choice.finish_reason == "stop"
    # The scripted model counts a prompt's words: the server's system prompt (one word) and "hi there".
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        3, 20, 23)


def test_streaming_chunk_sequence_with_usage(v1_server: LiveServer) -> None:
    chunks = list(sdk(v1_server).chat.completions.create(
        model="conversation", messages=USER, stream=True, stream_options={"include_usage": True}))
    assert {chunk.id for chunk in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk.model for chunk in chunks} == {"conversation"}
    role, *tokens, finish, usage = chunks
    assert role.choices[0].delta.role == "assistant" and role.choices[0].delta.content == ""
    # One chunk per token, exactly as the model streamed them: newlines, \r, Chinese and emoji included.
    assert [chunk.choices[0].delta.content for chunk in tokens] == SCRIPT
    assert all(chunk.choices[0].finish_reason is None and chunk.usage is None for chunk in [role, *tokens])
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.total_tokens) == (3, 20, 23)


def test_streaming_without_usage_ends_with_the_finish_chunk_and_done(v1_server: LiveServer) -> None:
    response = httpx.post(f"{v1_server.url}/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "conversation", "messages": USER, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]" and '"finish_reason":"stop"' in lines[-2]
    assert len(lines) == 1 + 20 + 1 + 1  # role, tokens, finish, [DONE]: no usage chunk unless asked
    assert '"usage"' not in response.text


def test_each_chain_takes_its_messages(v1_server: LiveServer) -> None:
    client = sdk(v1_server)

    def prompt_tokens(model: str, messages: list[dict[str, Any]]) -> int:
        usage = client.chat.completions.create(model=model, messages=messages).usage  # type: ignore[arg-type]
        assert usage is not None
        return usage.prompt_tokens

    # What reached the model, counted in words by the scripted model.
    assert prompt_tokens("single-turn", USER) == 2  # no system prompt at all
    assert prompt_tokens("system-prompt", USER) == 3  # the server's one-word SYSTEM_PROMPT
    assert prompt_tokens("system-prompt", [{"role": "developer", "content": "be very brief"}, *USER]) == 5
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
               {"role": "assistant", "content": "two three"}, {"role": "user", "content": [
                   {"type": "text", "text": "four "}, {"type": "text", "text": "five"}]}]
    assert prompt_tokens("conversation", history) == 7  # every turn, text parts joined; no default prompt added
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="single-turn", messages=history)  # type: ignore[arg-type]
    assert refused.value.param == "messages" and "use model system-prompt or conversation" in said(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="system-prompt", messages=history)  # type: ignore[arg-type]
    assert refused.value.param == "messages"


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"top_p": 0.5}, "top_p"),
    ({"temperature": 2.5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_unsupported_or_invalid_fields_are_refused_by_name(v1_server: LiveServer, extra: dict[str, Any],
                                                           param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(v1_server).chat.completions.create(model="conversation", messages=USER, **extra)
    error = refused.value
    assert error.status_code == 400 and error.param == param and error.code == "invalid_body"
    assert error.body == {"message": said(error), "type": "invalid_request_error", "param": param,
                          "code": "invalid_body"}
    assert said(error).startswith(f"{param}: ")


def test_fields_at_their_no_op_value_are_accepted(v1_server: LiveServer) -> None:
    completion = sdk(v1_server).chat.completions.create(
        model="conversation", messages=USER, n=1, top_p=1, presence_penalty=0, frequency_penalty=0, logprobs=False,
        tool_choice="none", response_format={"type": "text"}, user="someone", max_tokens=1000)
    assert completion.choices[0].message.content == REPLY


def test_unknown_fields_model_and_content_are_refused_by_name(v1_server: LiveServer) -> None:
    client = sdk(v1_server)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="conversation", messages=USER, extra_body={"best_of": 3})
    assert refused.value.param == "best_of"
    assert said(refused.value) == "Unrecognized request argument supplied: best_of"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="conversation", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}])
    assert refused.value.param == "messages[0].content" and "'image_url' part" in said(refused.value)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="conversation", messages=[{"role": "tool", "content": "x",
                                                                        "tool_call_id": "1"}])
    assert refused.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="conversation", messages=[{"role": "user", "content": " "}])
    assert refused.value.param == "messages" and "no user turn has any text" in said(refused.value)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert missing.value.param == "model" and "conversation" in said(missing.value)


def test_errors_on_v1_only_take_openai_shape(v1_server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    body = httpx.post(f"{v1_server.url}/v1/chat/completions", content=b"{", headers={
        **auth, "Content-Type": "application/json"}).json()
    assert body == {"error": {"message": body["error"]["message"], "type": "invalid_request_error", "param": None,
                              "code": "invalid_body"}}
    assert httpx.get(f"{v1_server.url}/v1/nothing", headers=auth).json()["error"]["code"] == "not_found"
    too_large = httpx.post(f"{v1_server.url}/v1/chat/completions", headers=auth, json={
        "model": "conversation", "messages": [{"role": "user", "content": "x" * 1_100_000}]})
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "body_too_large"
    wrong_type = httpx.post(f"{v1_server.url}/v1/chat/completions", headers=auth, content=b"{}")
    assert wrong_type.status_code == 415 and wrong_type.json()["error"]["type"] == "invalid_request_error"
    # The rest of the API keeps its own shape.
    assert httpx.get(f"{v1_server.url}/nothing", headers=auth).json() == {"error": "Not Found", "type": "not_found"}
    assert httpx.post(f"{v1_server.url}/chat", headers=auth).status_code == 422


def test_a_wrong_or_missing_key_is_an_authentication_error(v1_server: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(v1_server, key="sk-wrong").chat.completions.create(model="conversation", messages=USER)
    assert refused.value.status_code == 401 and refused.value.code == "unauthorized"
    assert refused.value.body["type"] == "authentication_error"  # type: ignore[index]
    assert "sk-wrong" not in refused.value.response.text
    missing = httpx.get(f"{v1_server.url}/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"


# --- the limits, as everywhere -----------------------------------------------------------------------------------

capped_server = app_fixture("v1-capped-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="40", FAKE_TOKEN_DELAY_MS="50",
                            MAX_STREAMS_PER_CLIENT="1", doc="One model run in flight per client, tokens 50 ms apart.")


def test_the_per_client_cap_is_a_rate_limit_error(capped_server: LiveServer) -> None:
    client = sdk(capped_server, key="unused")
    stream = client.chat.completions.create(model="conversation", messages=USER, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="conversation", messages=USER)
    assert refused.value.code == "too_many_streams" and refused.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    assert refused.value.response.headers["retry-after"] == "1"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == "".join(
        scripted_tokens(40))
    # The stream has ended: the client's place is free again.
    assert client.chat.completions.create(model="conversation", messages=USER).choices[0].finish_reason == "stop"


def health_tasks(server: LiveServer) -> int:
    return httpx.get(f"{server.url}/health").json()["tasks"]


def test_a_client_that_leaves_a_non_streaming_request_frees_its_place(capped_server: LiveServer) -> None:
    # 40 tokens 50 ms apart: 2 s. The client gives up after 0.5 s; its place (one per client) must be free at once,
    # not when the abandoned generation would have ended.
    with pytest.raises(openai.APITimeoutError):
        openai.OpenAI(base_url=f"{capped_server.url}/v1", api_key="x", max_retries=0, timeout=0.5
                      ).chat.completions.create(model="conversation", messages=USER)
    left = time.monotonic()
    completion = sdk(capped_server, key="x").chat.completions.create(model="conversation", messages=USER)
    assert completion.choices[0].finish_reason == "stop"
    assert time.monotonic() - left < 3.5  # one 2 s generation, not the abandoned one first


# --- sampling: the embedded model ------------------------------------------------------------------------------

def test_max_tokens_is_honoured_within_the_servers_cap(local_server: LiveServer) -> None:
    client = sdk(local_server, key="unused")
    short = client.chat.completions.create(model="single-turn", messages=[
        {"role": "user", "content": "Tell me a long story about the sea."}], max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage is not None
    assert short.usage.completion_tokens == 5
    # MAX_TOKENS=24 on this server: asking for more is capped, not refused.
    capped = client.chat.completions.create(model="single-turn", messages=[
        {"role": "user", "content": "Tell me a long story about the sea."}], max_completion_tokens=1000)
    assert capped.choices[0].finish_reason == "length" and capped.usage is not None
    assert capped.usage.completion_tokens == 24


def test_temperature_and_seed_are_honoured(local_server: LiveServer) -> None:
    client = sdk(local_server, key="unused")

    def reply(**sampling: Any) -> str:
        completion = client.chat.completions.create(model="single-turn", messages=[
            {"role": "user", "content": "Name some animals."}], **sampling)
        return completion.choices[0].message.content or ""

    # The server samples at temperature 0 (greedy): the seed could not matter unless temperature is honoured.
    assert reply(temperature=1.8, seed=7) == reply(temperature=1.8, seed=7)
    assert len({reply(temperature=1.8, seed=seed) for seed in (7, 8, 9)}) > 1


def test_stop_ends_the_reply_before_the_stop_sequence(local_server: LiveServer) -> None:
    client = sdk(local_server, key="unused")
    messages = [{"role": "user", "content": "Count from one to twenty in words."}]
    whole = client.chat.completions.create(model="single-turn", messages=messages, max_tokens=24)
    text = whole.choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 4, text
    stop = words[len(words) // 2]
    stopped = client.chat.completions.create(model="single-turn", messages=messages, max_tokens=24, stop=[stop])
    assert stopped.choices[0].message.content == text[:text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="single-turn", messages=messages, max_tokens=24, stop=stop,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[:text.index(stop)]


# --- LangChain's ChatOpenAI ------------------------------------------------------------------------------------

def chat_openai(server: LiveServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=f"{server.url}/v1", api_key=KEY, model="conversation", max_retries=0,  # type: ignore[arg-type]
                      timeout=30, **kwargs)


def test_langchain_chat_openai_invoke(v1_server: LiveServer) -> None:
    message = chat_openai(v1_server).invoke([SystemMessage("be brief"), HumanMessage("hi there")])
    assert message.content == REPLY
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] == 20
    assert message.usage_metadata["input_tokens"] == 4  # the given system prompt replaced the server's


def test_langchain_chat_openai_stream(v1_server: LiveServer) -> None:
    chunks = list(chat_openai(v1_server, stream_usage=True).stream("hi there"))
    assert [chunk.content for chunk in chunks if chunk.content] == SCRIPT
    assert [c.response_metadata.get("finish_reason") for c in chunks if c.response_metadata.get("finish_reason")] == [
        "stop"]
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == 20  # stream_options.include_usage: the usage chunk


async def test_langchain_chat_openai_astream(v1_server: LiveServer) -> None:
    chunks = [chunk async for chunk in chat_openai(v1_server, temperature=0.2, max_tokens=50).astream("hi there")]
    assert "".join(str(chunk.content) for chunk in chunks) == REPLY
    assert sum(1 for chunk in chunks if chunk.content) == 20


# --- upstream faults ---------------------------------------------------------------------------------------------

# fault → (script for one request: the first try and both of the server's retries, status, code)
FAULTS: dict[str, tuple[list[str], int, str]] = {
    "429": (["429"] * 3, 429, "rate_limited"),
    "500": (["500"] * 3, 502, "upstream_error"),
    "401": (["401"], 502, "upstream_auth"),
    "hang": (["hang"] * 3, 504, "timeout"),
}


fault_server = app_fixture("v1-fault-server", **pointed_at("fault_upstream", "fault", key="sk-upstream-secret"),
                           OPENAI_TIMEOUT="0.5")


def script(upstream: LiveServer, faults: list[str]) -> None:
    httpx.post(upstream.url + "/_script", json={"faults": faults}).raise_for_status()


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
@pytest.mark.parametrize("fault", FAULTS)
def test_an_upstream_fault_before_the_first_token_is_an_openai_error_with_its_status(
        fault_upstream: LiveServer, fault_server: LiveServer, fault: str, stream: bool) -> None:
    faults, status, code = FAULTS[fault]
    script(fault_upstream, faults)
    with pytest.raises(openai.APIStatusError) as failed:
        response = sdk(fault_server, key="unused").chat.completions.create(model="conversation", messages=USER,
                                                                        stream=stream)
        list(response) if stream else None  # type: ignore[call-overload]
    error = failed.value
    assert error.status_code == status and error.code == code
    assert error.body["type"] == ("rate_limit_error" if status == 429 else "server_error")  # type: ignore[index]
    if status == 429:
        assert isinstance(error, openai.RateLimitError) and error.response.headers["retry-after"] == "1"
    text = error.response.text
    assert "sk-upstream-secret" not in text and "sk-test" not in text and "Traceback" not in text


def test_an_upstream_fault_after_tokens_is_an_error_chunk(fault_upstream: LiveServer,
                                                          fault_server: LiveServer) -> None:
    script(fault_upstream, ["drop"])  # three tokens, then the upstream connection is cut
    received: list[str] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in sdk(fault_server, key="unused").chat.completions.create(model="conversation", messages=USER,
                                                                           stream=True):
            received += [chunk.choices[0].delta.content or ""] if chunk.choices else []
    assert "".join(received) == "Hello, I"
    assert failed.value.code == "upstream_error" and failed.value.body["type"] == "server_error"  # type: ignore[index]


# --- schemathesis ----------------------------------------------------------------------------------------------

def test_schemathesis_over_v1_finds_no_server_error(v1_server: LiveServer, tmp_path: Path) -> None:
    """Property-based, over the /v1 operations only: bounded examples, a fixed seed."""
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", f"{v1_server.url}/openapi.json", "--include-path-regex", "^/v1/(chat|models)", "--max-examples", "60",
         "--seed", "20261125", "--checks", "not_a_server_error,response_schema_conformance", "--no-color",
         "--header", f"Authorization: Bearer {KEY}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert "Selected: 3/" in result.stdout, summary  # the three chat and model operations (/v1/responses: its own)
    assert "Server error" not in result.stdout and "violates schema" not in result.stdout


def test_concurrent_streams_each_get_their_whole_reply(v1_server: LiveServer) -> None:
    results: list[str] = []

    def one() -> None:
        stream = sdk(v1_server).chat.completions.create(model="conversation", messages=USER, stream=True)
        results.append("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [REPLY] * 8
