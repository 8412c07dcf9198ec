"""Pure ASGI middleware that guards the model routes. Pure ASGI on purpose: Starlette's BaseHTTPMiddleware
breaks disconnect detection on streams."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import types
from collections import Counter
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import get_config_list
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.errors import RETRY_AFTER_SECONDS, failure_response
from chains.http_protocol import SCOPE_MARK

log = logging.getLogger(__name__)

# Set by LangServeBodies on a /batch: how many model runs the request asks for (the limits below count them).
MODEL_RUNS = "chains.model_runs"

_MODEL_ENDPOINTS = ("/invoke", "/batch", "/stream", "/stream_log", "/stream_events")


def runs_the_model(path: str) -> bool:
    """LangServe's generation endpoints and the /chat routes; not schemas, docs, playgrounds or /health."""
    return path.startswith("/chat") or path.rstrip("/").endswith(_MODEL_ENDPOINTS)


def refuse(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "type": kind}, status_code=status, headers=headers)


def invalid(location: list[str], message: str) -> JSONResponse:
    """A 422 in the shape FastAPI documents for every operation (`HTTPValidationError`)."""
    return JSONResponse({"detail": [{"loc": location, "msg": message, "type": "value_error"}]}, status_code=422)


# The pieces of the depth check, each one pass at C speed: escapes out, then only quotes and brackets kept.
_NOT_QUOTES_OR_BRACKETS = bytes(b for b in range(256) if b not in b'"[]{}')
_SIGNED = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
_DEPTH_CHUNK = 65_536


def json_deeper_than(body: bytes, limit: int) -> bool:
    """Whether a JSON text nests deeper than `limit` (brackets inside strings do not count), without parsing it.

    Linear, and nothing per byte runs in Python: ≤ ~35 ms for the worst 1 MB on this shared 2-core machine, ~1 ms
    for most bodies (too few brackets to be deep at all). The regex this replaces, `"(?:[^"\\]|\\.)*"`,
    rescanned the rest of the text from every quote of a string that never closed: quadratic, 12 s for a 64 KB
    body (21.7 s on this machine), with the event loop blocked throughout.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # not enough brackets in all, strings included, to be that deep
    # An escaped backslash goes first, so that in `\\"` the quote still ends the string.
    compact = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_QUOTES_OR_BRACKETS)
    # Two adjacent quotes enclose no bracket: dropping them changes nothing. Then every odd piece between the
    # remaining quotes is inside a string; an unterminated string runs to the end, as it should.
    outside = b"".join(compact.replace(b'""', b"").split(b'"')[0::2]).translate(_SIGNED)
    depth = 0
    for start in range(0, len(outside), _DEPTH_CHUNK):
        part = outside[start:start + _DEPTH_CHUNK]
        if max(accumulate(memoryview(part).cast("b"), initial=depth)) > limit:
            return True
        depth += part.count(1) - part.count(255)
    return False


class RequestLimits:
    """Bodies: at most `max_body_bytes`; to the model routes only JSON, valid UTF-8, at most `max_json_depth`
    deep. Refused here with a 4xx naming the limit, before any route parses a byte (a deep body would make
    Python's JSON parser raise RecursionError, invalid UTF-8 a UnicodeDecodeError)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    _warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and SCOPE_MARK not in scope.get("extensions", {}) and not RequestLimits._warned:
            RequestLimits._warned = True  # once: the operator needs to know, the log does not need it per request
            log.warning("served without --http chains.http_protocol:Utf8RequestLineProtocol: header size, header "
                        "and body timeouts and MAX_CONNECTIONS are not enforced")
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
        whole = bytes(body)
        del body
        if whole and runs_the_model(scope["path"]):
            problem = self._json_problem(headers.get(b"content-type", b""), whole)
            # Inline: ~10–35 ms for the worst megabyte. (On a worker thread it kept the loop freer, but each
            # thread's malloc arena kept the memory: +41 MB after four concurrent 1 MB bodies, against +18.)
            if problem is None and json_deeper_than(whole, self.max_json_depth):
                problem = refuse(400, "invalid_body",
                                 f"the JSON is nested deeper than MAX_JSON_DEPTH={self.max_json_depth}")
            if problem is not None:
                await problem(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
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


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate_at(value: Any, location: list[str | int]) -> list[str | int] | None:
    """Where in a parsed JSON value a string holds an unpaired surrogate (`"\\ud800"` is valid JSON but not
    Unicode: it cannot be encoded, so it would fail in the model or in the response), or None."""
    if isinstance(value, str):
        return None if value.isascii() or not _has_surrogate(value) else location
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _has_surrogate(key):
            return [*location, "(a key)"]  # not the key itself: it cannot be encoded in the answer either
        found = lone_surrogate_at(item, [*location, key])
        if found is not None:
            return found
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class LangServeBodies:
    """Refuses, with a 422 naming the field, the body shapes that LangServe 0.3.3 turns into a 500 or quietly
    mishandles: `config` or `kwargs` that is not an object (`"config": null`), a `/batch` whose `inputs` is not a
    list (a string would be batched letter by letter) or has more than MAX_BATCH_INPUTS items, `config` keys it
    would drop without a word, and unpaired surrogates anywhere in the body. A /batch's size is put in the scope
    (`MODEL_RUNS`) for the limits inside."""

    def __init__(self, app: ASGIApp, max_batch_inputs: int) -> None:
        self.app = app
        self.max_batch_inputs = max_batch_inputs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith(
                _MODEL_ENDPOINTS):
            await self.app(scope, receive, send)
            return
        message = await receive()  # RequestLimits has read the whole body already: one message
        problem = self._problem(scope, message.get("body", b""))
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

    def _problem(self, scope: Scope, body: bytes) -> tuple[list[Any], str] | None:
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            return [], "the body is not valid JSON"
        if not isinstance(request, dict):
            return [], "the body must be a JSON object"
        batch = scope["path"].rstrip("/").endswith("/batch")
        if batch:
            inputs = request.get("inputs")
            if not isinstance(inputs, list):
                return ["inputs"], "inputs: must be a list of inputs"
            if len(inputs) > self.max_batch_inputs:
                return ["inputs"], f"inputs: {len(inputs)} inputs, more than MAX_BATCH_INPUTS={self.max_batch_inputs}"
            scope[MODEL_RUNS] = max(len(inputs), 1)
        config = request.get("config", {})
        configs = config if batch and isinstance(config, list) else [config]
        if not all(isinstance(one, dict) for one in configs):
            return ["config"], "config: must be an object" + (" or a list of objects" if batch else "")
        # LangServe ignores `kwargs`; LangChain.js sends one object per input to /batch.
        kwargs = request.get("kwargs", {})
        if not (isinstance(kwargs, dict) or batch and isinstance(kwargs, list)
                and all(isinstance(one, dict) for one in kwargs)):
            return ["kwargs"], "kwargs: must be an object" + (" or a list of objects" if batch else "")
        # Surrogates only come as \u escapes (raw bytes of one are invalid UTF-8, refused before this).
        if _SURROGATE_ESCAPE.search(body):
            where = lone_surrogate_at(request, [])
            if where is not None:
                return where, "contains an unpaired surrogate (a \\ud800-\\udfff escape on its own): not valid Unicode"
        problem = config_problem(configs)
        return None if problem is None else (["config"], problem)


class StreamsPerClient:
    """At most `limit` model runs in flight per client address; more get 429 + Retry-After. A /batch counts as
    many runs as it has inputs. The address is the connection's, or the one a trusted proxy reports
    (uvicorn's FORWARDED_ALLOW_IPS: README, Security)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not runs_the_model(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        runs = scope.get(MODEL_RUNS, 1)
        if self.in_flight[client] + runs > self.limit:
            asked = f"a batch of {runs} inputs counts as {runs} requests: " if runs > 1 else ""
            response = refuse(429, "too_many_streams", f"{asked}more than MAX_STREAMS_PER_CLIENT={self.limit} "
                              "requests in flight from this client", {"Retry-After": str(RETRY_AFTER_SECONDS)})
            await response(scope, receive, send)
            return
        self.in_flight[client] += runs
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[client] -= runs
            if not self.in_flight[client]:
                del self.in_flight[client]


class ModelAdmission:
    """Refuses model requests with 503 + Retry-After when the local model has no room for them (one running,
    LOCAL_QUEUE_SIZE waiting; a /batch needs a place for each input), before anything starts. A request that
    slips past between check and start gets an `overloaded` error event, or a 503 that cancels its whole batch."""

    def __init__(self, app: ASGIApp, free_places: Callable[[], int]) -> None:
        self.app = app
        self.free_places = free_places

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and runs_the_model(scope["path"]) and scope["method"] != "OPTIONS":
            runs, free = scope.get(MODEL_RUNS, 1), self.free_places()
            if runs > free:
                what = f"a batch of {runs} inputs needs {runs} places, {free} are free" if runs > 1 else \
                    "its wait queue is full"
                response = refuse(503, "overloaded", f"the local model is busy: {what}",
                                  {"Retry-After": str(RETRY_AFTER_SECONDS)})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CancelWhenClientLeaves:
    """LangServe's /invoke and /batch answer only at the end, and nothing watches their connection meanwhile: a
    batch ran on for 14 s after its client had gone. Here the request is cancelled as soon as the client goes
    (and with it every run of its batch: `cancel_batches_together`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].rstrip("/").endswith(
                ("/invoke", "/batch")):
            await self.app(scope, receive, send)
            return
        body = await receive()  # the whole body, as RequestLimits hands it on
        if body["type"] == "http.disconnect":
            return
        gone = asyncio.Event()
        answered = False
        delivered = False

        async def app_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return body
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracking_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass  # no more body can come: RequestLimits read it all
            gone.set()

        app = asyncio.ensure_future(self.app(scope, app_receive, tracking_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait((app, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not app.done() and not answered:  # the client left before its answer: stop the work
                log.info("%s: the client left; cancelling its request", scope["path"])
                app.cancel()
            try:
                await app
            except asyncio.CancelledError:
                if not gone.is_set():
                    raise  # we ourselves are being cancelled
        finally:
            watcher.cancel()
            if not app.done():
                app.cancel()


async def _batch_together(self: Runnable[Any, Any], inputs: list[Any],
                          config: RunnableConfig | list[RunnableConfig] | None = None, *,
                          return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
    """`Runnable.abatch`, but its runs live and die together: when one fails (the local model refuses it) or the
    request is cancelled (its client left), every other run is cancelled, and its generation stops.
    (LangChain's abatch gathers its runs: the first failure is raised while the others run on.)"""
    if return_exceptions:  # LangServe never asks for it; kept for any other caller
        return await type(self).abatch(self, inputs, config, return_exceptions=True, **kwargs)
    configs = get_config_list(config, len(inputs))
    try:
        async with asyncio.TaskGroup() as runs:
            tasks = [runs.create_task(self.ainvoke(one, one_config, **kwargs))
                     for one, one_config in zip(inputs, configs)]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first failure, as abatch would raise it (a typed error: 503…)
    return [task.result() for task in tasks]


def cancel_batches_together(chain: Runnable[Any, Any]) -> None:
    """Installs `_batch_together` as this chain's `abatch` (what LangServe's /batch calls)."""
    chain.abatch = types.MethodType(_batch_together, chain)  # type: ignore[method-assign]


_CONFIG_HASH = re.compile(r"/c/([^/]*)")
_PLAYGROUND_SUBDIRECTORY = re.compile(r"^/[^/]+/playground/.+/$")


class PathLimits:
    """Paths refused before any route decodes them: a LangServe config hash (`/<chain>/c/<hash>/…`) longer than
    MAX_CONFIG_HASH_CHARS (LangServe decompresses it in full first: a 64 KB hash grew to 392 million characters
    and 1.1 GB), a NUL byte (a 500 from the file system), a directory under a LangServe playground (a 500 with
    the site-packages path in it)."""

    def __init__(self, app: ASGIApp, max_config_hash_chars: int) -> None:
        self.app = app
        self.max_config_hash_chars = max_config_hash_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            hashed = _CONFIG_HASH.search(path)
            if hashed is not None and len(hashed.group(1)) > self.max_config_hash_chars:
                await refuse(414, "config_hash_too_long", f"the config hash has {len(hashed.group(1))} characters, "
                             f"more than MAX_CONFIG_HASH_CHARS={self.max_config_hash_chars}")(scope, receive, send)
                return
            if "\x00" in path:
                await refuse(400, "invalid_path", "the path contains a NUL byte")(scope, receive, send)
                return
            if _PLAYGROUND_SUBDIRECTORY.match(path):
                await refuse(404, "not_found", "not found")(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AnswerFailures:
    """An exception that escapes a route: before the response has started, answered here with the status that
    names its cause (chains.errors) and no exception text (an id that the log has too); the connection stays
    usable. (Left to Starlette, the exception is re-raised after the 500 and uvicorn drops the connection.)
    After it has started — LangServe's stream endpoints send their `event: error` and then re-raise — the
    response is ended properly instead of cut mid-body."""

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
        except Exception as exc:
            if not state["started"]:
                await failure_response(exc, f'{scope["method"]} {scope["path"]}')(scope, receive, send)
            elif not state["complete"]:
                log.warning("%s failed after its response started; ending it cleanly", scope["path"], exc_info=True)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                log.warning("%s failed after its response was sent", scope["path"], exc_info=True)
