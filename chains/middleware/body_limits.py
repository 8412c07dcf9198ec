"""Requests to the model routes: bodies bounded in size, JSON, valid UTF-8 and valid Unicode (no unpaired
surrogate in any string or key), not too deep; query strings valid UTF-8."""

from __future__ import annotations

import json
import logging
import re
from itertools import accumulate
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.common.errors import openai_param, speaks_openai, speaks_text
from chains.common.responses import invalid, refuse
from chains.common.scope import PROTOCOL_MARK, runs_the_model

log = logging.getLogger(__name__)


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


def unicode_problem(path: str, body: bytes) -> JSONResponse | None:
    """A refusal naming where a JSON body holds an unpaired surrogate, on every model route: each string of it
    may reach the model or the model server (`stop`, `name`, `user`, a key…), and none could be encoded there or
    in the answer. Surrogates only come as \\u escapes (a raw one is invalid UTF-8, refused before), so a body
    without one is passed by one regex search; only a body with one is parsed here."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        where = lone_surrogate_at(json.loads(body), [])
    except ValueError:
        return None  # not JSON: the route says so
    if where is None:
        return None  # pairs only: valid
    message = "contains an unpaired surrogate (a \\ud800-\\udfff escape on its own): not valid Unicode"
    if speaks_openai(path) or speaks_text(path):  # /v1: OpenAI's 400 naming it in `param`; /api/chat: text
        param = openai_param(where) or "body"
        return refuse(400, "invalid_body", f"{param}: {message}", param=param)
    return invalid(["body", *where], message)


def query_problem(path: str, query: bytes) -> JSONResponse | None:
    """A query string whose percent-escapes are not UTF-8 would reach the model as U+FFFD replacements, silently
    changed: refused, naming the parameter."""
    if b"%" not in query:
        return None  # the request line is ASCII (the protocol escapes raw bytes), so the rest decodes
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        try:
            unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError as exc:
            shown = unquote_to_bytes(name).decode("utf-8", "replace")[:40]
            message = f"is not valid UTF-8 once percent-decoded (byte {exc.start})"
            if speaks_text(path):  # the AI SDK shows the body
                return refuse(400, "invalid_body", f"{shown}: {message}", param=shown)
            return invalid(["query", shown], message)
    return None


class RequestLimits:
    """Bodies: at most `max_body_bytes`; to the model routes only JSON, valid UTF-8, at most `max_json_depth`
    deep, valid Unicode. Refused here with a 4xx naming the limit, before any route parses a byte (a deep body
    would make Python's JSON parser raise RecursionError, invalid UTF-8 a UnicodeDecodeError). Query strings of
    the model routes: valid UTF-8."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    _warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and PROTOCOL_MARK not in scope.get("extensions", {}) and not RequestLimits._warned:
            RequestLimits._warned = True  # once: the operator needs to know, the log does not need it per request
            log.warning("served without the project's launcher (chains.hosting): header size, header "
                        "and body timeouts and MAX_CONNECTIONS are not enforced")
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            if scope["type"] == "http" and scope["method"] == "GET" and runs_the_model(scope["path"]):
                problem = query_problem(scope["path"], scope["query_string"])
                if problem is not None:
                    await problem(scope, receive, send)
                    return
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._too_large()(scope, receive, send)
            return
        body = bytearray()
        while True:  # read it all here, bounded, then hand it on
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await self._too_large()(scope, receive, send)
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
            if problem is None:
                problem = unicode_problem(scope["path"], whole)
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

    def _too_large(self) -> JSONResponse:
        return refuse(413, "body_too_large", f"the body is larger than MAX_BODY_BYTES={self.max_body_bytes}")

    def _json_problem(self, content_type: bytes, body: bytes) -> JSONResponse | None:
        if content_type.split(b";")[0].strip().lower() != b"application/json":
            shown = content_type.decode("latin-1")[:100] or "none"
            return refuse(415, "unsupported_media_type", f"Content-Type must be application/json (got {shown})")
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return refuse(400, "invalid_body", f"the body is not valid UTF-8 (byte {exc.start})")
        return None
