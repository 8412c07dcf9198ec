"""Usage through the openai provider, from real model servers on 127.0.0.1: llama.cpp's own `llama-server`, which
reports usage in streams when asked (`stream_options.include_usage`), and llama-cpp-python's server, which does not.

Against llama-server, every surface carries the counts the server itself reports for the same request (asked of it
directly, without streaming, at temperature 0): `/chat`'s `done.usage`, the `/v1` stream's usage chunk, the `/v1`
completion's `usage`, LangServe's `usage_metadata`, and the token metrics. Against llama-cpp-python's server the
usage is null on a stream, never a guess."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from tests.support.fixtures import app_fixture, pointed_at
from tests.support.servers import LiveServer
from tests.support.sse import parse_sse

MAX_TOKENS = 12
usage_server = app_fixture("usage-server", **pointed_at("llama_server_upstream", "smollm2"), TEMPERATURE="0",
                           MAX_TOKENS=str(MAX_TOKENS), doc="Our app over llama.cpp's llama-server.")
no_usage_server = app_fixture("no-usage-server", **pointed_at("llama_openai_upstream", "smollm2"),
                              TEMPERATURE="0", MAX_TOKENS=str(MAX_TOKENS),
                              doc="Our app over llama-cpp-python's server, which sends no usage in a stream.")


def reported(upstream: LiveServer, messages: list[dict[str, str]]) -> dict[str, int]:
    """What the server itself reports for these messages, asked directly, as our app asks it (temperature 0, the
    same token cap), without streaming."""
    answer = httpx.post(upstream.url + "/v1/chat/completions", timeout=60, json={
        "model": "smollm2", "messages": messages, "temperature": 0, "max_completion_tokens": MAX_TOKENS})
    answer.raise_for_status()
    usage: dict[str, int] = answer.json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    return usage


def counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


@pytest.fixture(scope="module")
def v1(usage_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=usage_server.url + "/v1", api_key="sk-any", max_retries=0, timeout=60) as client:
        yield client


USER = [{"role": "user", "content": "Name one colour."}]


def test_chats_done_has_the_upstreams_own_usage(usage_server: LiveServer, llama_server_upstream: LiveServer) -> None:
    answer = httpx.post(usage_server.url + "/chat", json={"message": USER[0]["content"]}, timeout=60)
    done = parse_sse(answer.text)[-1]
    assert done.event == "done", answer.text[-300:]
    usage = done.json()["usage"]
    # The system-prompt chain sends the server's default system prompt before the message.
    expected = reported(llama_server_upstream, [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *USER])
    assert counts(usage) == counts(expected)


def test_v1_stream_with_include_usage_ends_with_the_upstreams_usage(
        v1: openai.OpenAI, llama_server_upstream: LiveServer) -> None:
    chunks = list(v1.chat.completions.create(model="single-turn", messages=USER, stream=True,  # type: ignore[arg-type]
                                             stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(chunk.usage is None for chunk in chunks[:-1])  # one usage chunk, the last
    expected = reported(llama_server_upstream, USER)
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == counts(expected)


def test_v1_completion_has_the_upstreams_usage(v1: openai.OpenAI, llama_server_upstream: LiveServer) -> None:
    completion = v1.chat.completions.create(model="single-turn", messages=USER)  # type: ignore[arg-type]
    assert completion.usage is not None
    expected = reported(llama_server_upstream, USER)
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == counts(expected)


def test_langserve_reports_the_upstreams_usage_metadata(usage_server: LiveServer,
                                                        llama_server_upstream: LiveServer) -> None:
    answer = httpx.post(usage_server.url + "/single-turn/stream_events", timeout=60,
                        json={"input": USER[0]["content"], "config": {}})
    events = [e.json() for e in parse_sse(answer.text) if e.event == "data"]
    [model_end] = [e for e in events if e["event"] == "on_chat_model_end"]
    metadata = model_end["data"]["output"]["usage_metadata"]
    expected = reported(llama_server_upstream, USER)
    assert (metadata["input_tokens"], metadata["output_tokens"], metadata["total_tokens"]) == counts(expected)


def token_sums(server: LiveServer) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {sample.labels["token_type"]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "gen_ai_client_token_usage_sum" and sample.labels.get("route") == "/v1/chat/completions"}


def test_the_token_metrics_grow_by_what_the_upstream_reported(v1: openai.OpenAI, usage_server: LiveServer,
                                                              llama_server_upstream: LiveServer) -> None:
    before = token_sums(usage_server)
    v1.chat.completions.create(model="single-turn", messages=USER)  # type: ignore[arg-type]
    after = token_sums(usage_server)
    expected = reported(llama_server_upstream, USER)
    assert after["input"] - before.get("input", 0) == expected["prompt_tokens"]
    assert after["output"] - before.get("output", 0) == expected["completion_tokens"]


def test_an_upstream_that_sends_no_usage_in_a_stream_gives_null_not_a_guess(no_usage_server: LiveServer) -> None:
    answer = httpx.post(no_usage_server.url + "/chat", json={"message": USER[0]["content"]}, timeout=60)
    done = parse_sse(answer.text)[-1]
    assert done.event == "done" and done.json()["full_response"] and done.json()["usage"] is None
    streamed = httpx.post(no_usage_server.url + "/v1/chat/completions", timeout=60, json={
        "model": "single-turn", "messages": USER, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [json.loads(e.data) for e in parse_sse(streamed.text) if e.data != "[DONE]"]
    assert chunks[-1]["choices"][0]["finish_reason"] and all(c["usage"] is None for c in chunks)
