"""chains.models.upstreams in-process: what the openai provider reads of a server's chunks (usage asked for, a
reasoning model's thinking under either field name), how the list of upstreams is ordered (preference, cool-down,
free slots), what the admission hands out when they are capped, and that each upstream gets its own client and
retries. No server: the chunks are the dicts the OpenAI SDK parses a server's stream into. The upstreams on the
wire — failover, the cap, a broken stream — are proven end to end in tests/e2e/openai/test_upstreams.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from pydantic import SecretStr

from chains.common.errors import UpstreamBusy
from chains.common.settings import ConfigError, load_settings
from chains.models import build_chat_model
from chains.models.base import Reasoning, StreamEnd, admission_queue
from chains.models.upstreams import OpenAICompatibleChat, Upstreams, upstream_label
from chains.runnables.chat import _text_of_chunks


def chat(url: str = "http://127.0.0.1:9/v1") -> OpenAICompatibleChat:
    return OpenAICompatibleChat(model="m", api_key=SecretStr("sk-x"), base_url=url)


def delta_chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_reasoning_delta_under_either_name_lands_where_langchain_puts_reasoning(field: str) -> None:
    converted = chat()._convert_chunk_to_generation_chunk(delta_chunk({field: "hmm"}), AIMessageChunk, None)
    assert converted is not None
    assert converted.message.additional_kwargs == {"reasoning_content": "hmm"} and converted.message.content == ""
    plain = chat()._convert_chunk_to_generation_chunk(delta_chunk({"content": "hi"}), AIMessageChunk, None)
    assert plain is not None and plain.message.additional_kwargs == {} and plain.message.content == "hi"


def test_the_token_cap_goes_by_both_names_except_to_openai_and_always_over_chat_completions() -> None:
    elsewhere = chat()._get_request_payload([("user", "hi")], max_tokens=7)
    assert (elsewhere["max_completion_tokens"], elsewhere["max_tokens"]) == (7, 7)
    openai_own = chat("https://api.openai.com/v1")._get_request_payload([("user", "hi")], max_tokens=7)
    assert openai_own["max_completion_tokens"] == 7 and "max_tokens" not in openai_own
    assert not chat()._use_responses_api({})
    assert not OpenAICompatibleChat(model="o1-pro", api_key=SecretStr("sk-x"))._use_responses_api({})


def test_a_completions_reasoning_is_kept_and_usage_is_asked_of_any_server() -> None:
    completion = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14,
                  "completion_tokens_details": {"reasoning_tokens": 7}}}
    [generation] = chat()._create_chat_result(completion).generations
    assert generation.message.additional_kwargs["reasoning_content"] == "2+2"
    assert generation.message.usage_metadata is not None  # an AIMessage: LangChain read the usage
    assert generation.message.usage_metadata["output_token_details"] == {"reasoning": 7}
    assert chat()._should_stream_usage() is True  # ChatOpenAI's own asks only OpenAI's URL


async def test_the_chains_text_stream_sends_reasoning_apart_and_the_answer_as_plain_text() -> None:
    async def chunks() -> Any:
        yield AIMessageChunk(content="", additional_kwargs={"reasoning_content": "think"})
        yield AIMessageChunk(content="an")
        yield AIMessageChunk(content="swer", usage_metadata={
            "input_tokens": 3, "output_tokens": 5, "total_tokens": 8, "output_token_details": {"reasoning": 2}},
            response_metadata={"finish_reason": "stop"})

    items = [item async for item in _text_of_chunks(chunks())]
    assert items == ["think", "an", "swer", StreamEnd("stop", 3, 5, 2)]
    assert [type(item) for item in items[:3]] == [Reasoning, str, str]  # not LangChain's TextAccessor


class ScriptedUpstream:
    """An upstream's chat model, scripted: its chunks (a str is a text chunk, "" the role chunk), then maybe a
    failure; it notes whether its stream was closed."""

    def __init__(self, chunks: list[str], failure: BaseException | None = None) -> None:
        self.chunks, self.failure, self.closed, self.calls = chunks, failure, False, 0

    async def _astream(self, messages: Any, **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        self.calls += 1
        try:
            for text in self.chunks:
                yield ChatGenerationChunk(message=AIMessageChunk(content=text))
            if self.failure is not None:
                raise self.failure
        finally:
            self.closed = True


REQUEST = httpx.Request("POST", "http://upstream/v1/chat/completions")


def scripted(upstreams: Upstreams, *models: ScriptedUpstream) -> Upstreams:
    for upstream, model in zip(upstreams.upstreams, models, strict=True):
        upstream.model = upstream.retrying = model  # type: ignore[assignment]
    return upstreams


async def texts(upstreams: Upstreams) -> str:
    return "".join([chunk.text async for chunk in upstreams._astream([HumanMessage("hi")])])


async def test_a_stream_that_breaks_after_its_role_chunk_fails_over_and_nothing_is_spliced() -> None:
    broken = ScriptedUpstream(["", ""], httpx.RemoteProtocolError("peer closed"))
    healthy = ScriptedUpstream(["", "from", " b"])
    upstreams = scripted(pool("http://a:1/v1,http://b:2/v1"), broken, healthy)
    assert await texts(upstreams) == "from b"
    a, b = upstreams.upstreams
    assert a.cooling_until > 0 and b.cooling_until == 0 and broken.closed and healthy.closed
    after_text = ScriptedUpstream(["", "half"], httpx.RemoteProtocolError("peer closed"))
    other = ScriptedUpstream(["never"])
    upstreams = scripted(pool("http://a:1/v1,http://b:2/v1"), after_text, other)
    with pytest.raises(httpx.RemoteProtocolError):
        await texts(upstreams)
    assert other.calls == 0  # after text: the stream's error, never a second upstream's text


async def test_when_every_upstream_fails_the_last_failure_is_told() -> None:
    refused = ScriptedUpstream([], openai.APIConnectionError(request=REQUEST))
    limited = ScriptedUpstream([], openai.RateLimitError("slow down", response=httpx.Response(429, request=REQUEST),
                                                        body=None))
    upstreams = scripted(pool("http://a:1/v1,http://b:2/v1"), refused, limited)
    with pytest.raises(openai.RateLimitError):  # with_fallbacks alone would raise the first: "cannot reach"
        await texts(upstreams)


async def test_a_reply_closed_mid_stream_closes_the_upstreams_stream_and_frees_its_slot_at_once() -> None:
    long = ScriptedUpstream(["", *["x"] * 50])
    upstreams = scripted(pool("http://a:1/v1,http://b:2/v1", openai_max_concurrency=1), long,
                         ScriptedUpstream(["b"]))
    stream = upstreams._astream([HumanMessage("hi")])
    assert (await anext(stream)).text == "" and (await anext(stream)).text == "x"
    assert upstreams.upstreams[0].in_flight == 1
    await stream.aclose()
    assert upstreams.upstreams[0].in_flight == 0 and long.closed


def pool(urls: str, **settings: Any) -> Upstreams:
    model = build_chat_model(load_settings(_env_file=None, chat_provider="openai", openai_api_key="sk-x",
                                           openai_base_url=urls, **settings))
    assert isinstance(model, Upstreams)
    return model


def test_the_order_is_preference_then_cooling_last_then_full_after_free() -> None:
    upstreams = pool("http://a:1/v1,http://b:2/v1,http://c:3/v1", openai_cooldown_seconds=30)
    a, b, c = upstreams.upstreams
    assert upstreams.ordered(now=100) == [a, b, c]
    a.cooling_until = 130
    assert upstreams.ordered(now=100) == [b, c, a]
    assert upstreams.ordered(now=131) == [a, b, c]  # cooled down: first again
    upstreams.failed(b, before_first_chunk=True)
    assert b.cooling_until > 0 and upstreams.ordered()[-1] is b
    upstreams.answered_by(b)
    assert b.cooling_until == 0.0


async def test_with_a_cap_a_full_upstream_comes_after_one_with_a_free_slot() -> None:
    upstreams = pool("http://a:1/v1,http://b:2/v1", openai_max_concurrency=1)
    a, b = upstreams.upstreams
    assert await upstreams.take_first() is a
    assert upstreams.ordered() == [b, a]
    await upstreams.give_back(a)
    assert upstreams.ordered() == [a, b]


async def test_a_request_waiting_for_a_slot_takes_whichever_upstream_frees_first() -> None:
    upstreams = pool("http://a:1/v1,http://b:2/v1", openai_max_concurrency=1)
    a, b = upstreams.upstreams
    assert [await upstreams.take_first(), await upstreams.take_first()] == [a, b]
    waiting = asyncio.create_task(upstreams.take_first())
    await asyncio.sleep(0)
    assert not waiting.done()
    await upstreams.give_back(b)  # the second frees first: the waiter does not wait for the first
    assert await asyncio.wait_for(waiting, 5) is b


def test_a_capped_pool_admits_its_caps_and_its_queue_then_is_busy() -> None:
    capped = pool("http://a:1/v1,http://b:2/v1", openai_max_concurrency=2, openai_queue_size=3)
    places = admission_queue(capped)
    assert places is not None and places.free_places() == 2 * 2 + 3
    held = places.reserve(None, 7)
    refusal = places.refusal(None)
    assert isinstance(refusal, UpstreamBusy) and refusal.kind == "upstream_busy"
    assert "the upstream model is busy" in str(refusal)
    held.release()
    assert places.free_places() == 7
    assert admission_queue(pool("http://a:1/v1")) is None  # no cap: nothing to admit


def test_each_upstream_has_its_own_client_and_only_the_last_retries() -> None:
    labels: list[str] = []
    settings = load_settings(_env_file=None, chat_provider="openai", openai_api_key="sk-x", openai_max_retries=3,
                             openai_base_url="http://u:p@a:1/v1/, http://b:2/v1")

    def client_for(label: str) -> None:
        labels.append(label)

    upstreams = build_chat_model(settings, client_for)
    assert isinstance(upstreams, Upstreams)
    assert labels == ["http://a:1/v1", "http://b:2/v1"]  # never the credentials in a label
    assert [(u.model.max_retries, u.retrying.max_retries) for u in upstreams.upstreams] == [(0, 3), (0, 3)]
    assert upstream_label(None) == "https://api.openai.com/v1"


@pytest.mark.parametrize(("urls", "named"), [
    ("http://a:1/v1,,http://b:2/v1", "element 2 of 3 is empty"),
    ("http://a:1/v1,", "element 2 of 2 is empty"),
    ("127.0.0.1:8000/v1", "element 1 of 1 is not an http:// or https:// URL"),
    ("ftp://a/v1", "is not an http:// or https:// URL"),
    ("http:/a/v1", "is not an http:// or https:// URL with a host"),
    ("http://a:1/v1,http://a:1/v1/", "element 2 of 2 is listed already"),
])
def test_a_bad_list_of_upstreams_fails_start_up_with_one_line_naming_it(urls: str, named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, chat_provider="openai", openai_api_key="sk-x", openai_base_url=urls)
    message = str(refused.value)
    assert message.startswith("OPENAI_BASE_URL: ") and named in message and "\n" not in message


@pytest.mark.parametrize("urls", ["https://u:sk-secret@a/v1,", "http:/u:sk-secret@a/v1", "user:sk-secret@b",
                                  "http://a/v1?key=sk-secret,", "http://a/v1,http://u:sk-secret@a/v1"])
def test_a_bad_list_never_echoes_what_its_urls_carry(urls: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, chat_provider="openai", openai_api_key="sk-x", openai_base_url=urls)
    assert "sk-secret" not in str(refused.value)


def test_labels_carry_no_credentials_even_with_an_at_sign_in_the_password() -> None:
    assert upstream_label("http://u:p@ss@a:8001/v1/?key=k#f") == "http://a:8001/v1"


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ConfigError) as negative:
        load_settings(_env_file=None, chat_provider="openai", openai_api_key="sk-x", openai_max_concurrency=-1)
    assert str(negative.value).startswith("OPENAI_MAX_CONCURRENCY: ")
