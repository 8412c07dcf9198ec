"""chains.api.openai.serving in-process: a Chat Completions request mapped onto its chain's input and its
sampling within the server's caps, then the one streaming core: the completion, or the chunks; a failure before the
first token an HTTP error with its type's status, after it an error chunk; the model list. The whole app answers
through httpx's ASGI transport (no socket); what needs a model that fails in a particular way drives
`OpenAIServing` itself."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from chains.api.openai.protocol import ChatCompletionRequest
from chains.api.openai.serving import InvalidRequest, OpenAIServing, chain_input
from chains.api.runs.serving import RunServing
from chains.common.settings import load_settings
from chains.models.fake import ScriptedChatModel, scripted_reasoning, scripted_tokens
from chains.runnables.chat import ConversationInput, SystemPromptInput, build_chains
from chains.streaming.store import MemoryRunStore, RunLimits
from tests.support.asgi import Client, call, scope
from tests.support.sse import data_of
from tests.unit.api.app import client

USER = [{"role": "user", "content": "hi"}]
BODY = {"model": "conversation", "messages": USER}
CHAINS = list(build_chains(ScriptedChatModel()))  # the models /v1 serves: the chains, by name


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({**BODY, **fields})


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


# --- the app, in-process ---------------------------------------------------------------------------------------


async def test_a_failure_before_the_first_token_is_an_http_error_and_after_it_an_error_chunk() -> None:
    async with client(fake_fail_after=0) as http:
        for stream in (False, True):
            failed = await http.post("/v1/chat/completions", json={**BODY, "stream": stream})
            assert failed.status_code == 500
            error = failed.json()["error"]
            assert error["code"] == "internal_error" and error["type"] == "server_error"
            assert "ScriptedFailure" not in failed.text and "Traceback" not in failed.text
    async with client(fake_fail_after=3) as http:
        streamed = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert streamed.status_code == 200
        lines = data_of(streamed.content)
        assert [json.loads(line)["choices"][0]["delta"].get("content") for line in lines[1:4]] == scripted_tokens(3)
        assert json.loads(lines[4])["error"]["code"] == "internal_error" and lines[5] == "[DONE]"


async def test_a_v1_reply_is_a_run_and_its_id_is_in_the_header() -> None:
    async with client() as http:
        for stream in (False, True):
            answer = await http.post("/v1/chat/completions", json={**BODY, "stream": stream})
            assert answer.status_code == 200
            run_id = answer.headers["x-run-id"]
            state = (await http.get(f"/chat/runs/{run_id}")).json()
            assert state["run_id"] == run_id and state["status"] == "completed"
            replay = await http.get(f"/chat/runs/{run_id}/stream")  # the same bytes, kept as sent
            if stream:
                assert replay.content == answer.content
            else:
                assert replay.content.endswith(answer.content)


async def test_an_empty_reply_is_still_a_whole_stream() -> None:
    async with client(fake_reply_tokens=0) as http:
        streamed = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
        lines = data_of(streamed.content)
        assert len(lines) == 3 and json.loads(lines[1])["choices"][0]["finish_reason"] == "stop"
        completion = (await http.post("/v1/chat/completions", json=BODY)).json()
        assert completion["choices"][0]["message"]["content"] == ""


async def test_a_completion_is_the_whole_reply_with_its_usage_and_run() -> None:
    async with client() as http:
        answer = await http.post("/v1/chat/completions", json=BODY)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    completion = answer.json()
    assert (completion["object"], completion["model"]) == ("chat.completion", "conversation")
    [choice] = completion["choices"]
    assert choice["message"] == {"role": "assistant", "content": "".join(scripted_tokens(20)), "refusal": None,
                                 "reasoning_content": None}
    assert choice["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["completion_tokens"] == 20 and usage["total_tokens"] == usage["prompt_tokens"] + 20
    assert len(answer.headers["x-run-id"]) == 22


async def test_a_stream_is_a_role_chunk_a_chunk_per_token_a_finish_chunk_and_done() -> None:
    async with client() as http:
        answer = await http.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert answer.status_code == 200 and answer.headers["content-type"] == "text/event-stream"
    lines = data_of(answer.content)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert len(chunks) == 1 + 20 + 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]] == scripted_tokens(20)
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert len({c["id"] for c in chunks}) == 1 and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)  # not asked for


async def test_usage_asked_for_is_a_last_chunk_before_done() -> None:
    async with client() as http:
        answer = await http.post("/v1/chat/completions", json={
            **BODY, "stream": True, "stream_options": {"include_usage": True}})
    *chunks, last = data_of(answer.content)
    assert last == "[DONE]"
    usage = json.loads(chunks[-1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 20
    assert all(json.loads(chunk)["usage"] is None for chunk in chunks[:-1])


async def test_the_models_are_the_chains() -> None:
    async with client() as http:
        listed = (await http.get("/v1/models")).json()
        one = await http.get("/v1/models/system-prompt")
        missing = await http.get("/v1/models/gpt-4o")
    assert listed["object"] == "list" and [card["id"] for card in listed["data"]] == CHAINS
    assert {(card["object"], card["owned_by"]) for card in listed["data"]} == {("model", "chains")}
    assert one.status_code == 200 and one.json() == next(c for c in listed["data"] if c["id"] == "system-prompt")
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("not_found_error", "not_found", "model")
    assert error["message"] == f"The model 'gpt-4o' does not exist; the models are {', '.join(CHAINS)} (GET /v1/models)"


@pytest.mark.parametrize(("body", "status", "param", "message"), [
    ({**BODY, "n": 2}, 400, "n", "n: only 1 is supported: one choice per request"),
    ({**BODY, "frobnicate": True}, 400, "frobnicate", "Unrecognized request argument supplied: frobnicate"),
    ({**BODY, "model": "gpt-4o"}, 404, "model", None),
    ({"model": "system-prompt", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                            {"role": "user", "content": "c"}]}, 400, "messages",
     "model system-prompt answers system messages and exactly one user message; for a conversation use model "
     "conversation"),
    ({**BODY, "messages": [{"role": "user", "content": "x" * 11}]}, 400, "messages", None),
    ({"model": "conversation"}, 400, "messages", None),
])
async def test_a_bad_request_is_refused_in_openais_shape_naming_the_field(
        body: dict[str, Any], status: int, param: str, message: str | None) -> None:
    async with client(max_input_chars=10, max_messages=3) as http:
        answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
    if message is not None:
        assert error["message"] == message
    assert "x-run-id" not in answer.headers  # refused before any run


async def test_a_body_that_is_not_json_is_a_400() -> None:
    async with client() as http:
        answer = await http.post("/v1/chat/completions", content=b"{not json",
                                 headers={"content-type": "application/json"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "invalid_body" and error["message"].startswith("the body is not valid JSON (")


async def test_the_input_limits_are_the_apps_and_name_the_setting() -> None:
    async with client(max_input_chars=10, max_messages=3) as http:
        answer = await http.post("/v1/chat/completions", json={**BODY, "messages": [
            {"role": "user", "content": "x" * 11}]})
    assert "MAX_INPUT_CHARS=10" in answer.json()["error"]["message"]
    async with client() as http:  # another app in the same process keeps its own (32,000)
        assert (await http.post("/v1/chat/completions", json={**BODY, "messages": [
            {"role": "user", "content": "x" * 11}]})).status_code == 200


# --- failures, driving the serving itself ---------------------------------------------------------------------

UPSTREAM = httpx.Request("POST", "http://upstream/v1/chat/completions")


NO_LIMITS = RunLimits()


def serving_of(model: ScriptedChatModel, limits: RunLimits = NO_LIMITS, **settings: Any) -> OpenAIServing:
    chosen = load_settings(_env_file=None, chat_provider="fake", **settings)
    return OpenAIServing(build_chains(model), chosen, RunServing(MemoryRunStore(limits), 15))


class Failing(ScriptedChatModel):
    """Fails with `failure` before its first token, after `seconds`."""

    failure: Any = None
    seconds: float = 0.0

    async def astream_text(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.seconds)
        raise self.failure
        yield  # an async generator, as a model's stream is


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failure_before_the_first_token_answers_the_status_of_its_type(stream: bool) -> None:
    limited = openai.RateLimitError("slow down sk-up", response=httpx.Response(429, request=UPSTREAM), body=None)
    serving = serving_of(Failing(failure=limited))
    answer = await call(await serving.create(request(stream=stream)), scope(path="/v1/chat/completions"))
    assert answer.status == 429 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": {"message": "the upstream model is rate limited (HTTP 429)",
                                       "type": "rate_limit_error", "param": None, "code": "rate_limited"}}


async def test_a_first_token_later_than_the_timeout_is_a_504() -> None:
    serving = serving_of(Failing(failure=RuntimeError("never reached"), seconds=30), stream_timeout=0.05)
    answer = await call(await serving.create(request(stream=True)), scope(path="/v1/chat/completions"))
    assert answer.status == 504
    assert answer.json()["error"] == {"message": "Timeout after 0.05s", "type": "server_error", "param": None,
                                      "code": "timeout"}


async def test_a_full_run_store_is_a_503_to_retry_later() -> None:
    serving = serving_of(ScriptedChatModel(), RunLimits(max_live=0))
    answer = await call(await serving.create(request()), scope(path="/v1/chat/completions"))
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["code"] == "run_store_full"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_leaves_while_it_waits_cancels_the_generation(stream: bool) -> None:
    serving = serving_of(Failing(failure=RuntimeError("never reached"), seconds=30))
    store = serving.runs.store
    assert isinstance(store, MemoryRunStore)
    waiting = asyncio.create_task(serving.create(request(stream=stream)))
    while not store.live:
        await asyncio.sleep(0.005)
    [run] = store.live.values()
    await asyncio.sleep(0.01)
    waiting.cancel()  # what CancelWhenClientLeaves does to the request
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for _ in range(200):
        if run.finished:
            break
        await asyncio.sleep(0.005)
    assert run.status == "cancelled" and run.listeners == 0


async def test_the_stream_replays_the_run_from_its_start_once_the_first_token_is_there() -> None:
    serving = serving_of(ScriptedChatModel(reply_tokens=4, token_delay_ms=20))
    response = await serving.create(request(stream=True))  # returns at the first token, the rest still to come
    answer = await call(response, scope(path="/v1/chat/completions"), Client())
    lines = data_of(answer.body)
    assert [json.loads(line)["choices"][0]["delta"].get("content") for line in lines[1:5]] == scripted_tokens(4)
    assert lines[-1] == "[DONE]"


# --- a model that reasons aloud ----------------------------------------------------------------------------------

async def test_reasoning_is_streamed_as_reasoning_content_deltas_and_is_the_completions_reasoning_content() -> None:
    async with client(fake_reasoning_tokens=4, fake_reply_tokens=3) as http:
        streamed = await http.post("/v1/chat/completions", json={
            **BODY, "stream": True, "stream_options": {"include_usage": True}})
        completed = await http.post("/v1/chat/completions", json=BODY)
    chunks = [json.loads(data) for data in data_of(streamed.content) if data != "[DONE]"]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert [d["reasoning_content"] for d in deltas if "reasoning_content" in d] == scripted_reasoning(4)
    assert [d["content"] for d in deltas if d.get("content")] == scripted_tokens(3)
    assert deltas.index({"content": scripted_tokens(3)[0]}) > deltas.index({"reasoning_content": "Let"})
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}
    message = completed.json()["choices"][0]["message"]
    assert message["reasoning_content"] == "".join(scripted_reasoning(4))
    assert message["content"] == "".join(scripted_tokens(3))
    assert completed.json()["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}


async def test_reasoning_effort_is_refused_by_a_provider_that_cannot_honour_it() -> None:
    async with client() as http:
        refused = await http.post("/v1/chat/completions", json={**BODY, "reasoning_effort": "low"})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "reasoning_effort" and "fake provider" in error["message"]


async def test_fields_that_change_nothing_are_accepted_by_the_endpoint() -> None:
    async with client() as http:
        answer = await http.post("/v1/chat/completions", json={
            **BODY, "metadata": {"a": "b"}, "service_tier": "auto", "user": "u", "prompt_cache_key": "k",
            "safety_identifier": "s", "verbosity": "low"})
        refused = await http.post("/v1/chat/completions", json={**BODY, "stream_options": {"include_usage": True}})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream_options"
