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
from http.cookies import SimpleCookie
from urllib.parse import quote

from fastapi.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from chains.common.keys import COOKIE, FailedAuth, KeyMatcher
from chains.common.responses import refuse
from chains.common.scope import API_KEY_ID, client_address

OPEN_PATHS = ("/health", "/sign-in")


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
