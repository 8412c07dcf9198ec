"""API keys: when `API_KEYS` is set, every route but `/health` and the sign-in page needs one.

A key is accepted as `Authorization: Bearer <key>`, `X-API-Key: <key>`, or the `api_key` cookie that the sign-in
page sets (HttpOnly, SameSite=Strict), so that a person with a key can use the browser UIs: LangServe's
playground and an `EventSource` send no custom headers. Keys are compared in constant time, never logged, and
never echoed in an error.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from chains.guards import refuse

COOKIE = "api_key"
OPEN_PATHS = ("/health", "/sign-in")


def key_matches(given: str, keys: Sequence[bytes]) -> bool:
    """Constant time: every key is compared, whatever matches first."""
    candidate = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key)
    return matched


def presented_key(scope: Scope) -> str | None:
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1").strip()
    if b"cookie" in headers:
        cookie = SimpleCookie()
        try:
            cookie.load(headers[b"cookie"].decode("latin-1"))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no key
            return None
        if COOKIE in cookie:
            return cookie[COOKIE].value
    return None


class ApiKeyAuth:
    """Pure ASGI: 401 (JSON) for API calls without a valid key; a browser asking for a page is sent to sign in."""

    def __init__(self, app: ASGIApp, keys: Sequence[SecretStr]) -> None:
        self.app = app
        self.keys = [key.get_secret_value().encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        if key is not None and key_matches(key, self.keys):
            await self.app(scope, receive, send)
            return
        accept = dict(scope["headers"]).get(b"accept", b"")
        if scope["method"] == "GET" and b"text/html" in accept:
            target = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else "")
            await RedirectResponse(f"/sign-in?next={quote(target)}", status_code=303)(scope, receive, send)
            return
        response = refuse(401, "unauthorized", "a valid API key is required (Authorization: Bearer, X-API-Key, "
                          "or sign in at /sign-in)", {"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


SIGN_IN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in</title>
<style>body{{font:16px system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}}
input,button{{font:inherit;padding:.5rem;width:100%;box-sizing:border-box;margin:.25rem 0}}
.error{{color:#b00020}}</style></head>
<body><h1>Sign in</h1>{error}
<form method="post" action="/sign-in">
<label for="key">API key</label><input id="key" name="key" type="password" autocomplete="current-password" required>
<input type="hidden" name="next" value="{next}"><button type="submit">Sign in</button></form></body></html>"""


def safe_next(target: str) -> str:
    """Only a path on this site: never an open redirect to another origin."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/playground/"


def sign_in_router(keys: Sequence[SecretStr]) -> APIRouter:
    router = APIRouter(tags=["access"])
    raw_keys = [key.get_secret_value().encode() for key in keys]

    @router.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    async def sign_in_page(next: str = "/playground/") -> HTMLResponse:
        escaped = safe_next(next).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
        return HTMLResponse(SIGN_IN_PAGE.format(error="", next=escaped))

    @router.post("/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        # A plain urlencoded form, parsed here rather than adding python-multipart for two fields.
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        key, next = form.get("key", [""])[0], form.get("next", ["/playground/"])[0]
        if not key or not key_matches(key, raw_keys):
            page = SIGN_IN_PAGE.format(error='<p class="error">That key is not valid.</p>', next="/playground/")
            return HTMLResponse(page, status_code=401)
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/")
        return response

    return router

