"""chains.middleware.answer_failures: a route's exception is a 500 with an id and no exception text (or the status
its cause names); a response that fails after it started is ended cleanly."""

from __future__ import annotations

import logging
import re

import pytest

from chains.common.errors import ModelOverloadedError
from chains.middleware.answer_failures import AnswerFailures
from tests.support.asgi import call, scope


def failing_with(exc: Exception, sent: list[dict[str, object]] = ()):  # type: ignore[assignment]
    async def route(request, receive, send):  # type: ignore[no-untyped-def]
        for message in sent:
            await send(message)
        raise exc

    return route


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}


async def test_an_unnamed_failure_is_a_500_with_an_id_the_log_has_and_no_exception_text(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        answer = await call(AnswerFailures(failing_with(RuntimeError("/secret/path sk-key-123"))), scope())
    assert answer.status == 500 and answer.complete
    body = answer.json()
    assert set(body) == {"error", "type", "id"} and body["type"] == "internal_error"
    assert re.fullmatch(r"[0-9a-f]{12}", body["id"])
    assert body["error"] == f"internal error; the server logged it as {body['id']}"
    assert b"secret" not in answer.body and b"sk-key" not in answer.body and b"RuntimeError" not in answer.body
    logged = [r for r in caplog.records if body["id"] in r.getMessage()]
    assert logged and "POST /chat" in logged[0].getMessage() and logged[0].exc_info is not None


async def test_a_named_failure_answers_the_status_of_its_cause() -> None:
    answer = await call(AnswerFailures(failing_with(ModelOverloadedError(3))), scope())
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    assert answer.json() == {"error": "the local model is busy: 3 requests already waiting", "type": "overloaded"}


async def test_a_failure_after_the_response_started_ends_it_cleanly() -> None:
    chunk = {"type": "http.response.body", "body": b"event: error\ndata: {}\n\n", "more_body": True}
    answer = await call(AnswerFailures(failing_with(RuntimeError("mid-stream"), [START, chunk])), scope())
    assert answer.messages == [START, chunk, {"type": "http.response.body", "body": b"", "more_body": False}]


async def test_a_failure_after_the_response_was_sent_adds_nothing() -> None:
    whole = [START, {"type": "http.response.body", "body": b"done", "more_body": False}]
    answer = await call(AnswerFailures(failing_with(RuntimeError("late"), whole)), scope())
    assert answer.messages == whole


async def test_other_scopes_pass_through_exceptions_and_all() -> None:
    with pytest.raises(RuntimeError):
        await call(AnswerFailures(failing_with(RuntimeError("lifespan"))), {"type": "lifespan"})


async def test_a_route_that_returns_mid_body_has_its_response_completed() -> None:
    """sse-starlette, on SIGTERM, returns from LangServe's streams without their last body message."""
    chunk = {"type": "http.response.body", "body": b"event: data\ndata: \"hi\"\n\n", "more_body": True}

    async def returns_mid_body(request, receive, send):  # type: ignore[no-untyped-def]
        await send(START)
        await send(chunk)

    answer = await call(AnswerFailures(returns_mid_body), scope())
    assert answer.messages == [START, chunk, {"type": "http.response.body", "body": b"", "more_body": False}]
