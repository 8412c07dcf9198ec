"""A reasoning model behind the openai provider, end to end: its reasoning reaches every surface apart from its
answer — `/chat` (`event: reasoning`, `done.full_reasoning`, one event-id sequence that a resume replays), the raw
variants (`event: reasoning`, raw text), `/v1` (`delta.reasoning_content`, `message.reasoning_content`, usage with
`completion_tokens_details`) and LangServe (`additional_kwargs["reasoning_content"]`, string outputs of the answer
alone) — and the reasoning counts as activity for the idle timeout.

The upstream is tests/support/reasoning_upstream.py, a scripted OpenAI-compatible server streaming as vLLM does
for reasoning models, its reasoning field `reasoning_content` (model `reasoner`) or `reasoning` (`reasoner-r`).
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support import reasoning_upstream as upstream
from tests.support.fixtures import app_fixture, pointed_at, upstream_fixture
from tests.support.runs import runs_started
from tests.support.servers import LiveServer
from tests.support.sse import Event, SSEDecoder, parse_sse, run_positions

REASONING, ANSWER = upstream.REASONING, upstream.ANSWER
USAGE = upstream.usage("reasoner")  # the upstream's counts: 13 prompt tokens, one per piece, 8 of them reasoning
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the meaning of life?"}]

reasoning_upstream = upstream_fixture(
    "tests.support.reasoning_upstream:app", "reasoning-upstream",
    doc="tests/support/reasoning_upstream.py: a reasoning model's stream as vLLM sends it, paced per test.")
# As tests/conftest.py's OPENAI_APP, pointed at the scripted reasoning upstream.
reasoning_server = app_fixture("reasoning-server", **pointed_at("reasoning_upstream", "reasoner"), TEMPERATURE="0",
                               doc="Our app on model `reasoner`: reasoning in `delta.reasoning_content`.")
reasoning_r_server = app_fixture("reasoning-r-server", **pointed_at("reasoning_upstream", "reasoner-r"),
                                 TEMPERATURE="0", doc="Our app on model `reasoner-r`: reasoning in `delta.reasoning`.")
plain_server = app_fixture("plain-reasoning-upstream-server", **pointed_at("reasoning_upstream", "plain"),
                           TEMPERATURE="0", doc="Our app on model `plain`: the same upstream, no reasoning at all.")


def pace(server: LiveServer, gap_ms: int = 20, fail_after_reasoning: bool = False) -> None:
    httpx.post(server.url + "/_pace", json={"gap_ms": gap_ms, "fail_after_reasoning": fail_after_reasoning},
               timeout=10).raise_for_status()


def upstream_log(server: LiveServer) -> list[dict[str, Any]]:
    """The bodies the upstream received since the last `pace`."""
    log: list[dict[str, Any]] = httpx.get(server.url + "/_log", timeout=10).json()
    return log


@pytest.fixture(autouse=True)
def steady(reasoning_upstream: LiveServer) -> None:
    """Every test starts from the default pace (20 ms between reasoning pieces, no failure) and an empty log."""
    pace(reasoning_upstream)


def stream(server: LiveServer, method: str, path: str, **kwargs: Any) -> list[Event]:
    response = httpx.request(method, server.url + path, timeout=60, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    return parse_sse(response.text)


def read_until_reasoning(server: LiveServer, path: str, pieces: int,
                         **kwargs: Any) -> tuple[httpx.Response, list[Event]]:
    """`GET path`'s events up to its `pieces`-th reasoning event; then the connection is dropped."""
    events: list[Event] = []
    decoder = SSEDecoder()
    with httpx.stream("GET", server.url + path, timeout=30, **kwargs) as response:
        assert response.status_code == 200
        for text in response.iter_text():  # bounded: the stream ends, or a read times out after 30 s
            for event in decoder.feed(text):
                events.append(event)
                if sum(e.event == "reasoning" for e in events) == pieces:
                    return response, events  # leaving the block drops the connection here
    raise AssertionError(f"the stream ended before {pieces} reasoning events: {[e.event for e in events]}")


def check_chat_stream(events: list[Event]) -> dict[str, Any]:
    """`/chat` with a reasoning model: start, every reasoning piece, every answer token, done — one id sequence,
    each kind counted from 1; returns the done payload."""
    run_id, positions = run_positions([e.id for e in events])
    assert positions == list(range(len(events))), "reasoning and answer share the run's one sequence"
    assert [e.event for e in events] == ["start", *["reasoning"] * len(REASONING), *["message"] * len(ANSWER),
                                         "done"]
    assert events[0].json()["run_id"] == run_id
    assert [e.json() for e in events if e.event == "reasoning"] == [
        {"token": piece, "token_count": k} for k, piece in enumerate(REASONING, 1)]
    assert [e.json() for e in events if e.event == "message"] == [
        {"token": piece, "token_count": k} for k, piece in enumerate(ANSWER, 1)]
    done: dict[str, Any] = events[-1].json()
    assert (done["status"], done["finish_reason"]) == ("completed", "stop")
    assert done["full_reasoning"] == "".join(REASONING)
    assert done["full_response"] == "".join(ANSWER)  # the answer alone
    assert done["token_count"] == len(ANSWER)
    return done


# --- /chat -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("server", ["reasoning_server", "reasoning_r_server"], ids=["reasoning_content", "reasoning"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_chat_streams_the_reasoning_before_the_answer(request: pytest.FixtureRequest, reasoning_upstream: LiveServer,
                                                      server: str, method: str) -> None:
    live: LiveServer = request.getfixturevalue(server)
    # GET: what an EventSource sends (a query); POST: a JSON body.
    given = {"params": {"message": "你好"}} if method == "GET" else {"json": {"message": "你好"}}
    done = check_chat_stream(stream(live, method, "/chat", **given))
    assert done["usage"] == USAGE  # the upstream's numbers, its reasoning tokens included
    [sent] = upstream_log(reasoning_upstream)
    assert sent["model"] == ("reasoner" if server == "reasoning_server" else "reasoner-r")
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert "reasoning_effort" not in sent  # the client asked for none: none is made up


def test_a_model_without_reasoning_has_no_reasoning_events_and_empty_full_reasoning(plain_server: LiveServer) -> None:
    events = stream(plain_server, "POST", "/chat", json={"message": "hi"})
    assert [e.event for e in events] == ["start", *["message"] * len(ANSWER), "done"]
    done = events[-1].json()
    assert done["full_reasoning"] == "" and done["full_response"] == "".join(ANSWER)
    assert done["usage"] == upstream.usage("plain")


def test_reasoning_is_activity_for_the_idle_timeout(reasoning_upstream: LiveServer,
                                                    reasoning_server: LiveServer) -> None:
    # 8 pieces 400 ms apart: 3.2 s of reasoning before the first answer token, no silence near the 2 s limit.
    pace(reasoning_upstream, gap_ms=400)
    done = check_chat_stream(stream(reasoning_server, "POST", "/chat", json={"message": "hi", "idle_timeout": 2}))
    assert done["duration"] > 2  # by construction (the upstream's sleeps): the answer came after the idle limit


def test_a_silence_within_the_reasoning_still_times_out(reasoning_upstream: LiveServer,
                                                        reasoning_server: LiveServer) -> None:
    pace(reasoning_upstream, gap_ms=30_000)  # the first reasoning piece would come after 30 s
    events = stream(reasoning_server, "POST", "/chat", json={"message": "hi", "idle_timeout": 1})
    assert [e.event for e in events] == ["start", "error"]
    assert events[-1].json()["type"] == "timeout"


def test_an_upstream_failure_after_the_reasoning_is_a_typed_error_event(reasoning_upstream: LiveServer,
                                                                        reasoning_server: LiveServer) -> None:
    pace(reasoning_upstream, fail_after_reasoning=True)
    events = stream(reasoning_server, "POST", "/chat", json={"message": "hi"})
    assert [e.event for e in events] == ["start", *["reasoning"] * len(REASONING), "error"]
    assert [e.json()["token"] for e in events if e.event == "reasoning"] == REASONING
    assert events[-1].json()["type"] == "upstream_error"
    assert run_positions([e.id for e in events])[1] == list(range(len(events)))
    assert len(upstream_log(reasoning_upstream)) == 1  # the reply had begun: no second try spliced in


@pytest.mark.parametrize("pieces", [1, 4, len(REASONING)])
@pytest.mark.parametrize("how", ["resume route", "EventSource reconnect"])
def test_a_stream_cut_in_the_reasoning_resumes_with_none_lost_or_doubled(
        reasoning_upstream: LiveServer, reasoning_server: LiveServer, pieces: int, how: str) -> None:
    pace(reasoning_upstream, gap_ms=150)  # 1.2 s of reasoning: the cut comes while it goes on
    before = runs_started(reasoning_server)
    query = {"message": "hi", "on_disconnect": "continue"}  # the run goes on without a listener, to be rejoined
    response, first = read_until_reasoning(reasoning_server, "/chat", pieces, params=query)
    run_id = response.headers["x-run-id"]
    assert [e.event for e in first] == ["start", *["reasoning"] * pieces]  # cut before any answer token
    resume = {"Last-Event-ID": first[-1].id or ""}
    if how == "resume route":
        rest = stream(reasoning_server, "GET", f"/chat/runs/{run_id}/stream", headers=resume)
    else:  # what an EventSource does: the same request again, with the id of the last event it saw
        rest = stream(reasoning_server, "GET", "/chat", params=query, headers=resume)
    check_chat_stream(first + rest)
    assert runs_started(reasoning_server) == before + 1  # the rejoin joined the run: no second generation
    assert len(upstream_log(reasoning_upstream)) == 1


# --- the raw-text variants -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "params"), [("/chat-token", {"message": "hi"}),
                                              ("/chat-buffered", {"message": "hi", "buffer_size": 3})])
def test_raw_variants_send_reasoning_as_its_own_event(reasoning_server: LiveServer, path: str,
                                                      params: dict[str, Any]) -> None:
    response = httpx.post(reasoning_server.url + path, params=params, timeout=60)
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    positions = run_positions([e.id for e in events])[1]
    assert positions == sorted(set(positions)), "ids strictly increasing"
    kinds = [e.event for e in events]
    reasoning = [e.data for e in events if e.event == "reasoning"]
    answer = [e.data for e in events if e.event == "message"]
    assert kinds == ["reasoning"] * len(reasoning) + ["message"] * len(answer) + ["done"]
    assert events[-1].data == "Completed"
    # The raw pieces (a newline survives as data: lines); the answer's plain data: lines hold the answer alone.
    assert "".join(reasoning) == "".join(REASONING) and "".join(answer) == "".join(ANSWER)
    if path == "/chat-token":
        assert (reasoning, answer) == (REASONING, ANSWER)
    assert not any("<img" in text or "用户" in text for text in answer)


# --- /v1 -------------------------------------------------------------------------------------------------------

def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_v1_stream_has_reasoning_content_chunks_then_content_and_usage(reasoning_upstream: LiveServer,
                                                                       reasoning_server: LiveServer) -> None:
    chunks = list(sdk(reasoning_server).chat.completions.create(
        model="conversation", messages=USER, stream=True, stream_options={"include_usage": True},
        reasoning_effort="low"))
    role, *pieces, finish, usage = chunks
    assert role.choices[0].delta.role == "assistant"
    deltas = [chunk.choices[0].delta for chunk in pieces]
    # The SDK keeps a field it does not know (reasoning_content) in the delta's extras.
    assert [(delta.model_extra or {}).get("reasoning_content") for delta in deltas] == [
        *REASONING, *[None] * len(ANSWER)]
    assert [getattr(delta, "reasoning_content", None) for delta in deltas[:len(REASONING)]] == REASONING
    assert [delta.content for delta in deltas] == [*[None] * len(REASONING), *ANSWER]
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == {
        key: USAGE[key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert usage.usage.completion_tokens_details is not None
    assert usage.usage.completion_tokens_details.reasoning_tokens == len(REASONING)
    [sent] = upstream_log(reasoning_upstream)
    assert sent["reasoning_effort"] == "low"  # passed on
    assert sent["stream_options"] == {"include_usage": True}


async def test_v1_completion_has_the_reasoning_in_its_message(reasoning_server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{reasoning_server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    async with client:
        completion = await client.chat.completions.create(model="conversation", messages=USER)
    [choice] = completion.choices
    assert choice.message.content == "".join(ANSWER)
    assert getattr(choice.message, "reasoning_content", None) == "".join(REASONING)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        USAGE["prompt_tokens"], USAGE["completion_tokens"], USAGE["total_tokens"])
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == len(REASONING)


def test_v1_completion_of_a_model_without_reasoning_has_null_reasoning_content(plain_server: LiveServer) -> None:
    response = httpx.post(f"{plain_server.url}/v1/chat/completions", timeout=60,
                          json={"model": "conversation", "messages": USER})
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert message["content"] == "".join(ANSWER)
    assert "reasoning_content" in message and message["reasoning_content"] is None


# --- LangServe -------------------------------------------------------------------------------------------------

def test_langserve_stream_events_carry_the_reasoning_in_additional_kwargs(reasoning_server: LiveServer) -> None:
    response = httpx.post(reasoning_server.url + "/conversation/stream_events", timeout=60,
                          json={"input": {"messages": USER}})
    assert response.status_code == 200, response.text
    chunks = [e.json()["data"]["chunk"] for e in parse_sse(response.text)
              if e.event == "data" and e.json()["event"] == "on_chat_model_stream"]
    reasoning = [chunk["additional_kwargs"].get("reasoning_content") for chunk in chunks]
    assert "".join(piece for piece in reasoning if piece) == "".join(REASONING)
    assert "".join(chunk["content"] for chunk in chunks) == "".join(ANSWER)
    # The reasoning comes first: no chunk with reasoning after the first with answer text.
    first_answer = next(i for i, chunk in enumerate(chunks) if chunk["content"])
    assert not any(reasoning[first_answer:])


def test_langserve_string_outputs_are_the_answer_alone(reasoning_server: LiveServer) -> None:
    given = {"input": {"message": "hi", "system_prompt": "Think first."}}
    invoked = httpx.post(reasoning_server.url + "/system-prompt/invoke", json=given, timeout=60)
    assert invoked.status_code == 200, invoked.text
    assert invoked.json()["output"] == "".join(ANSWER)
    streamed = httpx.post(reasoning_server.url + "/system-prompt/stream", json=given, timeout=60)
    assert streamed.status_code == 200, streamed.text
    assert "".join(e.json() for e in parse_sse(streamed.text) if e.event == "data") == "".join(ANSWER)
