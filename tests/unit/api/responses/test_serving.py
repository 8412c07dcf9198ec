"""chains.api.responses in-process: `POST /v1/responses` through the whole app (httpx's ASGI transport, no
socket) — the Response, its stream (every frame validated against the `openai` SDK's types), the refusals in
OpenAI's shape — and, with a model held at a gate (so that a run is deterministically still generating), the
background responses: retrieved as they stand, resumed after a sequence number, cancelled, and a waiting client
that leaves."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from chains.api.responses.protocol import STRIDE, frames_of
from chains.api.responses.router import responses_router
from chains.api.responses.serving import ResponsesServing
from chains.api.runs.serving import RunServing
from chains.common.responses import install_error_handlers
from chains.common.scope import holds_a_stream, runs_the_model
from chains.common.settings import load_settings
from chains.middleware.cancel_when_client_leaves import CancelWhenClientLeaves
from chains.models.base import StreamEnd
from chains.models.fake import ScriptedChatModel, scripted_reasoning, scripted_tokens
from chains.runnables.chat import build_chains
from chains.streaming.run import Run
from chains.streaming.store import MemoryRunStore, RunLimits
from tests.support.asgi import Client, call, scope
from tests.unit.api.app import client

BODY = {"model": "conversation", "input": "hi"}
REPLY = "".join(scripted_tokens(20))
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def events_of(body: bytes) -> list[Any]:
    """The stream's frames as the SDK's event types (strict validation: a field it lacks fails here)."""
    return [STREAM_EVENT.validate_python(frame) for frame in frames_of(body)]


# --- the whole app -----------------------------------------------------------------------------------------------

async def test_a_response_is_the_whole_reply_with_its_usage_and_its_run() -> None:
    async with client() as http:
        answer = await http.post("/v1/responses", json={**BODY, "instructions": "be brief", "metadata": {"k": "v"}})
        run_id = answer.headers["x-run-id"]
        retrieved = await http.get(f"/v1/responses/resp_{run_id}")
        run = await http.get(f"/chat/runs/{run_id}")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    response = Response.model_validate(answer.json())
    assert response.id == f"resp_{run_id}" and response.status == "completed" and response.output_text == REPLY
    assert (response.model, response.instructions, response.metadata) == ("conversation", "be brief", {"k": "v"})
    assert response.usage is not None and response.usage.output_tokens == 20
    assert response.usage.total_tokens == response.usage.input_tokens + 20
    assert retrieved.json() == answer.json()  # kept as its run: the same Response later
    assert run.json()["status"] == "completed"


async def test_a_stream_is_openais_events_in_order_and_its_replay_and_retrieval_agree() -> None:
    async with client(fake_reasoning_tokens=4, fake_reply_tokens=3) as http:
        answer = await http.post("/v1/responses", json={**BODY, "stream": True})
        run_id = answer.headers["x-run-id"]
        replay = await http.get(f"/v1/responses/resp_{run_id}", params={"stream": "true"})
        retrieved = (await http.get(f"/v1/responses/resp_{run_id}")).json()
    assert answer.status_code == 200 and answer.headers["content-type"] == "text/event-stream"
    events = events_of(answer.content)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_text.delta")
    assert [e.delta for e in events if e.type == "response.reasoning_text.delta"] == scripted_reasoning(4)
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == scripted_tokens(3)
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers))  # unique and increasing, as the SDK filters on them
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.usage.output_tokens_details.reasoning_tokens == 4
    assert replay.content == answer.content
    assert retrieved == frames_of(answer.content)[-1]["response"]


async def test_starting_after_resumes_after_that_sequence_number() -> None:
    async with client(fake_reply_tokens=5) as http:
        answer = await http.post("/v1/responses", json={**BODY, "stream": True})
        response_id = "resp_" + answer.headers["x-run-id"]
        everything = frames_of(answer.content)
        numbers = [frame["sequence_number"] for frame in everything]
        # Within the first token's event (it opens the message), at its last frame, and in the terminal one.
        for after in (0, STRIDE + 1, STRIDE + 2, numbers[-3]):
            resumed = await http.get(f"/v1/responses/{response_id}",
                                     params={"stream": "true", "starting_after": after})
            assert resumed.status_code == 200
            assert frames_of(resumed.content) == [f for f in everything if f["sequence_number"] > after]
        at_the_end = await http.get(f"/v1/responses/{response_id}",
                                    params={"stream": "true", "starting_after": numbers[-1]})
        beyond = await http.get(f"/v1/responses/{response_id}",
                                params={"stream": "true", "starting_after": numbers[-1] + 2 * STRIDE})
    assert at_the_end.status_code == 200 and at_the_end.content == b""
    assert beyond.status_code == 400 and beyond.json()["error"]["param"] == "starting_after"


async def test_a_failure_before_the_first_token_is_an_http_error_and_after_it_response_failed() -> None:
    async with client(fake_fail_after=0) as http:
        for stream in (False, True):
            failed = await http.post("/v1/responses", json={**BODY, "stream": stream})
            assert failed.status_code == 500
            assert failed.json()["error"]["code"] == "internal_error" and "Traceback" not in failed.text
    async with client(fake_fail_after=3) as http:
        streamed = await http.post("/v1/responses", json={**BODY, "stream": True})
        retrieved = await http.get("/v1/responses/resp_" + streamed.headers["x-run-id"])
    last = events_of(streamed.content)[-1]
    assert last.type == "response.failed" and last.response.status == "failed"
    assert last.response.output_text == "".join(scripted_tokens(3)) and last.response.error.code == "server_error"
    assert retrieved.json()["status"] == "failed"


@pytest.mark.parametrize(("body", "status", "param", "message"), [
    ({**BODY, "tools": [{"type": "function", "name": "f"}]}, 400, "tools", None),
    ({**BODY, "previous_response_id": "resp_x"}, 400, "previous_response_id", None),
    ({**BODY, "frobnicate": 1}, 400, "frobnicate", "Unrecognized request argument supplied: frobnicate"),
    ({**BODY, "model": "gpt-4o"}, 404, "model", None),
    ({**BODY, "model": "single-turn", "instructions": "be brief"}, 400, "instructions",
     "model single-turn takes no instructions; use model system-prompt or conversation"),
    ({"model": "system-prompt", "input": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                          {"role": "user", "content": "c"}]}, 400, "input", None),
    ({**BODY, "input": "x" * 11}, 400, "input", None),
    ({**BODY, "reasoning": {"effort": "low"}}, 400, "reasoning", None),
])
async def test_a_bad_request_is_refused_in_openais_shape_naming_the_field(
        body: dict[str, Any], status: int, param: str, message: str | None) -> None:
    async with client(max_input_chars=10) as http:
        answer = await http.post("/v1/responses", json=body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    if message is not None:
        assert error["message"] == message
    assert "x-run-id" not in answer.headers  # refused before any run


async def test_an_unknown_or_foreign_id_is_a_404_naming_the_response() -> None:
    async with client() as http:
        completion = await http.post("/v1/chat/completions", json={
            "model": "conversation", "messages": [{"role": "user", "content": "hi"}]})
        foreign = "resp_" + completion.headers["x-run-id"]  # a run, but not a response's
        answers = [await http.get(f"/v1/responses/{foreign}"), await http.get("/v1/responses/resp_" + "a" * 22),
                   await http.post("/v1/responses/resp_" + "a" * 22 + "/cancel")]
        malformed = await http.get("/v1/responses/chatcmpl-1")
    for answer in answers:
        assert answer.status_code == 404
        assert answer.json()["error"]["param"] == "response_id" and answer.json()["error"]["code"] == "not_found"
    assert malformed.status_code == 400 and malformed.json()["error"]["param"] == "response_id"


async def test_a_response_is_seen_only_with_the_key_that_started_it() -> None:
    async with client(api_keys="sk-one-0123456789,sk-two-0123456789") as http:
        one, two = ({"Authorization": f"Bearer sk-{name}-0123456789"} for name in ("one", "two"))
        answer = await http.post("/v1/responses", json=BODY, headers=one)
        response_id = answer.json()["id"]
        assert (await http.get(f"/v1/responses/{response_id}", headers=one)).status_code == 200
        assert (await http.get(f"/v1/responses/{response_id}", headers=two)).status_code == 404
        assert (await http.post(f"/v1/responses/{response_id}/cancel", headers=two)).status_code == 404


def test_a_create_runs_the_model_and_a_read_or_cancel_does_not() -> None:
    # What the model's admission queue and MAX_STREAMS_PER_CLIENT count (chains.middleware).
    assert runs_the_model("/v1/responses") and holds_a_stream("/v1/responses")
    for path in ("/v1/responses/resp_" + "a" * 22, "/v1/responses/resp_" + "a" * 22 + "/cancel"):
        assert not runs_the_model(path)


# --- background, with a model held at a gate ------------------------------------------------------------------

class Gated(ScriptedChatModel):
    """Says `before` tokens, waits for `gate`, says the rest of `reply_tokens`, and ends with `finish`."""

    gate: Any = None
    before: int = 2
    finish: str = "stop"

    async def astream_text(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        tokens = scripted_tokens(self.reply_tokens)
        for i, token in enumerate(tokens):
            if i == self.before:
                await self.gate.wait()
            yield token
        yield StreamEnd(self.finish, 1, len(tokens), None)


def gated_app(model: Gated) -> tuple[FastAPI, MemoryRunStore]:
    store = MemoryRunStore(RunLimits())
    settings = load_settings(_env_file=None, chat_provider="fake")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(responses_router(ResponsesServing(build_chains(model), settings, RunServing(store, 15))))
    return app, store


def http_of(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def until(check: Any) -> None:
    """Polls `check` (a state the run reaches by itself), never asserting on elapsed time."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("never reached")


def live_run(store: MemoryRunStore, run_id: str) -> Run:
    return store.live.get(run_id) or store.finished[run_id]


async def test_a_background_response_answers_at_once_and_is_retrieved_as_it_stands_then_as_it_ended() -> None:
    model = Gated(gate=asyncio.Event(), reply_tokens=5)
    app, store = gated_app(model)
    async with http_of(app) as http:
        started = await http.post("/v1/responses", json={**BODY, "background": True})
        response = Response.model_validate(started.json())
        assert started.status_code == 200 and response.status == "in_progress" and response.background
        run = live_run(store, started.headers["x-run-id"])
        assert run.listeners == 0 and run.on_disconnect == "continue"  # nobody listens, and it goes on
        await until(lambda: run.next_seq == 3)  # the start and the two tokens before the gate
        midway = Response.model_validate((await http.get(f"/v1/responses/{response.id}")).json())
        assert midway.status == "in_progress" and midway.output_text == "".join(scripted_tokens(2))
        following = asyncio.create_task(http.get(f"/v1/responses/{response.id}", params={"stream": "true"}))
        await until(lambda: run.listeners == 1)
        model.gate.set()
        followed = events_of((await following).content)
        ended = Response.model_validate((await http.get(f"/v1/responses/{response.id}")).json())
    assert [e.type for e in followed][:2] == ["response.created", "response.in_progress"]
    assert followed[-1].type == "response.completed"
    assert followed[-1].response.output_text == "".join(scripted_tokens(5))
    assert ended.status == "completed" and ended.output_text == "".join(scripted_tokens(5))


async def test_cancel_stops_a_background_response_and_answers_it_cancelled_with_what_it_said() -> None:
    model = Gated(gate=asyncio.Event(), reply_tokens=5)
    app, store = gated_app(model)
    async with http_of(app) as http:
        response_id = (await http.post("/v1/responses", json={**BODY, "background": True})).json()["id"]
        run = live_run(store, response_id.removeprefix("resp_"))
        await until(lambda: run.next_seq == 3)
        cancelled = await http.post(f"/v1/responses/{response_id}/cancel")
        again = await http.post(f"/v1/responses/{response_id}/cancel")
        retrieved = await http.get(f"/v1/responses/{response_id}")
        replay = await http.get(f"/v1/responses/{response_id}", params={"stream": "true"})
    assert run.status == "cancelled"
    answer = Response.model_validate(cancelled.json())
    assert answer.status == "cancelled" and answer.output_text == "".join(scripted_tokens(2))
    assert again.json() == cancelled.json() == retrieved.json()
    last = events_of(replay.content)[-1]
    assert last.type == "response.incomplete" and last.response.status == "cancelled"


async def test_a_reply_cut_at_max_output_tokens_is_incomplete() -> None:
    model = Gated(gate=asyncio.Event(), reply_tokens=3, finish="length")
    model.gate.set()
    app, _ = gated_app(model)
    async with http_of(app) as http:
        answer = Response.model_validate((await http.post("/v1/responses", json={
            **BODY, "max_output_tokens": 3})).json())
    assert answer.status == "incomplete" and answer.incomplete_details is not None
    assert answer.incomplete_details.reason == "max_output_tokens" and answer.max_output_tokens == 3


@pytest.mark.parametrize("background", [False, True])
async def test_a_client_that_leaves_while_it_waits_cancels_the_run_unless_it_is_in_the_background(
        background: bool) -> None:
    model = Gated(gate=asyncio.Event(), before=0)  # not one token: the request waits
    app, store = gated_app(model)
    body = json.dumps({**BODY, "stream": True, "background": background}).encode()
    leaving = Client(body)
    request = scope(path="/v1/responses", headers={"content-type": "application/json",
                                                   "content-length": str(len(body))})
    # The app's middleware that watches a waiting request's connection (server.py installs it).
    waiting = asyncio.create_task(call(CancelWhenClientLeaves(app), request, leaving))
    await until(lambda: bool(store.live))
    [run] = store.live.values()
    leaving.leave.set()
    await waiting
    if background:
        assert run.status == "running" and run.listeners == 0  # it goes on, to be retrieved
        model.gate.set()
        await until(lambda: run.finished)
        assert run.status == "completed"
    else:
        await until(lambda: run.finished)
        assert run.status == "cancelled"
