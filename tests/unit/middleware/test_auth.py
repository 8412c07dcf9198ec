"""chains.middleware.auth's ApiKeyAuth in-process: 401 for API calls, a redirect to sign in for a browser, 429 for
an address that sent too many wrong keys or cookies not signed here; the sign-in cookie holds a session, never a
key. (The key matcher and the session codec: tests/unit/common/test_keys.py.)"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from chains.common.keys import FailedAuth, KeyMatcher, Session, key_id
from chains.common.scope import API_KEY_ID
from chains.middleware.auth import ApiKeyAuth
from tests.support.asgi import Inner, call, scope

KEY = "key-7f3a9c"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WallClock(Clock):
    def __init__(self) -> None:
        self.now = 1_800_000_000.0


def auth(limit: int = 3, window: float = 60, clock: Clock | None = None,
         wall: WallClock | None = None) -> tuple[ApiKeyAuth, Inner]:
    inner = Inner()
    matcher = KeyMatcher([KEY], session_ttl=600, clock=wall or WallClock())
    return ApiKeyAuth(inner, matcher, FailedAuth(limit, window, clock=clock or Clock())), inner


def session_cookie(middleware: ApiKeyAuth) -> str:
    return f"theme=dark; session={middleware.matcher.sessions.issue(KEY)}"


@pytest.mark.parametrize("headers", [{"authorization": f"Bearer {KEY}"}, {"authorization": f"bearer  {KEY} "},
                                     {"x-api-key": KEY}])
async def test_a_valid_key_in_any_of_its_places_is_let_through(headers: dict[str, str]) -> None:
    middleware, inner = auth()
    assert (await call(middleware, scope(headers=headers))).status == 200 and inner.called
    assert inner.calls[0]["scope"][API_KEY_ID] == key_id(KEY)


async def test_a_signed_session_is_let_through_as_its_key() -> None:
    middleware, inner = auth()
    answer = await call(middleware, scope(headers={"cookie": session_cookie(middleware)}))
    assert answer.status == 200 and inner.calls[0]["scope"][API_KEY_ID] == key_id(KEY)  # the same owner of runs


@pytest.mark.parametrize("cookie", [f"api_key={KEY}", f"session={KEY}", f"session=v1.{KEY}.x"])
async def test_the_key_itself_is_no_longer_a_cookie(cookie: str) -> None:
    middleware, inner = auth()
    answer = await call(middleware, scope(headers={"cookie": cookie}))
    assert answer.status == 401 and not inner.called


async def test_an_api_call_without_a_valid_key_gets_401_without_the_key_echoed() -> None:
    middleware, inner = auth()
    for headers in ({}, {"authorization": "Bearer wrong-key-123"}, {"x-api-key": ""}, {"cookie": "api_key="},
                    {"authorization": "Basic abc"}):
        answer = await call(middleware, scope(headers=headers))
        assert answer.status == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["type"] == "unauthorized" and b"wrong-key" not in answer.body
    assert not inner.called


async def test_a_browser_asking_for_a_page_is_sent_to_sign_in_and_back() -> None:
    middleware, _ = auth()
    answer = await call(middleware, scope(method="GET", path="/conversation/playground/", query=b"a=1&b=2",
                                          headers={"accept": "text/html,application/xhtml+xml"}))
    assert answer.status == 303
    location = urlsplit(answer.headers["location"])
    assert location.path == "/sign-in" and parse_qs(location.query) == {"next": ["/conversation/playground/?a=1&b=2"]}
    api = await call(middleware, scope(method="GET", path="/single-turn/input_schema",
                                       headers={"accept": "application/json"}))
    assert api.status == 401


@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("GET", "/sign-in"), ("POST", "/sign-in"),
                                              ("OPTIONS", "/chat")])
async def test_health_sign_in_and_preflights_need_no_key(method: str, path: str) -> None:
    middleware, inner = auth()
    assert (await call(middleware, scope(method=method, path=path))).status == 200 and inner.called


async def test_too_many_wrong_keys_from_one_address_are_throttled_until_the_window_passes() -> None:
    clock = Clock()
    middleware, inner = auth(limit=3, window=60, clock=clock)
    wrong = {"x-api-key": "guess"}
    for _ in range(3):
        assert (await call(middleware, scope(headers=wrong, client="10.0.0.9"))).status == 401
        clock.now += 1
    throttled = await call(middleware, scope(headers={"x-api-key": KEY}, client="10.0.0.9"))
    assert throttled.status == 429 and not inner.called  # not even the right key is compared now
    assert throttled.json()["type"] == "too_many_auth_failures"
    assert throttled.headers["retry-after"] == "57"  # failures at 0, 1 and 2 s; the first leaves the window at 60
    assert (await call(middleware, scope(headers={"x-api-key": KEY}, client="10.0.0.10"))).status == 200
    assert (await call(middleware, scope(client="10.0.0.9"))).status == 401  # no key tried: not throttled
    clock.now += 56
    assert (await call(middleware, scope(headers={"x-api-key": KEY}, client="10.0.0.9"))).headers["retry-after"] == "1"
    clock.now += 1
    assert (await call(middleware, scope(headers={"x-api-key": KEY}, client="10.0.0.9"))).status == 200


async def test_a_tampered_cookie_is_refused_cleared_and_counted_as_a_wrong_key() -> None:
    middleware, inner = auth(limit=3)
    cookie = middleware.matcher.sessions.issue(KEY)
    tampered = cookie[:-1] + ("A" if cookie[-1] != "A" else "Q")
    for _ in range(3):
        answer = await call(middleware, scope(headers={"cookie": f"session={tampered}"}, client="10.0.0.9"))
        assert answer.status == 401
        assert answer.headers["set-cookie"].startswith('session=""; ') and "Max-Age=0" in answer.headers["set-cookie"]
    throttled = await call(middleware, scope(headers={"x-api-key": KEY}, client="10.0.0.9"))
    assert throttled.status == 429 and not inner.called
    assert (await call(middleware, scope(headers={"cookie": f"session={cookie}"}, client="10.0.0.9"))).status == 429


async def test_an_ended_session_is_refused_and_cleared_but_not_counted() -> None:
    """Expired or signed out, a genuine session a browser still holds: sent to sign in again, not throttled."""
    wall = WallClock()
    middleware, _ = auth(limit=1, wall=wall)
    sessions = middleware.matcher.sessions
    revoked = sessions.verify(signed_out := sessions.issue(KEY))
    assert isinstance(revoked, Session)
    sessions.revoke(revoked)
    expired = sessions.issue(KEY)
    wall.now += 601
    page = {"accept": "text/html"}
    for cookie in (signed_out, expired, signed_out):
        answer = await call(middleware, scope(method="GET", path="/playground/",
                                              headers={"cookie": f"session={cookie}", **page}))
        assert answer.status == 303 and answer.headers["location"].startswith("/sign-in?next=")
        assert "Max-Age=0" in answer.headers["set-cookie"]
    assert (await call(middleware, scope(headers={"x-api-key": KEY}))).status == 200  # limit 1: nothing counted


async def test_a_key_in_a_header_wins_over_a_cookie() -> None:
    middleware, inner = auth()
    answer = await call(middleware, scope(headers={"x-api-key": KEY, "cookie": "session=garbage"}))
    assert answer.status == 200 and inner.called


async def test_the_cookie_is_cleared_as_secure_over_tls() -> None:
    middleware, _ = auth()
    answer = await call(middleware, scope(headers={"cookie": "session=garbage"}, scheme="https"))
    assert "; Secure" in answer.headers["set-cookie"]


async def test_requests_without_a_key_are_not_counted_as_failures() -> None:
    middleware, _ = auth(limit=1)
    for _ in range(5):
        assert (await call(middleware, scope())).status == 401
    assert (await call(middleware, scope(headers={"x-api-key": KEY}))).status == 200
