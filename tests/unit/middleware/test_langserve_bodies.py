"""chains.middleware.langserve_bodies: LangServe's bodies checked before LangServe sees them — config keys
(Python's and LangChain.js's client defaults accepted, anything else named), batch size, body shapes, lone
surrogates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chains.common.scope import MODEL_RUNS
from chains.middleware.langserve_bodies import LangServeBodies, config_problem
from tests.support.asgi import Client, Inner, call, scope


async def post(path: str, body: Any, max_batch_inputs: int = 4) -> tuple[Any, Inner]:
    inner = Inner()
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = await call(LangServeBodies(inner, max_batch_inputs=max_batch_inputs), scope(path=path), Client(raw))
    return answer, inner


def refusal(loc: list[Any], msg: str) -> dict[str, Any]:
    return {"detail": [{"loc": loc, "msg": msg, "type": "value_error"}]}


async def test_a_plain_invoke_reaches_langserve_with_its_body_intact() -> None:
    body = {"input": "hi", "config": {"tags": ["a"], "metadata": {"k": 1}, "run_name": "x"}, "kwargs": {}}
    answer, inner = await post("/single-turn/invoke", body)
    assert answer.status == 200 and json.loads(inner.calls[0]["body"]) == body


@pytest.mark.parametrize("config", [
    # Python's RemoteRunnable (langchain-core's ensure_config, as sent)
    {"tags": [], "metadata": {}, "callbacks": None, "recursion_limit": 25, "configurable": {}},
    # LangChain.js 0.3
    {"recursionLimit": 25, "runName": "chain", "maxConcurrency": None},
    {"max_concurrency": None}, {},
])
async def test_the_clients_default_configs_are_accepted(config: dict[str, Any]) -> None:
    answer, inner = await post("/conversation/stream", {"input": {"messages": []}, "config": config})
    assert answer.status == 200 and inner.called


@pytest.mark.parametrize(("config", "message"), [
    ({"recursion_limit": 5}, "config keys not allowed: recursion_limit"),
    ({"recursionLimit": 100}, "config keys not allowed: recursionLimit"),
    ({"configurable": {"model": "gpt-4"}}, "config keys not allowed: configurable"),
    ({"max_concurrency": 4, "callbacks": ["x"]}, "config keys not allowed: callbacks, max_concurrency"),
    ({"run_id": "abc"}, "config keys not allowed: run_id"),
])
async def test_config_keys_that_would_be_dropped_quietly_are_refused_by_name(config: dict[str, Any],
                                                                             message: str) -> None:
    answer, inner = await post("/single-turn/invoke", {"input": "hi", "config": config})
    assert answer.status == 422 and not inner.called
    (detail,) = answer.json()["detail"]
    assert detail["loc"] == ["body", "config"] and detail["msg"].startswith(message + " (accepted: tags, ")


@pytest.mark.parametrize(("config", "message"), [
    ({"tags": "a"}, "config: tags must be a list of strings"),
    ({"tags": ["a", 1]}, "config: tags must be a list of strings"),
    ({"metadata": []}, "config: metadata must be an object"),
    ({"run_name": 3}, "config: run_name must be a string"),
    ({"runName": ["x"]}, "config: runName must be a string"),
])
async def test_tracing_labels_must_be_well_formed(config: dict[str, Any], message: str) -> None:
    answer, _ = await post("/single-turn/invoke", {"input": "hi", "config": config})
    assert answer.status == 422 and answer.json() == refusal(["body", "config"], message)


@pytest.mark.parametrize(("body", "loc", "message"), [
    (b"not json", ["body"], "the body is not valid JSON"),
    (b"[1, 2]", ["body"], "the body must be a JSON object"),
    ({"input": "hi", "config": None}, ["body", "config"], "config: must be an object"),
    ({"input": "hi", "config": [{}]}, ["body", "config"], "config: must be an object"),
    ({"input": "hi", "kwargs": None}, ["body", "kwargs"], "kwargs: must be an object"),
    ({"input": "hi", "kwargs": [{}]}, ["body", "kwargs"], "kwargs: must be an object"),
])
async def test_shapes_langserve_turns_into_a_500_are_a_422(body: Any, loc: list[str], message: str) -> None:
    answer, inner = await post("/single-turn/invoke", body)
    assert answer.status == 422 and answer.json() == refusal(loc, message) and not inner.called


async def test_a_batch_is_a_list_of_at_most_max_batch_inputs_and_its_size_goes_in_the_scope() -> None:
    answer, inner = await post("/single-turn/batch", {"inputs": ["a", "b", "c"], "config": [{}, {}, {}],
                                                      "kwargs": [{}, {}, {}]})
    assert answer.status == 200 and inner.calls[0]["scope"][MODEL_RUNS] == 3
    _, inner = await post("/single-turn/batch/", {"inputs": []})
    assert inner.calls[0]["scope"][MODEL_RUNS] == 1  # an empty batch still counts as a request
    too_many, inner = await post("/single-turn/batch", {"inputs": ["x"] * 5})
    assert too_many.status == 422 and not inner.called
    assert too_many.json() == refusal(["body", "inputs"], "inputs: 5 inputs, more than MAX_BATCH_INPUTS=4")
    letters, _ = await post("/single-turn/batch", {"inputs": "abc"})  # LangServe would batch it letter by letter
    assert letters.json() == refusal(["body", "inputs"], "inputs: must be a list of inputs")
    configs, _ = await post("/single-turn/batch", {"inputs": ["a"], "config": [{"recursion_limit": 1}]})
    assert configs.status == 422 and configs.json()["detail"][0]["loc"] == ["body", "config"]
    bad, _ = await post("/single-turn/batch", {"inputs": ["a"], "config": [None]})
    assert bad.json() == refusal(["body", "config"], "config: must be an object or a list of objects")


def test_the_pure_functions() -> None:
    assert config_problem([{}, {"tags": ["t"]}]) is None
    assert config_problem([{}, {"recursion_limit": 26}]).startswith("config keys not allowed: recursion_limit")


@pytest.mark.parametrize(("method", "path"), [("GET", "/single-turn/input_schema"), ("POST", "/chat"),
                                              ("POST", "/single-turn/config_schema"), ("GET", "/health")])
async def test_other_requests_pass_unread(method: str, path: str) -> None:
    inner, client = Inner(), Client(b"not json")
    answer = await call(LangServeBodies(inner, max_batch_inputs=1), scope(method=method, path=path), client)
    assert answer.status == 200 and inner.called
