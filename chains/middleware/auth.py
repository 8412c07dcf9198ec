"""API keys: when `API_KEYS` is set, every route but `/health` (and its probes `/health/live`, `/health/ready`),
`/sign-in` and `/sign-out` needs one.

A key is accepted as `Authorization: Bearer <key>` or `X-API-Key: <key>`; a browser signs in once (chains.api.sign_in)
and sends the `session` cookie, which holds a session signed with the key, never the key (chains.common.keys), so
that a person with a key can use the browser UIs: LangServe's playground and an `EventSource` send no custom
headers. Keys and MACs are compared in constant time, never logged, and never echoed in an error. Wrong keys,
and cookies this deployment did not sign, are counted per client address: after AUTH_FAILURE_LIMIT of them
within AUTH_FAILURE_WINDOW, that address gets 429 + Retry-After, and nothing it sends is even compared, until the
window has passed. A refused cookie is cleared in the refusal. The sign-in form is only accepted from this site's
own pages (Origin, else Referer).
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from chains.api.sign_in import clear_session_cookie
from chains.common.keys import COUNTED_REFUSALS, FailedAuth, KeyMatcher, Session, key_id, presented_session
from chains.common.responses import refuse
from chains.common.scope import API_KEY_ID, client_address

# The probes too: a load balancer's health check and Kubernetes' probes carry no key.
OPEN_PATHS = ("/health", "/health/live", "/health/ready", "/sign-in", "/sign-out")


def presented_key(scope: Scope) -> bytes | None:
    """The key a request's headers carry, as the bytes it sent (None when they carry none). `Bearer` is
    case-insensitive; the spaces around a header value are not part of it (HTTP strips them). A cookie never
    carries a key (chains.common.keys.presented_session)."""
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].strip()
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
        cookie = presented_session(scope) if key is None else None  # a key in a header wins
        if key is not None or cookie is not None:  # someone is trying a key, or a session
            address = client_address(scope)
            wait = self.failures.retry_after(address)
            if wait is not None:
                await too_many_failures(wait)(scope, receive, send)
                return
            if key is not None:
                if self.matcher(key):
                    scope[API_KEY_ID] = key_id(key)
                    await self.app(scope, receive, send)
                    return
                self.failures.record(address)
            elif cookie is not None:
                session = self.matcher.sessions.verify(cookie)
                if isinstance(session, Session):
                    scope[API_KEY_ID] = session.key_id
                    await self.app(scope, receive, send)
                    return
                if session in COUNTED_REFUSALS:
                    self.failures.record(address)
        accept = dict(scope["headers"]).get(b"accept", b"")
        response: Response
        if scope["method"] == "GET" and b"text/html" in accept:
            target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
            response = RedirectResponse(f"/sign-in?next={quote(target)}", status_code=303)
        else:
            response = refuse(401, "unauthorized", "a valid API key is required (Authorization: Bearer, X-API-Key, "
                              "or sign in at /sign-in)", {"WWW-Authenticate": "Bearer"})
        if cookie is not None:  # a refused cookie: the browser stops sending it
            clear_session_cookie(response, scope)
        await response(scope, receive, send)
