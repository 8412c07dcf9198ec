"""`/sign-in`: a key in a cookie, so that a person with a key can use the browser pages (chains.middleware.auth)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from chains.common.keys import COOKIE, FailedAuth, KeyMatcher
from chains.common.responses import refuse
from chains.common.scope import client_address

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


def same_origin(request: Request) -> bool:
    """Whether a form post comes from this site's own page (login CSRF: a page elsewhere must not be able to sign
    a visitor in with its own key). Browsers send Origin on every POST; failing that, Referer. A request with
    neither is not from a browser page, and is allowed (curl)."""
    host = request.headers.get("host", "").lower()
    own = f"{request.url.scheme}://{host}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() == own  # "null" (a sandboxed or privacy-hidden origin) is not ours either
    referer = request.headers.get("referer")
    if referer is not None:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == own
    return True


def sign_in_router(matcher: KeyMatcher, failures: FailedAuth) -> APIRouter:
    router = APIRouter(tags=["access"])

    @router.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    async def sign_in_page(next: str = "/playground/") -> HTMLResponse:
        escaped = safe_next(next).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
        return HTMLResponse(SIGN_IN_PAGE.format(error="", next=escaped))

    @router.post("/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        if not same_origin(request):
            return refuse(403, "cross_origin", "sign-in is only accepted from this site's own sign-in page")
        address = client_address(request.scope)
        wait = failures.retry_after(address)
        if wait is not None:
            page = SIGN_IN_PAGE.format(error=f'<p class="error">Too many wrong keys; try again in {wait} s.</p>',
                                       next="/playground/")
            return HTMLResponse(page, status_code=429, headers={"Retry-After": str(wait)})
        # A plain urlencoded form, parsed here rather than adding python-multipart for two fields.
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        key, next = form.get("key", [""])[0], form.get("next", ["/playground/"])[0]
        if not key or not matcher(key):
            failures.record(address)
            page = SIGN_IN_PAGE.format(error='<p class="error">That key is not valid.</p>', next="/playground/")
            return HTMLResponse(page, status_code=401)
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/")
        return response

    return router
