"""API keys: when `API_KEYS` is set, every route but `/health` and the sign-in page needs one.

A key is accepted as `Authorization: Bearer <key>`, `X-API-Key: <key>`, or the `api_key` cookie that the sign-in
page sets (HttpOnly, SameSite=Strict), so that a person with a key can use the browser UIs: LangServe's
playground and an `EventSource` send no custom headers. Keys are compared in constant time, never logged, and
never echoed in an error. Wrong keys are counted per client address: after AUTH_FAILURE_LIMIT of them within
AUTH_FAILURE_WINDOW, that address gets 429 + Retry-After, and no key it sends is even compared, until the
window has passed. The sign-in form is only accepted from this site's own pages (Origin, else Referer).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from http.cookies import SimpleCookie
from urllib.parse import quote

from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from chains.api.errors import refuse
from chains.middleware.scope import API_KEY_ID, client_address

COOKIE = "api_key"
OPEN_PATHS = ("/health", "/sign-in")


class KeyMatcher:
    """The configured keys, compared in constant time: the candidate against every key, with no early exit.

    Each side is hashed first (SHA-256), so every comparison is between two 32-byte digests: its time depends
    neither on where the candidate differs, nor on the length of a key or of the candidate.
    """

    def __init__(self, keys: Sequence[SecretStr | str | bytes]) -> None:
        raw = [key.get_secret_value() if isinstance(key, SecretStr) else key for key in keys]
        self._digests = [hashlib.sha256(key if isinstance(key, bytes) else key.encode()).digest() for key in raw]
        if not self._digests or any(len(key) == 0 for key in raw):
            raise ValueError("API keys must be non-empty")

    def __call__(self, candidate: str | bytes | None) -> bool:
        if candidate is None:
            return False
        given = hashlib.sha256(candidate if isinstance(candidate, bytes) else candidate.encode()).digest()
        matched = False
        for digest in self._digests:  # all of them, whichever matches
            matched |= hmac.compare_digest(given, digest)
        return matched and len(candidate) > 0


def presented_key(scope: Scope) -> bytes | None:
    """The key a request carries, as the bytes it sent (None when it carries none). `Bearer` is case-insensitive;
    the spaces around a header value are not part of it (HTTP strips them)."""
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].strip()
    if b"cookie" in headers:
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(headers[b"cookie"].decode("latin-1"))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no key
            return None
        if COOKIE in cookie:
            return cookie[COOKIE].value.encode("latin-1", errors="replace")
    return None


class FailedAuth:
    """Wrong keys per client address in a sliding window. Memory is bounded: at most `max_addresses` are
    tracked, the least recently failing one forgotten first."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = 10_000) -> None:
        self.limit, self.window, self.clock, self.max_addresses = limit, window, clock, max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Seconds until this address may try a key again, or None if it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self.clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[-self.limit] + self.window - now))

    def record(self, address: str) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[address] = failures  # most recent last
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)


def too_many_failures(seconds: int) -> JSONResponse:
    return refuse(429, "too_many_auth_failures", "too many wrong API keys from this address; try again in "
                  f"{seconds} s", {"Retry-After": str(seconds)})


class ApiKeyAuth:
    """Pure ASGI: 401 (JSON) for API calls without a valid key; a browser asking for a page is sent to sign in;
    429 for an address that has sent too many wrong keys."""

    def __init__(self, app: ASGIApp, matcher: KeyMatcher, failures: FailedAuth) -> None:
        self.app = app
        self.matcher = matcher
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        if key is not None:  # someone is trying a key
            address = client_address(scope)
            wait = self.failures.retry_after(address)
            if wait is not None:
                await too_many_failures(wait)(scope, receive, send)
                return
            if self.matcher(key):
                scope[API_KEY_ID] = hashlib.sha256(key).hexdigest()[:32]
                await self.app(scope, receive, send)
                return
            self.failures.record(address)
        accept = dict(scope["headers"]).get(b"accept", b"")
        if scope["method"] == "GET" and b"text/html" in accept:
            target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
            await RedirectResponse(f"/sign-in?next={quote(target)}", status_code=303)(scope, receive, send)
            return
        response = refuse(401, "unauthorized", "a valid API key is required (Authorization: Bearer, X-API-Key, "
                          "or sign in at /sign-in)", {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
