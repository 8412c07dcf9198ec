"""Pure ASGI middleware that guards the model routes. Pure ASGI on purpose: Starlette's BaseHTTPMiddleware
breaks disconnect detection on streams."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.errors import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)

_MODEL_ENDPOINTS = ("/invoke", "/batch", "/stream", "/stream_log", "/stream_events")


def runs_the_model(path: str) -> bool:
    """LangServe's generation endpoints and the /chat routes; not schemas, docs, playgrounds or /health."""
    return path.startswith("/chat") or path.rstrip("/").endswith(_MODEL_ENDPOINTS)


def refuse(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "type": kind}, status_code=status, headers=headers)


def invalid(location: list[str], message: str) -> JSONResponse:
    """A 422 in the shape FastAPI documents for every operation (`HTTPValidationError`)."""
    return JSONResponse({"detail": [{"loc": location, "msg": message, "type": "value_error"}]}, status_code=422)


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(body: bytes) -> int:
    """Deepest nesting of a JSON text, counted without parsing it (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_JSON_STRING.sub(b'""', body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class RequestLimits:
    """Bodies: at most `max_body_bytes`; to the model routes only JSON, valid UTF-8, at most `max_json_depth`
    deep. Refused here with a 4xx naming the limit, before any route parses a byte (a deep body would make
    Python's JSON parser raise RecursionError, invalid UTF-8 a UnicodeDecodeError)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        too_large = refuse(413, "body_too_large", f"the body is larger than MAX_BODY_BYTES={self.max_body_bytes}")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await too_large(scope, receive, send)
            return
        body = bytearray()
        while True:  # read it all here, bounded, then hand it on
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        if body and runs_the_model(scope["path"]):
            problem = self._json_problem(headers.get(b"content-type", b""), bytes(body))
            if problem is not None:
                await problem(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # then the real channel: the disconnect watch needs it

        await self.app(scope, replay, send)

    def _json_problem(self, content_type: bytes, body: bytes) -> JSONResponse | None:
        if content_type.split(b";")[0].strip().lower() != b"application/json":
            shown = content_type.decode("latin-1")[:100] or "none"
            return refuse(415, "unsupported_media_type", f"Content-Type must be application/json (got {shown})")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return refuse(400, "invalid_body", f"the body is not valid UTF-8 (byte {exc.start})")
        if json_depth(body) > self.max_json_depth:
            return refuse(400, "invalid_body", f"the JSON is nested deeper than MAX_JSON_DEPTH={self.max_json_depth}")
        return None


# What a client may send in LangServe's `config` without a 422. Routes are mounted with `config_keys=()`, so
# nothing in `config` reaches a run; these rules only decide what is accepted quietly and what is refused
# with a word (rather than dropped while the client believes it took effect). The chains have no
# configurable fields either, so no model, URL or key can be swapped per request.
# Labels for tracing, in Python's and LangChain.js's spelling: accepted (then dropped), if well-formed.
CONFIG_LABELS: dict[str, tuple[type, str]] = {
    "tags": (list, "a list of strings"), "metadata": (dict, "an object"),
    "run_name": (str, "a string"), "runName": (str, "a string"),
}
# What LangServe's own clients fill in by default: Python's `RemoteRunnable` (langchain-core's ensure_config)
# and LangChain.js 0.3's (`recursionLimit: 25`). Accepted at exactly these values, which change nothing;
# any other value asks for something this server does not do, and is refused.
CLIENT_DEFAULTS: dict[str, Any] = {
    "configurable": {}, "recursion_limit": 25, "recursionLimit": 25, "callbacks": None,
    "max_concurrency": None, "maxConcurrency": None,
}
_ACCEPTED_TEXT = ("accepted: tags, metadata, run_name; configurable, recursion_limit, callbacks and "
                  "max_concurrency only at LangChain's client defaults")


def config_problem(configs: list[dict[str, Any]]) -> str | None:
    """Why these LangServe configs are refused, or None."""
    for config in configs:
        for key, (kind, described) in CONFIG_LABELS.items():
            value = config.get(key)
            if value is not None and (not isinstance(value, kind) or (
                    key == "tags" and not all(isinstance(tag, str) for tag in value))):
                return f"config: {key} must be {described}"
    unlisted = sorted({key for config in configs for key, value in config.items()
                       if key not in CONFIG_LABELS and (key not in CLIENT_DEFAULTS or CLIENT_DEFAULTS[key] != value)})
    if unlisted:
        return f"config keys not allowed: {', '.join(unlisted)} ({_ACCEPTED_TEXT})"
    return None


class LangServeBodies:
    """Refuses, with a 422 naming the field, the body shapes that LangServe 0.3.3 turns into a 500 or quietly
    mishandles: `config` or `kwargs` that is not an object (`"config": null`), a `/batch` whose `inputs` is not a
    list (a string would be batched letter by letter), and `config` keys it would drop without a word."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith(
                _MODEL_ENDPOINTS):
            await self.app(scope, receive, send)
            return
        message = await receive()  # RequestLimits has read the whole body already: one message
        problem = self._problem(scope["path"], message.get("body", b""))
        if problem is not None:
            field, text = problem
            await invalid(["body", *field], text)(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return message
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _problem(path: str, body: bytes) -> tuple[list[str], str] | None:
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            return [], "the body is not valid JSON"
        if not isinstance(request, dict):
            return [], "the body must be a JSON object"
        batch = path.rstrip("/").endswith("/batch")
        if batch and not isinstance(request.get("inputs"), list):
            return ["inputs"], "inputs: must be a list of inputs"
        config = request.get("config", {})
        configs = config if batch and isinstance(config, list) else [config]
        if not all(isinstance(one, dict) for one in configs):
            return ["config"], "config: must be an object" + (" or a list of objects" if batch else "")
        # LangServe ignores `kwargs`; LangChain.js sends one object per input to /batch.
        kwargs = request.get("kwargs", {})
        if not (isinstance(kwargs, dict) or batch and isinstance(kwargs, list)
                and all(isinstance(one, dict) for one in kwargs)):
            return ["kwargs"], "kwargs: must be an object" + (" or a list of objects" if batch else "")
        problem = config_problem(configs)
        return None if problem is None else (["config"], problem)


class StreamsPerClient:
    """At most `limit` model requests in flight per client address; more get 429 + Retry-After."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not runs_the_model(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        if self.in_flight[client] >= self.limit:
            response = refuse(429, "too_many_streams", f"more than MAX_STREAMS_PER_CLIENT={self.limit} requests in "
                              "flight from this client", {"Retry-After": str(RETRY_AFTER_SECONDS)})
            await response(scope, receive, send)
            return
        self.in_flight[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]


class ModelAdmission:
    """Refuses model requests with 503 + Retry-After while the local model's wait queue is full, before a
    stream is opened (a request that slips past between check and start gets an `overloaded` error event)."""

    def __init__(self, app: ASGIApp, saturated: Callable[[], bool]) -> None:
        self.app = app
        self.saturated = saturated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and runs_the_model(scope["path"]) and self.saturated():
            response = refuse(503, "overloaded", "the local model is busy: its wait queue is full",
                              {"Retry-After": str(RETRY_AFTER_SECONDS)})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class EndStreamsCleanly:
    """LangServe's stream endpoints send their `event: error` and then re-raise, which makes uvicorn cut the
    connection mid-body. This ends such a response properly instead (the error is logged, not lost)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "complete": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if not state["started"] or state["complete"]:
                raise
            log.warning("%s failed after its response started; ending it cleanly", scope["path"], exc_info=True)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
