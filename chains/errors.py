"""Failures, described for clients: a type naming the cause, a message without tracebacks or secrets, and the
HTTP status the non-streaming endpoints answer with."""

from __future__ import annotations

import json
import logging
import secrets

import httpx
import openai
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import ValidationError

from chains.models.local import ModelOverloadedError
from chains.protocol import ErrorType

log = logging.getLogger(__name__)

STATUS_OF: dict[ErrorType, int] = {
    "generation_error": 500,
    "upstream_error": 502,
    "upstream_auth": 502,  # our credentials upstream are wrong: not the caller's fault, so not 401
    "rate_limited": 429,
    "overloaded": 503,
    "timeout": 504,
    "shutdown": 503,
}
RETRY_AFTER_SECONDS = 1


def describe_failure(exc: BaseException) -> tuple[ErrorType, str]:
    """A client-safe type and message: no traceback, no request headers, no key."""
    match exc:
        case ModelOverloadedError():
            return "overloaded", str(exc)
        case openai.APITimeoutError() | httpx.TimeoutException():
            return "timeout", "the upstream model did not answer in time"
        case openai.RateLimitError():
            return "rate_limited", "the upstream model is rate limited (HTTP 429)"
        case openai.AuthenticationError() | openai.PermissionDeniedError():
            return "upstream_auth", f"the upstream model refused the credentials (HTTP {exc.status_code})"
        case openai.APIStatusError():
            return "upstream_error", f"the upstream model failed (HTTP {exc.status_code})"
        case openai.APIConnectionError():
            return "upstream_error", "cannot reach the upstream model"
        case httpx.HTTPError():
            return "upstream_error", "the upstream stream broke off"
        case json.JSONDecodeError() | openai.APIResponseValidationError():
            return "upstream_error", "the upstream model sent a malformed response"
        case _:
            return "generation_error", f"{type(exc).__name__}: {exc}"[:500]


def failure_response(exc: BaseException, what: str) -> JSONResponse:
    """The answer to a request (`what`: method and path) that failed with `exc`. A failure we can name gets its
    status and message; anything else a 500 without the exception's text (it may hold a path, a key, a
    character the response cannot even encode), with an id under which the log has the whole traceback."""
    kind, message = describe_failure(exc)
    if kind == "generation_error":
        error_id = secrets.token_hex(6)
        log.error("%s failed (error id %s)", what, error_id, exc_info=exc)
        return JSONResponse({"error": f"internal error; the server logged it as {error_id}", "type": "internal_error",
                             "id": error_id}, status_code=500)
    log.warning("%s failed: %s", what, message)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if kind in ("overloaded", "rate_limited", "shutdown") else None
    return JSONResponse({"error": message, "type": kind}, status_code=STATUS_OF[kind], headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Failures of non-streaming endpoints (LangServe's /invoke, /batch) as a status naming the cause."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        # Only what escapes chains.guards.AnswerFailures (which answers route failures) arrives here.
        return failure_response(exc, f"{request.method} {request.url.path}")

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        # Every 422 in the shape FastAPI documents (`{"detail": [{"loc", "msg", "type"}]}`): LangServe raises
        # some with bare strings as errors, and validates each /batch input only when it runs it.
        assert isinstance(exc, (ValidationError, RequestValidationError))
        errors = [
            # LangServe validates `input` on its own: its errors come with an empty location.
            {"loc": list(e.get("loc") or ["body", "input"]), "msg": str(e.get("msg", "")),
             "type": str(e.get("type", "value_error"))}
            if isinstance(e, dict) else {"loc": ["body"], "msg": str(e), "type": "value_error"}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 422 and isinstance(exc.detail, str):  # LangServe's, e.g. a batch config mismatch
            return JSONResponse({"detail": [{"loc": ["body"], "msg": exc.detail, "type": "value_error"}]}, 422)
        if exc.status_code >= 500:  # whatever a library put in its detail stays in the log
            return failure_response(exc, f"{request.method} {request.url.path}")
        return await http_exception_handler(request, exc)

    app.add_exception_handler(ValidationError, invalid)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, handle)
