"""The one error model, free of any web framework: the error types (`ErrorType`), the status of each
(`STATUS_OF`, the one table), the body every refusal and failure has (`{"error", "type"}`, `ErrorBody`), its
rendering in OpenAI's shape, and `describe_failure`, which turns an exception into a client-safe type and
message. Messages never hold a traceback, a path or a key: a failure without a name answers `internal_error`
with an id under which the log has the whole exception.

The HTTP responses built from it (`refuse`, the exception handlers) are in chains.common.responses; a stream
that fails after it started says the same in its `event: error` (chains.streaming)."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Literal, NamedTuple

import httpx
import openai
from pydantic import BaseModel, Field

from chains.common.log_text import one_line

log = logging.getLogger(__name__)

ErrorType = Literal[
    # A request refused before anything ran (middleware, the request-line protocol, the routes).
    "bad_request", "forbidden", "method_not_allowed", "unauthorized", "too_many_auth_failures", "cross_origin",
    "body_too_large", "unsupported_media_type",
    "invalid_body", "invalid_path", "not_found", "config_hash_too_long", "too_many_streams", "too_many_connections",
    # A client over its own budget: runs generating that it started, or its share of the local model's places.
    "too_many_runs",
    "headers_too_large", "header_timeout", "body_timeout", "body_too_slow",
    # Runs (chains.api.runs): a Last-Event-ID that names no event of the run; a run store that is full or down.
    "invalid_event_id", "run_store_full", "run_store_unavailable",
    # A generation that could not run or stopped: the status of /invoke, /batch, or a stream's `event: error`.
    "overloaded", "upstream_busy", "timeout", "upstream_error", "rate_limited", "upstream_auth", "shutdown",
    "internal_error",
    # Many replicas (docs/replicas.md): this replica drains after SIGTERM; the replica generating a run was lost.
    "draining", "replica_lost",
]


class ErrorBody(BaseModel):
    """What every refusal and failure answers (a stream's `event: error` has the same fields)."""

    error: str = Field(description="what went wrong, for a person; never a traceback, path or key")
    type: ErrorType = Field(description="what went wrong, for a program")
    id: str | None = Field(None, description="internal_error only: the id under which the server logged it")


STATUS_OF: dict[ErrorType, int] = {
    "bad_request": 400, "invalid_body": 400, "invalid_path": 400, "invalid_event_id": 400,
    "unauthorized": 401,
    "forbidden": 403, "cross_origin": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "header_timeout": 408, "body_timeout": 408, "body_too_slow": 408,
    "body_too_large": 413,
    "config_hash_too_long": 414,
    "unsupported_media_type": 415,
    "too_many_streams": 429, "too_many_runs": 429, "too_many_auth_failures": 429, "rate_limited": 429,
    "headers_too_large": 431,
    "internal_error": 500,
    "upstream_error": 502,
    "upstream_auth": 502,  # our credentials upstream are wrong: not the caller's fault, so not 401
    "overloaded": 503, "upstream_busy": 503, "too_many_connections": 503, "shutdown": 503, "run_store_full": 503,
    "run_store_unavailable": 503, "draining": 503, "replica_lost": 503,
    "timeout": 504,
}
RETRY_AFTER_SECONDS = 1
# The types a client should retry later: their answers carry `Retry-After`.
RETRY_LATER: frozenset[ErrorType] = frozenset({
    "overloaded", "upstream_busy", "rate_limited", "shutdown", "too_many_streams", "too_many_runs",
    "too_many_connections",
    "too_many_auth_failures",
    "run_store_full", "run_store_unavailable", "draining", "replica_lost"})
# What a status from a library (Starlette's routing, LangServe) is called here.
KIND_OF_STATUS: dict[int, ErrorType] = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                                        405: "method_not_allowed"}


def error_body(kind: ErrorType, message: str, error_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "type": kind}
    if error_id is not None:
        body["id"] = error_id
    return body


OPENAI_PREFIX = "/v1"


def speaks_openai(path: str) -> bool:
    """Whether `path` belongs to the OpenAI-compatible surface, whose errors take OpenAI's shape."""
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


UI_CHAT_PREFIX = "/api/chat"


def speaks_text(path: str) -> bool:
    """Whether `path` belongs to the AI SDK's `/api/chat`, whose client shows an error's body as it is: text."""
    return path == UI_CHAT_PREFIX or path.startswith(UI_CHAT_PREFIX + "/")


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


class ModelRefusal(RuntimeError):
    """A model cannot take a generation now: its places are taken, or this client holds its share of them."""


class ModelOverloadedError(ModelRefusal):
    """More callers are waiting for a model than its queue allows (the local model's admission queue)."""

    kind: ErrorType = "overloaded"
    model = "the local model"

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{self.model} is busy: {waiting} requests already waiting")
        self.waiting = waiting


class UpstreamBusy(ModelOverloadedError):
    """Every upstream has OPENAI_MAX_CONCURRENCY calls in flight and OPENAI_QUEUE_SIZE requests wait already."""

    kind = "upstream_busy"
    model = "the upstream model"


class ModelShareExceeded(ModelRefusal):
    """One client (an address, or an API key) holds as many of the local model's places as one may
    (LOCAL_QUEUE_PER_CLIENT): the model is not full, this client's share is."""

    def __init__(self, who: str, held: int, share: int, places: int, runs: int = 1) -> None:
        batch = f"a batch of {runs} inputs needs {runs} places: " if runs > 1 else ""
        super().__init__(f"{batch}this {who} holds {held} of the local model's {places} places (running or "
                         f"waiting), the most one may hold is LOCAL_QUEUE_PER_CLIENT={share}; try again when one ends")


class Failure(NamedTuple):
    """An exception as a client may see it."""

    kind: ErrorType
    message: str
    error_id: str | None = None  # internal_error only


def describe_failure(exc: BaseException, what: str = "a generation") -> Failure:
    """A client-safe type and message for an exception: no traceback, no request headers, no key. One that has
    no name here is logged in full (with `what` failed) under an id, and only the id is told."""
    match exc:
        case ModelShareExceeded():
            return Failure("too_many_runs", str(exc))
        case ModelOverloadedError():
            return Failure(exc.kind, str(exc))
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
            log.error("%s failed (error id %s)", one_line(what), error_id, exc_info=exc)  # `what` may hold a path
            return Failure("internal_error", f"internal error; the server logged it as {error_id}", error_id)


def openai_param(location: Any) -> str | None:
    """A validation error's location as OpenAI names a field: `messages[0].content` (the `body` part dropped)."""
    param = ""
    for part in location or ():
        if part in ("body", "query", "path", "header"):
            continue
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
    return param or None
