"""The error model as HTTP responses: every refusal and failure is `{"error", "type"}` (chains.common.errors),
built by one function (`refuse`); validation errors keep the shape FastAPI documents for every operation
(`{"detail": [{"loc", "msg", "type"}]}`).

The OpenAI-compatible surface (`/v1`, chains.api.openai) answers the same errors in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}` (`code` is our `ErrorType`), validation errors included (as
400 naming the field in `param`). One error, two renderings: `refuse` returns an `ErrorResponse`, which picks
the rendering from the path it answers, so the middleware's refusals need not know which surface they guard."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any, get_args

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from chains.common.errors import (
    KIND_OF_STATUS,
    RETRY_AFTER_SECONDS,
    RETRY_LATER,
    STATUS_OF,
    ErrorBody,
    ErrorType,
    describe_failure,
    error_body,
    openai_error_body,
    openai_param,
    speaks_openai,
    speaks_text,
)
from chains.common.log_text import one_line

log = logging.getLogger(__name__)


class ErrorResponse(JSONResponse):
    """A refusal, rendered when it is sent: in our shape, or in OpenAI's on the `/v1` paths. Rendering at send
    time rather than at construction lets a middleware refuse without knowing which surface it stands in front
    of; nothing is mutated, so one instance may answer any path."""

    def __init__(self, status: int, kind: ErrorType, message: str, headers: dict[str, str] | None = None,
                 error_id: str | None = None, param: str | None = None) -> None:
        self.kind, self.message, self.param = kind, message, param
        super().__init__(error_body(kind, message, error_id), status_code=status, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if speaks_text(path):
            text = PlainTextResponse(self.message, self.status_code, {
                name.decode(): value.decode() for name, value in self.raw_headers
                if name not in (b"content-length", b"content-type")})
            await text(scope, receive, send)
            return
        if not speaks_openai(path):
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
    if kind in RETRY_LATER:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    return ErrorResponse(status, kind, message, headers, error_id, param)


def invalid(location: list[Any], message: str) -> JSONResponse:
    """A 422 in the shape FastAPI documents for every operation (`HTTPValidationError`)."""
    return JSONResponse({"detail": [{"loc": location, "msg": message, "type": "value_error"}]}, status_code=422)


def failure_response(exc: BaseException, what: str) -> JSONResponse:
    """The answer to a request (`what`: method and path) that failed with `exc`."""
    failure = describe_failure(exc, what)
    if failure.kind != "internal_error":  # an internal error has been logged in full already
        log.warning("%s failed: %s", one_line(what), failure.message)
    return refuse(STATUS_OF[failure.kind], failure.kind, failure.message, error_id=failure.error_id)


def _error_responses() -> dict[int | str, dict[str, Any]]:
    """What any route may answer besides its own 200 and 422, declared on every operation (FastAPI's
    `responses=`): each status with the types that have it, grouped from STATUS_OF. 405 is left out: routing
    answers it for a method that no operation has."""
    types_of: defaultdict[int, list[str]] = defaultdict(list)
    for kind in get_args(ErrorType):
        if kind != "method_not_allowed":
            types_of[STATUS_OF[kind]].append(kind)
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(types_of):
        kinds = types_of[status]
        description = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
        if any(kind in RETRY_LATER for kind in kinds):
            description += " (Retry-After)"
        responses[status] = {"description": description, "model": ErrorBody}
    return responses


ERROR_RESPONSES = _error_responses()


def openai_invalid(errors: Any) -> ErrorResponse:
    """Validation errors as OpenAI's 400: the first one, its field in `param` and in the message."""
    first: Any = next(iter(errors), {})
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

    async def invalid_input(request: Request, exc: Exception) -> Response:
        # LangServe raises some 422s with bare strings as errors, and validates each /batch input only when it
        # runs it; its `input` errors come with an empty location.
        assert isinstance(exc, (ValidationError, RequestValidationError))
        if speaks_openai(request.url.path):  # OpenAI answers a bad field with 400 naming it in `param`
            return openai_invalid(exc.errors())
        if speaks_text(request.url.path):  # the AI SDK shows the body: the first problem, in words
            first: Any = next(iter(exc.errors()), {})
            first = first if isinstance(first, dict) else {"msg": str(first)}
            field = openai_param(first.get("loc")) or "body"
            message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
            return PlainTextResponse(f"{field}: {message}", status_code=400)
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
        return refuse(exc.status_code, KIND_OF_STATUS.get(exc.status_code, "bad_request"), detail,
                      dict(exc.headers or {}))

    app.add_exception_handler(ValidationError, invalid_input)
    app.add_exception_handler(RequestValidationError, invalid_input)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, handle)
