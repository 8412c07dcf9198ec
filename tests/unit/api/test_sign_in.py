"""chains.api.sign_in in the real app, in-process: the cookie the sign-in sets (a session, never the key; Secure
over TLS; HttpOnly, SameSite=Strict, Path=/, Max-Age = SESSION_TTL), and sign-out, which clears it and revokes
that session."""

from __future__ import annotations

from http.cookies import SimpleCookie

import httpx

from chains.common.keys import COOKIE
from tests.unit.api.app import client

KEY = "sign-in-unit-key-4c1d"
SETTINGS = {"api_keys": KEY, "session_ttl": 900}


def cookie_of(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.headers["set-cookie"])
    return jar


async def sign_in(http: httpx.AsyncClient) -> str:
    response = await http.post("/sign-in", data={"key": KEY, "next": "/chat/defaults"})
    assert response.status_code == 303 and response.headers["location"] == "/chat/defaults"
    return cookie_of(response)[COOKIE].value


async def test_the_cookie_holds_a_session_with_the_attributes_asked_for() -> None:
    async with client(**SETTINGS) as http:
        response = await http.post("/sign-in", data={"key": KEY})
    morsel = cookie_of(response)[COOKIE]
    assert morsel.value.startswith("v1.") and KEY not in morsel.value
    assert morsel["httponly"] and morsel["samesite"] == "strict" and morsel["path"] == "/"
    assert morsel["max-age"] == "900" and not morsel["secure"]  # plain HTTP: a Secure cookie would never come back


async def test_over_tls_the_cookie_is_secure() -> None:
    """uvicorn sets the scheme from the connection, or from a trusted proxy's X-Forwarded-Proto."""
    async with client(**SETTINGS) as http:
        http.base_url = httpx.URL("https://test")
        response = await http.post("/sign-in", data={"key": KEY})
    assert response.status_code == 303 and cookie_of(response)[COOKIE]["secure"]


async def test_the_session_opens_the_api_and_sign_out_ends_it() -> None:
    async with client(**SETTINGS) as http:
        value = await sign_in(http)
        http.cookies.clear()
        cookie = {"cookie": f"{COOKIE}={value}"}
        assert (await http.get("/chat/defaults", headers=cookie)).status_code == 200
        page = await http.get("/sign-in", headers=cookie)
        assert 'action="/sign-out"' in page.text  # signed in: the page offers to sign out
        out = await http.post("/sign-out", headers=cookie)
        assert out.status_code == 303 and out.headers["location"] == "/sign-in"
        assert cookie_of(out)[COOKIE]["max-age"] == "0"  # cleared
        refused = await http.get("/chat/defaults", headers=cookie)  # a copy of the cookie, after sign-out
        assert refused.status_code == 401
        assert 'action="/sign-out"' not in (await http.get("/sign-in", headers=cookie)).text


async def test_sign_out_from_elsewhere_is_refused_and_the_session_lives_on() -> None:
    async with client(**SETTINGS) as http:
        value = await sign_in(http)
        http.cookies.clear()
        cookie = {"cookie": f"{COOKIE}={value}"}
        refused = await http.post("/sign-out", headers={**cookie, "origin": "http://evil.example"})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
        assert (await http.get("/chat/defaults", headers=cookie)).status_code == 200


async def test_sign_out_answers_the_same_whatever_the_cookie() -> None:
    async with client(**SETTINGS) as http:
        answers = [await http.post("/sign-out", headers=headers)
                   for headers in ({}, {"cookie": f"{COOKIE}=garbage"}, {"cookie": f"{COOKIE}={KEY}"})]
    assert {(a.status_code, a.headers["location"], a.headers["set-cookie"].split(";")[0]) for a in answers} == {
        (303, "/sign-in", f'{COOKIE}=""')}
