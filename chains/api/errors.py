"""The one error model. Every refusal and every failure has one body, `{"error", "type"}` (`ErrorBody`), with a
type from one list (`ErrorType`), built by one function (`refuse`); validation errors keep the shape FastAPI
documents for every operation (`{"detail": [{"loc", "msg", "type"}]}`). A stream that fails after it started
says the same in its `event: error`. Messages never hold a traceback, a path or a key: a failure without a
name answers `internal_error` with an id under which the log has the whole exception.

The OpenAI-compatible surface (`/v1`, chains.api.openai) answers the same errors in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}` (`code` is our `ErrorType`), validation errors included (as
400 naming the field in `param`). One error, two renderings: `refuse` returns an `ErrorResponse`, which picks
the rendering from the path it answers, so the middleware's refusals need not know which surface they guard."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Literal, NamedTuple

import httpx
import openai
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from chains.models.base import ModelOverloadedError

log = logging.getLogger(__name__)

ErrorType = Literal[
    # A request refused before anything ran (middleware, the request-line protocol, the routes).
    "bad_request", "forbidden", "method_not_allowed", "unauthorized", "too_many_auth_failures", "cross_origin", "body_too_large", "unsupported_media_type",
    "invalid_body", "invalid_path", "not_found", "config_hash_too_long", "too_many_streams", "too_many_connections",
    "headers_too_large", "header_timeout", "body_timeout", "body_too_slow",
    # Runs (chains.api.runs): a Last-Event-ID that names no event of the run; a run store that is full or down.
    "invalid_event_id", "run_store_full", "run_store_unavailable",
    # A generation that could not run or stopped: the status of /invoke, /batch, or a stream's `event: error`.
    "overloaded", "timeout", "upstream_error", "rate_limited", "upstream_auth", "shutdown", "internal_error",
]


class ErrorBody(BaseModel):
    """What every refusal and failure answers (a stream's `event: error` has the same fields)."""

    error: str = Field(description="what went wrong, for a person; never a traceback, path or key")
    type: ErrorType = Field(description="what went wrong, for a program")
    id: str | None = Field(None, description="internal_error only: the id under which the server logged it")


STATUS_OF: dict[ErrorType, int] = {
    "upstream_error": 502,
    "upstream_auth": 502,  # our credentials upstream are wrong: not the caller's fault, so not 401
    "rate_limited": 429,
    "overloaded": 503,
    "timeout": 504,
    "shutdown": 503,
    "run_store_full": 503,
    "run_store_unavailable": 503,
    "internal_error": 500,
}
RETRY_AFTER_SECONDS = 1
_KIND_OF_STATUS: dict[int, ErrorType] = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                                        405: "method_not_allowed"}
_RETRY_LATER: set[ErrorType] = {"overloaded", "rate_limited", "shutdown", "too_many_streams",
                                "too_many_connections", "too_many_auth_failures",
                                "run_store_full", "run_store_unavailable"}


def error_body(kind: ErrorType, message: str, error_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "type": kind}
    if error_id is not None:
        body["id"] = error_id
    return body


OPENAI_PREFIX = "/v1"


def speaks_openai(path: str) -> bool:
    """Whether `path` belongs to the OpenAI-compatible surface, whose errors take OpenAI's shape."""
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


# OpenAI's `type` is a coarse class a client can act on; our precise ErrorType goes in `code`.
_OPENAI_TYPE_OF_STATUS: dict[int, str] = {401: "authentication_error", 403: "permission_error",
                                          404: "not_found_error", 429: "rate_limit_error"}


def openai_error_type(status: int) -> str:
    if status in _OPENAI_TYPE_OF_STATUS:
        return _OPENAI_TYPE_OF_STATUS[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error_body(status: int, kind: ErrorType, message: str, param: str | None = None) -> dict[str, Any]:
    """The error in OpenAI's shape: what the `openai` SDKs parse into their exceptions (`body`, `code`, `param`)."""
    return {"error": {"message": message, "type": openai_error_type(status), "param": param, "code": kind}}


class ErrorResponse(JSONResponse):
    """A refusal, rendered when it is sent: in our shape, or in OpenAI's on the `/v1` paths. Rendering at send
    time rather than at construction lets a middleware refuse without knowing which surface it stands in front
    of; nothing is mutated, so one instance may answer any path."""

    def __init__(self, status: int, kind: ErrorType, message: str, headers: dict[str, str] | None = None,
                 error_id: str | None = None, param: str | None = None) -> None:
        self.kind, self.message, self.param = kind, message, param
        super().__init__(error_body(kind, message, error_id), status_code=status, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not speaks_openai(scope.get("path", "")):
            await super().__call__(scope, receive, send)
            return
        body = self.render(openai_error_body(self.status_code, self.kind, self.message, self.param))
        headers = [(name, str(len(body)).encode() if name == b"content-length" else value)
                   for name, value in self.raw_headers]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def refuse(status: int, kind: ErrorType, message: str, headers: dict[str, str] | None = None,
           error_id: str | None = None, param: str | None = None) -> ErrorResponse:
    """The one way a request is refused. Kinds a client should retry later carry `Retry-After`. `param` names the
    request field at fault (shown in OpenAI's shape only; ours names it in the message)."""
    if kind in _RETRY_LATER:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    return ErrorResponse(status, kind, message, headers, error_id, param)


def invalid(location: list[Any], message: str) -> JSONResponse:
    """A 422 in the shape FastAPI documents for every operation (`HTTPValidationError`)."""
    return JSONResponse({"detail": [{"loc": location, "msg": message, "type": "value_error"}]}, status_code=422)


class Failure(NamedTuple):
    """An exception as a client may see it."""

    kind: ErrorType
    message: str
    error_id: str | None = None  # internal_error only


def describe_failure(exc: BaseException, what: str = "a generation") -> Failure:
    """A client-safe type and message for an exception: no traceback, no request headers, no key. One that has
    no name here is logged in full (with `what` failed) under an id, and only the id is told."""
    match exc:
        case ModelOverloadedError():
            return Failure("overloaded", str(exc))
        case openai.APITimeoutError() | httpx.TimeoutException():
            return Failure("timeout", "the upstream model did not answer in time")
        case openai.RateLimitError():
            return Failure("rate_limited", "the upstream model is rate limited (HTTP 429)")
        case openai.AuthenticationError() | openai.PermissionDeniedError():
            return Failure("upstream_auth", f"the upstream model refused the credentials (HTTP {exc.status_code})")
        case openai.APIStatusError():
            return Failure("upstream_error", f"the upstream model failed (HTTP {exc.status_code})")
        case openai.APIConnectionError():
            return Failure("upstream_error", "cannot reach the upstream model")
        case httpx.HTTPError():
            return Failure("upstream_error", "the upstream stream broke off")
        case json.JSONDecodeError() | openai.APIResponseValidationError():
            return Failure("upstream_error", "the upstream model sent a malformed response")
        case openai.APIError():  # an `{"error": …}` event in the middle of an upstream stream
            code = exc.code if isinstance(exc.code, str) and exc.code.isidentifier() else None
            return Failure("upstream_error", "the upstream model failed mid-stream" + (f" ({code})" if code else ""))
        case _:
            error_id = secrets.token_hex(6)
            log.error("%s failed (error id %s)", what, error_id, exc_info=exc)
            return Failure("internal_error", f"internal error; the server logged it as {error_id}", error_id)



def failure_response(exc: BaseException, what: str) -> JSONResponse:
    """The answer to a request (`what`: method and path) that failed with `exc`."""
    failure = describe_failure(exc, what)
    if failure.kind != "internal_error":  # an internal error has been logged in full already
        log.warning("%s failed: %s", what, failure.message)
    return refuse(STATUS_OF[failure.kind], failure.kind, failure.message, error_id=failure.error_id)


_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
# Declared on every operation (FastAPI's `responses=`): what any route may answer besides its own 200 and 422.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "model": ErrorBody}
    for status, description in {
        400: "invalid_body, invalid_path, invalid_event_id or bad_request", 403: "forbidden or cross_origin", 404: "not_found", 401: "unauthorized (when API keys are set)",
        408: "header_timeout, body_timeout, body_too_slow", 413: "body_too_large", 414: "config_hash_too_long",
        415: "unsupported_media_type", 429: "too_many_streams, too_many_auth_failures or rate_limited (Retry-After)",
        431: "headers_too_large", 500: "internal_error (with the id the server logged it under)",
        502: "upstream_error or upstream_auth", 503: "overloaded, too_many_connections, shutdown, run_store_full or run_store_unavailable (Retry-After)",
        504: "timeout",
    }.items()
}


def openai_param(location: Any) -> str | None:
    """A validation error's location as OpenAI names a field: `messages[0].content` (the `body` part dropped)."""
    param = ""
    for part in location or ():
        if part in ("body", "query", "path", "header"):
            continue
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or None


def openai_invalid(errors: Any) -> ErrorResponse:
    """Validation errors as OpenAI's 400: the first one, its field in `param` and in the message."""
    first = next(iter(errors), {})
    first = first if isinstance(first, dict) else {"msg": str(first)}
    if first.get("type") == "json_invalid":
        return refuse(400, "invalid_body", f"the body is not valid JSON ({first.get('msg', 'decode error')})")
    param = openai_param(first.get("loc"))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"  # OpenAI's words for an unknown field
    elif param is not None and not message.startswith(f"{param}:"):
        message = f"{param}: {message}"
    return refuse(400, "invalid_body", message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Failures of the non-streaming endpoints (LangServe's /invoke, /batch) as a status naming the cause, and
    every 422 in FastAPI's documented shape."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        # Only what escapes chains.middleware.answer_failures (which answers route failures) arrives here.
        return failure_response(exc, f"{request.method} {request.url.path}")

    async def invalid_input(request: Request, exc: Exception) -> JSONResponse:
        # LangServe raises some 422s with bare strings as errors, and validates each /batch input only when it
        # runs it; its `input` errors come with an empty location.
        assert isinstance(exc, (ValidationError, RequestValidationError))
        if speaks_openai(request.url.path):  # OpenAI answers a bad field with 400 naming it in `param`
            return openai_invalid(exc.errors())
        errors = [
            {"loc": list(e.get("loc") or ["body", "input"]), "msg": str(e.get("msg", "")),
             "type": str(e.get("type", "value_error"))}
            if isinstance(e, dict) else {"loc": ["body"], "msg": str(e), "type": "value_error"}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 422 and isinstance(exc.detail, str):  # LangServe's, e.g. a batch config mismatch
            return invalid(["body"], exc.detail)
        if exc.status_code >= 500:  # whatever a library put in its detail stays in the log
            return failure_response(exc, f"{request.method} {request.url.path}")
        if exc.status_code < 400:
            return await http_exception_handler(request, exc)
        # Starlette's 404/405 and LangServe's own refusals, in the one error shape.
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, ensure_ascii=False)
        return refuse(exc.status_code, _KIND_OF_STATUS.get(exc.status_code, "bad_request"), detail,
                      dict(exc.headers or {}))

    app.add_exception_handler(ValidationError, invalid_input)
    app.add_exception_handler(RequestValidationError, invalid_input)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, handle)
