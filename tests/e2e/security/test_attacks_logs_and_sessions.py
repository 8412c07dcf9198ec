"""Round two's items 4–6 against live servers on loopback: forged log fields, user text in the access log, and the
sign-in cookie.

- Forged fields: X-Forwarded-For from the trusted proxy (loopback, uvicorn's default FORWARDED_ALLOW_IPS) was
  logged as given, so `1.2.3.4 ending=done tokens=999 run_id=FAKE` became four fields of the stream-end line. Now a
  forwarded address that is not an IP address is the client `invalid`, and every text field is logfmt-quoted.
- User text: uvicorn's access line held the query (`GET /chat?message=讲个笑话`). Now its values are left out
  unless LOG_FULL_URLS, under the launcher and under plain `uvicorn server:app` alike.
- The cookie was the key itself, and never Secure. Now it holds a signed session: Secure over TLS (a trusted
  proxy's X-Forwarded-Proto too), ended by sign-out, by its expiry and by the key's removal from API_KEYS; a forged
  one counts as a wrong key.

The module's last test checks that the main server is healthy and has settled (tasks, threads, fds, RSS).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.attacks import ProcessStats, assert_settled, client_from, loopback, process_stats
from tests.support.fixtures import app_fixture, server_fixture
from tests.support.logs import logfmt_pairs
from tests.support.servers import HOST, LiveServer, clean_env, free_port, running_app, start_process

KEY = "logs-sessions-key-5b7e1f"
SECOND = "logs-sessions-second-key-c3a9d0"
COMMON = {"CHAT_PROVIDER": "fake", "FAKE_REPLY_TOKENS": "3", "FAKE_TOKEN_DELAY_MS": "5"}
FORGED = "1.2.3.4 ending=done tokens=999 run_id=FAKE"
STREAM_END_FIELDS = ["run_id", "route", "chain", "provider", "model", "ending", "finish_reason", "ttft_s", "tokens",
                     "prompt_tokens", "completion_tokens", "duration_s", "client"]
TUTORIAL = "讲个笑话"
RSS_GROWTH_BOUND_MB = 48


# --- the servers ---------------------------------------------------------------------------------------------

class Logged:
    def __init__(self, server: LiveServer, baseline: ProcessStats) -> None:
        self.server, self.baseline = server, baseline
        self.addresses = iter(range(1, 250))

    @property
    def url(self) -> str:
        return self.server.url

    def forwarded_for(self) -> dict[str, str]:
        """An address of this test's own, as the trusted proxy on loopback reports it."""
        return {"X-Forwarded-For": f"10.77.0.{next(self.addresses)}"}


@pytest.fixture(scope="module")
def logged() -> Iterator[Logged]:
    """Text log lines, two keys, a small wrong-key limit (tests that try wrong things do so from their own address)."""
    with running_app("logs-sessions-server", **COMMON, API_KEYS=f"{KEY},{SECOND}", LOG_FORMAT="text",
                     AUTH_FAILURE_LIMIT="3", AUTH_FAILURE_WINDOW="30") as server:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=30) as client:  # warm up
            client.post("/chat", json={"message": "hi"})
            client.get("/chat", params={"message": "hi"})
            client.post("/sign-in", data={"key": KEY})
            client.get("/playground/", headers={"Accept": "text/html"})
        time.sleep(0.5)
        yield Logged(server, process_stats(server))


json_full_urls_server = app_fixture("logs-json-full-urls", **COMMON, API_KEYS=KEY, LOG_FORMAT="json",
                                    LOG_FULL_URLS="true", doc="JSON stream lines; the access log with full URLs.")


def start_plain_uvicorn(_: pytest.FixtureRequest) -> LiveServer:
    """`uvicorn server:app`, no launcher: only SECOND is a key now (KEY was removed), sessions last 2 s."""
    port = free_port()
    return start_process([sys.executable, "-m", "uvicorn", "server:app", "--host", HOST, "--port", str(port)],
                         clean_env(**COMMON, API_KEYS=SECOND, SESSION_TTL="2"), "logs-plain-uvicorn", "/health", port)


plain_uvicorn_server = server_fixture(start_plain_uvicorn, doc="The app under plain uvicorn, KEY rotated out.")


# --- helpers -------------------------------------------------------------------------------------------------

def wait_for_line(server: LiveServer, predicate: Callable[[str], bool], seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while True:
        lines = [line for line in server.output().splitlines() if predicate(line)]
        if lines:
            assert len(lines) == 1, lines
            return lines[0]
        assert time.monotonic() < deadline, f"no such line in {server.log}"
        time.sleep(0.05)


def wait_for_log(server: LiveServer, predicate: Callable[[str], bool], seconds: float = 10) -> str:
    """The server's log once `predicate` holds for it."""
    deadline = time.monotonic() + seconds
    while not predicate(log := server.output()):
        assert time.monotonic() < deadline, f"not in {server.log}"
        time.sleep(0.05)
    return log


def stream_end_line(server: LiveServer, run_id: str) -> dict[str, str]:
    """The text stream-end line of this run, as its fields: each named once, in the line's one order."""
    line = wait_for_line(server, lambda text: " stream end " in text and f"run_id={run_id} " in text)
    pairs = logfmt_pairs(line.split(" stream end ", 1)[1])
    assert [key for key, _ in pairs] == STREAM_END_FIELDS, line
    return dict(pairs)


def raw_chat(port: int, forwarded_for: bytes) -> str:
    """POST /chat with this X-Forwarded-For, sent as raw bytes (httpx would refuse some); the run's id."""
    body = b'{"message": "hi"}'
    request = (b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-API-Key: "
               + KEY.encode() + b"\r\nX-Forwarded-For: " + forwarded_for + b"\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    run_id = re.search(rb"\r\nx-run-id: ([\w-]+)\r\n", answer, re.IGNORECASE)
    assert run_id, answer[:500]
    return run_id.group(1).decode()


def set_cookie(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.headers["set-cookie"])
    return jar


def signed_in(url: str, key: str = KEY, headers: dict[str, str] | None = None,
              client: httpx.Client | None = None) -> tuple[str, str]:
    """Signs in (as curl would: no Origin); the cookie's value and its whole Set-Cookie header."""
    response = (client or httpx).post(url + "/sign-in", data={"key": key, "next": "/"}, headers=headers or {})
    assert response.status_code == 303, response.text[:300]
    return set_cookie(response)["session"].value, response.headers["set-cookie"]


def with_cookie(value: str, **headers: str) -> dict[str, str]:
    return {"Cookie": f"session={value}", **headers}


# --- 4. forged log fields ------------------------------------------------------------------------------------

def test_a_forged_forwarded_for_is_one_invalid_client_and_forges_no_field(logged: Logged) -> None:
    """Issue: `client=1.2.3.4 ending=done tokens=999 run_id=FAKE`. Now: one client field, `invalid`; the fields
    are the stream's own."""
    response = httpx.post(logged.url + "/chat", json={"message": "hi"}, timeout=30,
                          headers={"X-API-Key": KEY, "X-Forwarded-For": FORGED})
    assert response.status_code == 200
    fields = stream_end_line(logged.server, response.headers["x-run-id"])
    assert fields["client"] == "invalid" and fields["tokens"] == "3" and fields["run_id"] != "FAKE"
    log = logged.server.output()
    assert "tokens=999" not in log and "run_id=FAKE" not in log
    assert re.search(r'invalid:0 - "POST /chat HTTP/1.1" 200', log)  # uvicorn's access line: not forged either


@pytest.mark.parametrize("forwarded_for", [
    b'1.2.3.4" ending="done', b"1.2.3.4\x85stream end run_id=FAKE client=9.9.9.9", b"1.2.3.4\ttokens=999",
    b"fe80::1%eth0 tokens=999", b"\xe2\x80\xa8tokens=999",
], ids=["quote", "NEL line break", "tab", "zone id", "U+2028 line separator"])
def test_quotes_and_line_breaks_in_a_forwarded_for_stay_out_of_the_line(logged: Logged, forwarded_for: bytes) -> None:
    run_id = raw_chat(logged.server.port, forwarded_for)
    fields = stream_end_line(logged.server, run_id)
    assert fields["client"] == "invalid" and fields["tokens"] == "3"
    assert not any(line.startswith(("stream end", "run_id=FAKE", "tokens=999", "client=9.9.9.9"))
                   for line in logged.server.output().splitlines())


def test_a_forwarded_address_is_logged_normalised(logged: Logged) -> None:
    response = httpx.post(logged.url + "/chat", json={"message": "hi"}, timeout=30,
                          headers={"X-API-Key": KEY, "X-Forwarded-For": "::ffff:10.20.30.40"})
    assert stream_end_line(logged.server, response.headers["x-run-id"])["client"] == "10.20.30.40"
    assert '10.20.30.40:0 - "POST /chat HTTP/1.1" 200' in logged.server.output()


def test_json_lines_stay_structured(json_full_urls_server: LiveServer) -> None:
    server = json_full_urls_server
    response = httpx.post(server.url + "/chat", json={"message": "hi"}, timeout=30,
                          headers={"X-API-Key": KEY, "X-Forwarded-For": FORGED})
    run_id = response.headers["x-run-id"]
    line = wait_for_line(server, lambda text: text.startswith('{"event":"stream_end"') and run_id in text)
    record = json.loads(line)
    assert list(record) == ["event", *STREAM_END_FIELDS]
    assert record["client"] == "invalid" and record["tokens"] == 3 and record["run_id"] == run_id


# --- 5. user text in the access log --------------------------------------------------------------------------

def tutorial_request(port: int, path: str, extra_header: bytes = b"") -> bytes:
    """The tutorial's curl: raw UTF-8 in the request line (the launcher's protocol percent-encodes it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: " + KEY.encode()
                     + b"\r\n" + extra_header + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def send_user_text(url: str, key: str, secret: str) -> None:
    """The secret in a query, served and refused. The wrong key comes from an address of its own (X-Forwarded-For
    from the trusted loopback), so that the browser's 127.0.0.1 is not throttled by it."""
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
        assert client.get("/chat", params={"message": secret}).status_code == 200
        assert client.post("/chat-token", params={"message": secret + "-token"}).status_code == 200
        refused = client.get("/chat", params={"message": secret},
                             headers={"X-API-Key": "wrong-key", "X-Forwarded-For": "10.78.0.1"})
        assert refused.status_code == 401


def forms_of(text: str) -> list[str]:
    return [text, quote(text), quote(text, safe=""), quote(text).lower(), text.replace("-", "%2D")]


def test_query_values_never_reach_the_log(logged: Logged) -> None:
    """Issue: `GET /chat?message=…` and the tutorial's `?message=讲个笑话` were logged in full."""
    secret = "zebra-umbrella-4471"
    send_user_text(logged.url, KEY, secret)
    assert tutorial_request(logged.server.port, f"/chat-token?message={TUTORIAL}").startswith(b"HTTP/1.1 200")
    log = wait_for_log(logged.server, lambda log: log.count('"POST /chat-token?message=… HTTP/1.1" 200') == 2)
    for text in (secret, secret + "-token", TUTORIAL):
        assert not any(form in log for form in forms_of(text)), text
    assert '"GET /chat?message=… HTTP/1.1" 200' in log and '"POST /chat-token?message=… HTTP/1.1" 200' in log
    assert '"GET /chat?message=… HTTP/1.1" 401' in log


def test_log_full_urls_turns_full_urls_back_on_and_still_forges_nothing(json_full_urls_server: LiveServer) -> None:
    secret = "zebra-kettle-9082"
    send_user_text(json_full_urls_server.url, KEY, secret)
    forged = b"X-Forwarded-For: " + FORGED.encode() + b"\r\n"
    answer = tutorial_request(json_full_urls_server.port, f"/chat-token?message={TUTORIAL}", forged)
    assert answer.startswith(b"HTTP/1.1 200")
    log = wait_for_log(json_full_urls_server, lambda log: f"message={quote(TUTORIAL)} HTTP" in log)
    assert f'"GET /chat?message={secret} HTTP/1.1" 200' in log
    assert f'"POST /chat-token?message={secret}-token HTTP/1.1" 200' in log
    # Full URLs, as the protocol percent-encoded them, from a client whose forwarded address is no address.
    assert f'invalid:0 - "POST /chat-token?message={quote(TUTORIAL)} HTTP/1.1" 200' in log


def test_plain_uvicorn_leaves_query_values_out_too(plain_uvicorn_server: LiveServer) -> None:
    secret = "zebra-lantern-3316"
    send_user_text(plain_uvicorn_server.url, SECOND, secret)
    httpx.get(plain_uvicorn_server.url + "/health", headers={"X-Forwarded-For": FORGED})
    log = wait_for_log(plain_uvicorn_server, lambda log: 'invalid:0 - "GET /health HTTP/1.1" 200' in log)
    assert not any(form in log for form in forms_of(secret))
    assert '"GET /chat?message=… HTTP/1.1" 200' in log
    assert "ending=done tokens=999" not in log


# --- 6. the sign-in cookie -----------------------------------------------------------------------------------

def test_the_cookie_is_secure_behind_a_trusted_tls_proxy_only(logged: Logged) -> None:
    """Issue: never Secure, even with `X-Forwarded-Proto: https` from the trusted proxy."""
    _, trusted = signed_in(logged.url, headers={"X-Forwarded-Proto": "https"})  # from 127.0.0.1: trusted
    assert "; Secure" in trusted
    _, direct = signed_in(logged.url)
    assert "Secure" not in direct  # plain HTTP: a Secure cookie would never be sent back
    with client_from(loopback(1), logged.url, timeout=10) as untrusted:  # 127.0.0.2: not FORWARDED_ALLOW_IPS
        _, forged = signed_in(logged.url, headers={"X-Forwarded-Proto": "https"}, client=untrusted)
    assert "Secure" not in forged


def test_the_cookie_is_not_the_key(logged: Logged) -> None:
    value, header = signed_in(logged.url)
    assert KEY not in value and quote(KEY) not in value and KEY not in header
    assert re.fullmatch(r"v1\.[\w-]{43}\.[\w-]{43}", value)
    for attribute in ("HttpOnly", "Max-Age=43200", "Path=/", "SameSite=strict"):
        assert attribute in header


def test_the_cookie_opens_the_browser_pages_and_the_raw_key_does_not(logged: Logged) -> None:
    value, _ = signed_in(logged.url)
    me = logged.forwarded_for()  # the raw keys below count as wrong ones: from an address of this test's own
    with httpx.Client(base_url=logged.url, timeout=30) as client:
        page = client.get("/conversation/playground/", headers=with_cookie(value, Accept="text/html"))
        assert page.status_code == 200 and "<html" in page.text.lower()
        events = client.get("/chat", params={"message": "hi"}, headers=with_cookie(value))  # what EventSource does
        assert events.status_code == 200 and "event: done" in events.text
        for old in (f"api_key={KEY}", f"session={KEY}"):  # the old cookie: the key itself
            assert client.get("/chat", params={"message": "hi"}, headers={"Cookie": old, **me}).status_code == 401
            refused = client.get("/playground/", headers={"Cookie": old, "Accept": "text/html", **me})
            assert refused.status_code == 303 and refused.headers["location"].startswith("/sign-in")


def test_in_a_browser_sign_out_ends_the_session_for_good(logged: Logged, page: Page) -> None:
    page.goto(logged.url + "/playground/")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(logged.url + "/playground/")
    (cookie,) = [c for c in page.context.cookies(logged.url) if c["name"] == "session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
    page.goto(logged.url + "/sign-in")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(logged.url + "/sign-in")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    assert not [c for c in page.context.cookies(logged.url) if c["name"] == "session"]
    # The same value, copied before sign-out, is refused: the session was revoked, not only forgotten.
    assert httpx.get(logged.url + "/chat/defaults", headers=with_cookie(cookie["value"])).status_code == 401
    refused = httpx.get(logged.url + "/playground/", headers=with_cookie(cookie["value"], Accept="text/html"))
    assert refused.status_code == 303


def test_a_key_removed_from_api_keys_takes_its_cookies_with_it(logged: Logged,
                                                               plain_uvicorn_server: LiveServer) -> None:
    """The plain-uvicorn server is the deployment restarted with KEY removed and SECOND kept: KEY's cookie is
    refused there, SECOND's (signed by the other process, no state shared) accepted."""
    removed, _ = signed_in(logged.url, KEY)
    kept, _ = signed_in(logged.url, SECOND)
    assert httpx.get(logged.url + "/chat/defaults", headers=with_cookie(removed)).status_code == 200
    after = plain_uvicorn_server.url + "/chat/defaults"
    assert httpx.get(after, headers=with_cookie(removed)).status_code == 401
    assert httpx.get(after, headers=with_cookie(kept)).status_code == 200


def test_an_expired_session_is_refused(plain_uvicorn_server: LiveServer) -> None:
    value, header = signed_in(plain_uvicorn_server.url, SECOND)
    assert "Max-Age=2" in header
    url = plain_uvicorn_server.url + "/chat/defaults"
    assert httpx.get(url, headers=with_cookie(value)).status_code == 200
    time.sleep(3.1)  # the signed expiry is the TTL rounded up to the second
    refused = httpx.get(url, headers=with_cookie(value))
    assert refused.status_code == 401 and "Max-Age=0" in refused.headers["set-cookie"]


def test_a_tampered_cookie_is_refused_and_counted_as_a_wrong_key(logged: Logged) -> None:
    value, _ = signed_in(logged.url)
    me, neighbour = logged.forwarded_for(), logged.forwarded_for()
    version, payload, mac = value.split(".")
    tampered = [f"{version}.{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BA'}",
                f"{version}.{'B' if payload[0] != 'B' else 'C'}{payload[1:]}.{mac}",  # another key's id
                f"{version}.{payload[:20]}{'x' if payload[20] != 'x' else 'y'}{payload[21:]}.{mac}"]
    with httpx.Client(base_url=logged.url, timeout=10) as client:
        for forged in tampered:  # AUTH_FAILURE_LIMIT is 3
            assert client.get("/chat/defaults", headers=with_cookie(forged, **me)).status_code == 401
        throttled = client.get("/chat/defaults", headers={"X-API-Key": KEY, **me})
        assert throttled.status_code == 429 and "retry-after" in throttled.headers
        assert client.get("/chat/defaults", headers=with_cookie(value, **me)).status_code == 429
        assert client.get("/chat/defaults", headers=with_cookie(value, **neighbour)).status_code == 200


# --- after all of them -----------------------------------------------------------------------------------------

def test_after_the_attacks_the_server_is_healthy_and_settled(logged: Logged) -> None:
    assert_settled(logged.server, logged.baseline, RSS_GROWTH_BOUND_MB)
    assert httpx.post(logged.url + "/chat", json={"message": "hi"}, headers={"X-API-Key": KEY},
                      timeout=30).status_code == 200
