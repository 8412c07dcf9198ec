"""`/sign-in` and `/sign-out`: a signed session in a cookie, so that a person with a key can use the browser pages
(chains.middleware.auth). The cookie holds a session signed with the key, never the key (chains.common.keys)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Scope

from chains.common.keys import COOKIE, FailedAuth, KeyMatcher, Session, presented_session
from chains.common.responses import refuse
from chains.common.scope import client_address

SIGN_IN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in</title>
<style>body{{font:16px system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}}
input,button{{font:inherit;padding:.5rem;width:100%;box-sizing:border-box;margin:.25rem 0}}
.error{{color:#b00020}}</style></head>
<body><h1>Sign in</h1>{error}{signed_in}
<form method="post" action="/sign-in">
<label for="key">API key</label><input id="key" name="key" type="password" autocomplete="current-password" required>
<input type="hidden" name="next" value="{next}"><button type="submit">Sign in</button></form></body></html>"""

# Shown above the form to a browser that holds a valid session: the one place to end it.
SIGNED_IN = """<p>You are signed in.</p><form method="post" action="/sign-out">
<button type="submit">Sign out</button></form><p>Or sign in with another key:</p>"""


def set_session_cookie(response: Response, request: Request, value: str, max_age: int) -> None:
    """The sign-in cookie: HttpOnly, SameSite=Strict, the whole site, and Secure whenever the request came over
    TLS, directly or through a trusted proxy (uvicorn has set the scheme from X-Forwarded-Proto by then), so that
    the browser never sends it over plain HTTP."""
    response.set_cookie(COOKIE, value, max_age=max_age, path="/", secure=request.url.scheme == "https",
                        httponly=True, samesite="strict")


def clear_session_cookie(response: Response, scope: Scope) -> None:
    """Tells the browser to drop the sign-in cookie (its attributes as when it was set)."""
    response.delete_cookie(COOKIE, path="/", secure=scope.get("scheme") == "https", httponly=True,
                           samesite="strict")


def safe_next(target: str) -> str:
    """Only a path on this site: never an open redirect to another origin."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/playground/"


def same_origin(request: Request) -> bool:
    """Whether a form post comes from this site's own page (login CSRF: a page elsewhere must not be able to sign
    a visitor in with its own key, or out). Browsers send Origin on every POST; failing that, Referer. A request
    with neither is not from a browser page, and is allowed (curl)."""
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
    sessions = matcher.sessions

    def signed_in(request: Request) -> Session | None:
        cookie = presented_session(request.scope)
        session = sessions.verify(cookie) if cookie is not None else None
        return session if isinstance(session, Session) else None

    @router.get("/sign-in", response_class=HTMLResponse, include_in_schema=False)
    async def sign_in_page(request: Request, next: str = "/playground/") -> HTMLResponse:
        escaped = safe_next(next).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
        return HTMLResponse(SIGN_IN_PAGE.format(error="", signed_in=SIGNED_IN if signed_in(request) else "",
                                                next=escaped))

    @router.post("/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        if not same_origin(request):
            return refuse(403, "cross_origin", "sign-in is only accepted from this site's own sign-in page")
        address = client_address(request.scope)
        wait = failures.retry_after(address)
        if wait is not None:
            page = SIGN_IN_PAGE.format(error=f'<p class="error">Too many wrong keys; try again in {wait} s.</p>',
                                       signed_in="", next="/playground/")
            return HTMLResponse(page, status_code=429, headers={"Retry-After": str(wait)})
        # A plain urlencoded form, parsed here rather than adding python-multipart for two fields.
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        key, next = form.get("key", [""])[0], form.get("next", ["/playground/"])[0]
        if not key or not matcher(key):
            failures.record(address)
            page = SIGN_IN_PAGE.format(error='<p class="error">That key is not valid.</p>', signed_in="",
                                       next="/playground/")
            return HTMLResponse(page, status_code=401)
        response = RedirectResponse(safe_next(next), status_code=303)
        set_session_cookie(response, request, sessions.issue(key), sessions.max_age)
        return response

    @router.post("/sign-out", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        """Ends the session the cookie holds (revoked here: a copy of the cookie is refused too) and clears it.
        The answer is the same whatever the cookie held, so it tells a prober nothing."""
        if not same_origin(request):
            return refuse(403, "cross_origin", "sign-out is only accepted from this site's own pages")
        session = signed_in(request)
        if session is not None:
            sessions.revoke(session)
        response = RedirectResponse("/sign-in", status_code=303)
        clear_session_cookie(response, request.scope)
        return response

    return router
