"""CHAT_PROVIDER=openai against a real OpenAI-compatible server: llama-cpp-python's own, on 127.0.0.1."""

from __future__ import annotations

import httpx
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from langserve import RemoteRunnable

from chains.common.settings import load_settings
from chains.models import build_chat_model
from chains.models.upstreams import Upstreams
from tests.support.sse import parse_sse


@pytest.fixture(scope="module")
def chat_openai(llama_openai_upstream) -> ChatOpenAI:
    settings = load_settings(
        _env_file=None, chat_provider="openai", openai_api_key="sk-test", openai_model="smollm2",
        openai_base_url=f"{llama_openai_upstream.url}/v1", max_tokens=16, temperature=0, openai_timeout=30,
    )
    model = build_chat_model(settings)
    assert isinstance(model, Upstreams) and len(model.upstreams) == 1
    [upstream] = model.upstreams
    assert upstream.model.max_retries == 0  # what a request uses when another upstream follows: none here
    return upstream.retrying  # the only upstream is the last tried: it retries


def test_factory_sets_an_explicit_timeout_and_retries_and_asks_for_usage(chat_openai: ChatOpenAI) -> None:
    assert chat_openai.request_timeout == 30  # ChatOpenAI's own default is None: wait forever
    assert chat_openai.max_retries == 2  # the last (here the only) upstream retries
    assert chat_openai.stream_usage  # ChatOpenAI's default asks only OpenAI's own URL


async def test_provider_streams_tokens_and_honours_max_tokens(chat_openai: ChatOpenAI) -> None:
    chunks = [c async for c in chat_openai.astream([HumanMessage("Tell me about the sea.")])]
    text = "".join(str(c.content) for c in chunks)
    # llama-cpp-python's server reads only `max_tokens` (ChatOpenAI sends `max_completion_tokens`): without both
    # names it would generate until its context is full. It streams a token a chunk.
    assert 1 < sum(1 for c in chunks if c.content) <= 16
    assert text.strip()
    finish = [c.response_metadata.get("finish_reason") for c in chunks if c.response_metadata.get("finish_reason")]
    assert finish == ["length"], "max tokens (16) should cut this reply short"


def test_stream_through_our_server(openai_server) -> None:
    response = httpx.post(f"{openai_server.url}/conversation/stream", timeout=60,
                          json={"input": {"messages": [{"role": "user", "content": "Say hello."}]}})
    assert response.status_code == 200
    chunks = [e.json() for e in parse_sse(response.text) if e.event == "data"]
    assert len(chunks) > 1 and "".join(chunks).strip()


def test_remote_runnable_through_our_server(openai_server) -> None:
    remote = RemoteRunnable(f"{openai_server.url}/system-prompt/", timeout=60)
    given = {"message": "What is two plus two?", "system_prompt": "Answer briefly."}
    invoked = remote.invoke(given)
    assert invoked.strip()
    assert "".join(remote.stream(given)) == invoked  # temperature 0 upstream


def test_health_names_the_upstream_model(openai_server) -> None:
    health = httpx.get(f"{openai_server.url}/health").json()
    assert (health["provider"], health["model"]) == ("openai", "smollm2")
