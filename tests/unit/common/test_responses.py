"""chains.common.responses: the error model as HTTP responses. `refuse`, the one way a request is refused, renders
by the path it answers (ours, or OpenAI's on /v1); ERROR_RESPONSES, what every operation declares, is derived from
the one status table; the exception handlers answer every failure in the one shape, never with a traceback."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any, get_args

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from chains.common.errors import RETRY_LATER, STATUS_OF, ErrorBody, ErrorType, ModelOverloadedError
from chains.common.responses import (
    ERROR_RESPONSES,
    ErrorResponse,
    failure_response,
    install_error_handlers,
    invalid,
    openai_invalid,
    refuse,
)
from tests.support.asgi import call, scope

SECRET = "/srv/app/secret.py sk-live-456"


# --- refuse, and its two renderings ----------------------------------------------------------------------------

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


@pytest.mark.parametrize("kind", get_args(ErrorType))
async def test_retry_after_is_sent_exactly_for_the_kinds_to_retry_later(kind: ErrorType) -> None:
    answer = await call(refuse(STATUS_OF[kind], kind, "no", headers={"X-Extra": "kept"}), scope())
    assert answer.status == STATUS_OF[kind] and answer.headers["x-extra"] == "kept"
    assert answer.headers.get("retry-after") == ("1" if kind in RETRY_LATER else None)


async def test_the_id_of_an_internal_error_is_in_our_shape_only() -> None:
    refusal = refuse(500, "internal_error", "internal error; the server logged it as abc", error_id="abc")
    assert isinstance(refusal, ErrorResponse)
    assert (await call(refusal, scope())).json()["id"] == "abc"
    assert "id" not in (await call(refusal, scope(path="/v1/models"))).json()["error"]


async def test_invalid_is_fastapis_documented_422() -> None:
    answer = await call(invalid(["body", "config"], "unknown key 'x'"), scope())
    assert answer.status == 422
    assert answer.json() == {"detail": [{"loc": ["body", "config"], "msg": "unknown key 'x'", "type": "value_error"}]}


# --- ERROR_RESPONSES, derived from the one table ---------------------------------------------------------------

def kinds_in(description: str) -> list[str]:
    return re.split(r", | or ", description.removesuffix(" (Retry-After)"))


def test_each_declared_status_lists_exactly_the_types_that_have_it() -> None:
    expected: defaultdict[int, list[str]] = defaultdict(list)
    for kind in get_args(ErrorType):
        expected[STATUS_OF[kind]].append(kind)
    del expected[405]  # routing answers a method no operation has: no operation declares it
    assert sorted(ERROR_RESPONSES) == sorted(expected)  # type: ignore[type-var]
    for status, spec in ERROR_RESPONSES.items():
        assert kinds_in(spec["description"]) == expected[status]  # type: ignore[index]
        assert spec["model"] is ErrorBody


def test_a_status_with_a_kind_to_retry_later_says_retry_after() -> None:
    for status, spec in ERROR_RESPONSES.items():
        retry = any(kind in RETRY_LATER for kind in kinds_in(spec["description"]))
        assert spec["description"].endswith(" (Retry-After)") == retry, status
    assert ERROR_RESPONSES[404]["description"] == "not_found"
    assert ERROR_RESPONSES[408]["description"] == "header_timeout, body_timeout or body_too_slow"


# --- failures and validation errors as responses ---------------------------------------------------------------

async def test_a_failure_is_answered_with_the_status_of_its_type_and_no_exception_text(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        busy = await call(failure_response(ModelOverloadedError(3), "POST /chat"), scope())
        unknown = await call(failure_response(RuntimeError(SECRET), "POST /chat"), scope())
    assert (busy.status, busy.headers["retry-after"]) == (503, "1")
    assert busy.json() == {"error": "the local model is busy: 3 requests already waiting", "type": "overloaded"}
    assert unknown.status == 500 and unknown.json()["type"] == "internal_error" and "id" in unknown.json()
    assert b"secret" not in unknown.body and b"Traceback" not in unknown.body
    messages = [record.getMessage() for record in caplog.records]
    assert "POST /chat failed: the local model is busy: 3 requests already waiting" in messages
    assert f"POST /chat failed (error id {unknown.json()['id']})" in messages


@pytest.mark.parametrize(("errors", "message", "param"), [
    ([{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error"}],
     "the body is not valid JSON (JSON decode error)", None),
    ([{"type": "extra_forbidden", "loc": ("body", "foo"), "msg": "Extra inputs are not permitted"}],
     "Unrecognized request argument supplied: foo", "foo"),
    ([{"type": "value_error", "loc": ("body", "n"), "msg": "Value error, only 1 is supported: one choice"},
      {"type": "missing", "loc": ("body", "model"), "msg": "Field required"}],
     "n: only 1 is supported: one choice", "n"),  # the first error only
    ([{"type": "value_error", "loc": ("body", "n"), "msg": "n: said already"}], "n: said already", "n"),
    ([{"type": "missing", "loc": ("body",), "msg": "Field required"}], "Field required", None),
    (["a bare string"], "a bare string", None),
    ([], "invalid request", None),
])
async def test_validation_errors_are_openais_400_naming_the_first_field(
        errors: list[Any], message: str, param: str | None) -> None:
    answer = await call(openai_invalid(errors), scope(path="/v1/chat/completions"))
    assert answer.status == 400
    assert answer.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": "invalid_body"}}


# --- the exception handlers, on an app ------------------------------------------------------------------------

class Body(BaseModel):
    n: int


def app_with_handlers() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/thing")
    @app.post("/v1/thing")
    async def thing(body: Body) -> dict[str, int]:
        return {"n": body.n}

    @app.get("/fails")
    async def fails() -> None:
        raise RuntimeError(SECRET)

    @app.get("/busy")
    async def busy() -> None:
        raise ModelOverloadedError(9)

    @app.get("/http/{status}")
    async def http(status: int, detail: str = "refused here") -> None:
        raise HTTPException(status, detail=detail if detail != "dict" else {"why": "ünïcode"})  # type: ignore[arg-type]

    return app


@pytest.fixture(scope="module")
def client() -> httpx.AsyncClient:
    # Starlette re-raises a route's exception after its handler answered: the answer is what a client gets.
    transport = httpx.ASGITransport(app=app_with_handlers(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_a_routes_unexpected_failure_is_a_500_with_an_id_and_none_of_its_text(client: httpx.AsyncClient) -> None:
    answer = await client.get("/fails")
    body = answer.json()
    assert answer.status_code == 500 and set(body) == {"error", "type", "id"} and body["type"] == "internal_error"
    assert "secret" not in answer.text and "Traceback" not in answer.text and "RuntimeError" not in answer.text
    busy = await client.get("/busy")  # a failure with a name answers its status
    assert busy.status_code == 503 and busy.json()["type"] == "overloaded" and busy.headers["retry-after"] == "1"


async def test_routing_and_library_refusals_are_in_the_one_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    assert (missing.status_code, missing.json()) == (404, {"error": "Not Found", "type": "not_found"})
    wrong_method = await client.get("/thing")
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"  # the library's headers are kept
    teapot = await client.get("/http/418")
    assert (teapot.status_code, teapot.json()) == (418, {"error": "refused here", "type": "bad_request"})
    structured = await client.get("/http/409", params={"detail": "dict"})
    assert structured.json() == {"error": '{"why": "ünïcode"}', "type": "bad_request"}
    library_422 = await client.get("/http/422", params={"detail": "batch config mismatch"})
    assert library_422.json() == {"detail": [{"loc": ["body"], "msg": "batch config mismatch", "type": "value_error"}]}
    library_500 = await client.get("/http/502", params={"detail": SECRET})
    assert library_500.status_code == 500 and library_500.json()["type"] == "internal_error"
    assert "secret" not in library_500.text  # a library's detail stays in the log


async def test_a_validation_error_is_fastapis_422_here_and_openais_400_on_v1(client: httpx.AsyncClient) -> None:
    ours = await client.post("/thing", json={"n": "many"})
    assert ours.status_code == 422
    [error] = ours.json()["detail"]
    assert error["loc"] == ["body", "n"] and error["type"] == "int_parsing" and set(error) == {"loc", "msg", "type"}
    theirs = await client.post("/v1/thing", json={"n": "many"})
    assert theirs.status_code == 400
    assert theirs.json()["error"]["param"] == "n" and theirs.json()["error"]["code"] == "invalid_body"
    assert theirs.json()["error"]["message"].startswith("n: ")
