"""chains.common.errors: the one error model without a web framework. Every type has a status in the one table;
the body every refusal has, and its OpenAI rendering; `describe_failure`, which names an exception for a client
without its text, and logs under an id what it cannot name."""

from __future__ import annotations

import json
import logging
import re
from typing import get_args

import httpx
import openai
import pytest
from pydantic import ValidationError

from chains.common.errors import (
    KIND_OF_STATUS,
    RETRY_LATER,
    STATUS_OF,
    ErrorBody,
    ErrorType,
    Failure,
    ModelOverloadedError,
    describe_failure,
    error_body,
    openai_error_body,
    openai_error_type,
    openai_param,
    speaks_openai,
)

TYPES = get_args(ErrorType)
SECRET = "/home/app/.env sk-live-123"  # what an exception's text may hold and a client must never see


# --- the types and the status table ----------------------------------------------------------------------------

def test_every_error_type_has_a_status_in_the_one_table_and_the_table_no_other_entry() -> None:
    assert len(set(TYPES)) == len(TYPES)
    assert set(STATUS_OF) == set(TYPES)
    assert all(400 <= status <= 599 for status in STATUS_OF.values())


def test_the_types_to_retry_later_are_types_whose_status_means_later() -> None:
    assert RETRY_LATER.issubset(TYPES)
    assert {STATUS_OF[kind] for kind in RETRY_LATER} == {429, 503}  # Retry-After means something on these


def test_a_librarys_status_is_named_by_a_type_of_that_status() -> None:
    for status, kind in KIND_OF_STATUS.items():
        assert STATUS_OF[kind] == status


# --- the body, in our shape and in OpenAI's --------------------------------------------------------------------

def test_the_body_is_error_and_type_and_an_id_only_when_there_is_one() -> None:
    assert error_body("not_found", "no such run") == {"error": "no such run", "type": "not_found"}
    with_id = error_body("internal_error", "internal error; the server logged it as 0a1b", "0a1b")
    assert with_id == {"error": "internal error; the server logged it as 0a1b", "type": "internal_error", "id": "0a1b"}
    for body in (error_body("timeout", "late"), with_id):
        assert ErrorBody.model_validate(body).model_dump(exclude_none=True) == body  # the documented model
    with pytest.raises(ValidationError):
        ErrorBody.model_validate({"error": "x", "type": "no_such_type"})


@pytest.mark.parametrize(("status", "openai_type"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (405, "invalid_request_error"), (408, "invalid_request_error"),
    (413, "invalid_request_error"), (429, "rate_limit_error"), (431, "invalid_request_error"),
    (500, "server_error"), (502, "server_error"), (503, "server_error"), (504, "server_error"),
])
def test_openais_type_is_the_coarse_class_of_the_status(status: int, openai_type: str) -> None:
    assert openai_error_type(status) == openai_type


def test_the_openai_body_keeps_our_type_as_its_code() -> None:
    assert openai_error_body(429, "too_many_streams", "slow down") == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "too_many_streams"}}
    assert openai_error_body(400, "invalid_body", "n: only 1", "n")["error"]["param"] == "n"


@pytest.mark.parametrize(("path", "openai"), [
    ("/v1", True), ("/v1/", True), ("/v1/chat/completions", True), ("/v1/models/conversation", True),
    ("/v1x", False), ("/v10/models", False), ("/chat", False), ("/", False), ("", False), ("/api/v1/models", False),
])
def test_only_the_v1_paths_speak_openai(path: str, openai: bool) -> None:
    assert speaks_openai(path) is openai


def test_openai_param_names_a_field_as_openai_does() -> None:
    assert openai_param(("body", "messages", 0, "content")) == "messages[0].content"
    assert openai_param(("body", "n")) == "n"
    assert openai_param(("body",)) is None and openai_param(()) is None
    assert openai_param(None) is None
    assert openai_param(("body", "messages", 2, "content", 1, "text")) == "messages[2].content[1].text"
    assert openai_param(("query", "stream_options", "x")) == "stream_options.x"


# --- describe_failure -----------------------------------------------------------------------------------------

REQUEST = httpx.Request("POST", "http://upstream/v1/chat/completions")


def upstream_answer(status: int) -> httpx.Response:
    return httpx.Response(status, request=REQUEST, json={"error": {"message": SECRET}})


@pytest.mark.parametrize(("exc", "kind", "message"), [
    (ModelOverloadedError(40), "overloaded", "the local model is busy: 40 requests already waiting"),
    # A timeout is a connection error to the SDK: it must still be told as a timeout.
    (openai.APITimeoutError(REQUEST), "timeout", "the upstream model did not answer in time"),
    (httpx.ReadTimeout(SECRET, request=REQUEST), "timeout", "the upstream model did not answer in time"),
    (openai.RateLimitError(SECRET, response=upstream_answer(429), body=None), "rate_limited",
     "the upstream model is rate limited (HTTP 429)"),
    (openai.AuthenticationError(SECRET, response=upstream_answer(401), body=None), "upstream_auth",
     "the upstream model refused the credentials (HTTP 401)"),
    (openai.PermissionDeniedError(SECRET, response=upstream_answer(403), body=None), "upstream_auth",
     "the upstream model refused the credentials (HTTP 403)"),
    (openai.InternalServerError(SECRET, response=upstream_answer(500), body=None), "upstream_error",
     "the upstream model failed (HTTP 500)"),
    (openai.BadRequestError(SECRET, response=upstream_answer(400), body=None), "upstream_error",
     "the upstream model failed (HTTP 400)"),
    (openai.APIConnectionError(message=SECRET, request=REQUEST), "upstream_error", "cannot reach the upstream model"),
    (httpx.RemoteProtocolError(SECRET, request=REQUEST), "upstream_error", "the upstream stream broke off"),
    (json.JSONDecodeError(SECRET, "{", 1), "upstream_error", "the upstream model sent a malformed response"),
    (openai.APIResponseValidationError(upstream_answer(200), None, message=SECRET), "upstream_error",
     "the upstream model sent a malformed response"),
])
def test_a_failure_it_can_name_gets_its_type_and_a_message_without_the_exceptions_text(
        exc: BaseException, kind: ErrorType, message: str) -> None:
    failure = describe_failure(exc)
    assert failure == Failure(kind, message, None)
    assert "sk-live" not in failure.message and ".env" not in failure.message


def test_an_error_event_in_an_upstream_stream_is_an_upstream_error() -> None:
    failure = describe_failure(openai.APIError("boom", REQUEST, body={"message": "boom sk-secret", "code": "timeout"}))
    assert failure.kind == "upstream_error" and failure.message == "the upstream model failed mid-stream (timeout)"
    odd = describe_failure(openai.APIError("boom", REQUEST, body={"code": "not an identifier; sk-secret"}))
    assert odd.message == "the upstream model failed mid-stream"


def test_a_failure_without_a_name_is_logged_whole_under_an_id_and_only_the_id_is_told(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="chains.common.errors"):
        failure = describe_failure(RuntimeError(SECRET), "POST /chat")
        again = describe_failure(KeyError(SECRET))
    assert failure.kind == "internal_error" and failure.error_id is not None
    assert re.fullmatch(r"[0-9a-f]{12}", failure.error_id)
    assert failure.message == f"internal error; the server logged it as {failure.error_id}"
    assert again.error_id != failure.error_id  # one id per failure
    [logged, _] = caplog.records
    assert logged.getMessage() == f"POST /chat failed (error id {failure.error_id})"
    assert logged.exc_info is not None and str(logged.exc_info[1]) == SECRET  # the log has it all


def test_the_overloaded_error_keeps_how_many_wait() -> None:
    exc = ModelOverloadedError(7)
    assert isinstance(exc, RuntimeError) and exc.waiting == 7


def test_a_failure_without_a_name_is_logged_on_one_line_whatever_its_path(caplog: pytest.LogCaptureFixture) -> None:
    """`what` holds the request's path, percent-decoded: `%0A` is a real newline a client chooses."""
    with caplog.at_level(logging.ERROR, logger="chains.common.errors"):
        describe_failure(RuntimeError("boom"), "POST /x\nINFO stream end run_id=FAKE ending=done")
    message = caplog.records[-1].getMessage()
    assert "\n" not in message and "\\n" in message and message.startswith("POST /x")
