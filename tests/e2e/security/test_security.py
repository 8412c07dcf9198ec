"""Bad input, limits, API keys, LangServe config lock-down and CORS, against live servers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.fixtures import app_fixture
from tests.support.servers import LiveServer
from tests.support.sse import sse_request

KEYS = ("key-one-3f9a7c", "key-two-b81d44")


limited_server = app_fixture(
    "limited-server", CHAT_PROVIDER="fake", FAKE_TOKEN_DELAY_MS="100", MAX_INPUT_CHARS="200", MAX_MESSAGES="5",
    MAX_STREAMS_PER_CLIENT="2", MAX_BODY_BYTES="65536", MAX_JSON_DEPTH="16",
    doc="Small limits, so that each can be crossed with a small request.")
# Wrong keys are tried on purpose here, from one address: the throttle is tested in test_attacks.py.
keyed_server = app_fixture("keyed-server", CHAT_PROVIDER="fake", API_KEYS=",".join(KEYS), FAKE_TOKEN_DELAY_MS="20",
                           AUTH_FAILURE_LIMIT="1000")


def nested(depth: int) -> str:
    return '{"message": ' + "[" * depth + "]" * depth + "}"


MESSAGES_OK = [{"role": "user", "content": "hi"}]
JSON = {"Content-Type": "application/json"}

# (name, method, path, request kwargs, expected status, text the error must contain)
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("chat: no message", "POST", "/chat", {"json": {}}, 422, "message"),
    ("chat: empty message", "POST", "/chat", {"json": {"message": ""}}, 422, "message"),
    ("chat: whitespace message", "POST", "/chat", {"json": {"message": " \n\t "}}, 422, "message"),
    ("chat: message not a string", "POST", "/chat", {"json": {"message": 42}}, 422, "message"),
    ("chat: message is a list", "POST", "/chat", {"json": {"message": ["hi"]}}, 422, "message"),
    ("chat: messages not a list", "POST", "/chat", {"json": {"messages": "hi"}}, 422, "messages"),
    ("chat: messages empty", "POST", "/chat", {"json": {"messages": []}}, 422, "messages"),
    ("chat: unknown role", "POST", "/chat", {"json": {"messages": [{"role": "wizard", "content": "x"}]}}, 422, "role"),
    ("chat: content not a string", "POST", "/chat", {"json": {"messages": [{"role": "user", "content": 7}]}}, 422,
     "content"),
    ("chat: content missing", "POST", "/chat", {"json": {"messages": [{"role": "user"}]}}, 422, "content"),
    ("chat: only assistant turns", "POST", "/chat", {"json": {"messages": [{"role": "assistant", "content": "x"}]}},
     422, "user turn"),
    ("chat: message over MAX_INPUT_CHARS", "POST", "/chat", {"json": {"message": "x" * 201}}, 422, "MAX_INPUT_CHARS=200"),
    ("chat: conversation over MAX_INPUT_CHARS", "POST", "/chat",
     {"json": {"messages": [{"role": "user", "content": "x" * 150}] * 2}}, 422, "MAX_INPUT_CHARS=200"),
    ("chat: too many messages", "POST", "/chat", {"json": {"messages": MESSAGES_OK * 6}}, 422, "MAX_MESSAGES=5"),
    ("chat: system prompt too long", "POST", "/chat", {"json": {"message": "hi", "system_prompt": "s" * 300}}, 422,
     "system_prompt"),
    ("chat: invalid JSON", "POST", "/chat", {"content": b'{"message": "hi"', "headers": JSON}, 422, "JSON"),
    ("chat: wrong Content-Type", "POST", "/chat", {"content": b'{"message": "hi"}',
                                                   "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
    ("chat: 10 MB body", "POST", "/chat", {"content": b"x" * 10_000_000, "headers": JSON}, 413, "MAX_BODY_BYTES"),
    ("chat: non-UTF-8 body", "POST", "/chat", {"content": b'{"message": "\xff\xfe"}', "headers": JSON}, 400, "UTF-8"),
    ("chat: deeply nested JSON", "POST", "/chat", {"content": nested(5000).encode(), "headers": JSON}, 400,
     "MAX_JSON_DEPTH"),
    ("chat: buffer_size 0", "POST", "/chat", {"json": {"message": "hi", "buffer_size": 0}}, 422, "buffer_size"),
    ("chat: buffer_size a word", "GET", "/chat", {"params": {"message": "hi", "buffer_size": "many"}}, 422,
     "buffer_size"),
    ("chat: timeout negative", "POST", "/chat", {"json": {"message": "hi", "timeout": -5}}, 422, "timeout"),
    ("chat: idle_timeout huge", "POST", "/chat", {"json": {"message": "hi", "idle_timeout": 1e9}}, 422, "idle_timeout"),
    ("chat: flush_ms 0", "POST", "/chat", {"json": {"message": "hi", "flush_ms": 0}}, 422, "flush_ms"),
    ("chat GET: no message", "GET", "/chat", {}, 422, "message"),
    ("chat-token: empty message", "POST", "/chat-token", {"params": {"message": ""}}, 422, "message"),
    ("chat-token: message too long", "POST", "/chat-token", {"params": {"message": "y" * 201}}, 422,
     "MAX_INPUT_CHARS"),
    ("chat-buffered: buffer_size 5000", "POST", "/chat-buffered", {"params": {"message": "hi", "buffer_size": 5000}},
     422, "buffer_size"),
    ("chat-timeout: timeout 0", "POST", "/chat-timeout", {"params": {"message": "hi", "timeout": 0}}, 422, "timeout"),
    ("chat-conversation: messages missing", "POST", "/chat-conversation", {"json": {}}, 422, "messages"),
    ("chat-conversation: content a dict", "POST", "/chat-conversation",
     {"json": {"messages": [{"role": "user", "content": {"a": 1}}]}}, 422, "content"),
    ("single-turn: empty input", "POST", "/single-turn/invoke", {"json": {"input": ""}}, 422, "input"),
    ("single-turn: input not a string", "POST", "/single-turn/invoke", {"json": {"input": {"a": 1}}}, 422, "input"),
    ("single-turn: input missing", "POST", "/single-turn/stream", {"json": {}}, 422, "input"),
    ("single-turn: over MAX_INPUT_CHARS", "POST", "/single-turn/invoke", {"json": {"input": "z" * 201}}, 422,
     "MAX_INPUT_CHARS"),
    ("system-prompt: message missing", "POST", "/system-prompt/invoke", {"json": {"input": {}}}, 422, "message"),
    ("conversation: unknown type", "POST", "/conversation/stream",
     {"json": {"input": {"messages": [{"type": "robot", "content": "x"}]}}}, 422, "role"),
    ("conversation: too many messages", "POST", "/conversation/invoke",
     {"json": {"input": {"messages": MESSAGES_OK * 6}}}, 422, "MAX_MESSAGES"),
    ("batch: inputs not a list", "POST", "/single-turn/batch", {"json": {"inputs": 5}}, 422, "inputs"),
    ("batch: inputs a string", "POST", "/single-turn/batch", {"json": {"inputs": "hi"}}, 422, "inputs"),
    ("invoke: non-UTF-8 body", "POST", "/single-turn/invoke", {"content": b'{"input": "\xc3\x28"}', "headers": JSON},
     400, "UTF-8"),
    ("invoke: deeply nested JSON", "POST", "/single-turn/invoke",
     {"content": ('{"input": ' + "[" * 5000 + "]" * 5000 + "}").encode(), "headers": JSON}, 400, "MAX_JSON_DEPTH"),
    ("invoke: wrong Content-Type", "POST", "/single-turn/invoke",
     {"content": b"input=hi", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "Content-Type"),
    ("invoke: config configurable", "POST", "/single-turn/invoke",
     {"json": {"input": "hi", "config": {"configurable": {"model_name": "gpt-4"}}}}, 422, "configurable"),
    ("stream: config callbacks", "POST", "/single-turn/stream",
     {"json": {"input": "hi", "config": {"callbacks": []}}}, 422, "callbacks"),
    ("batch: config recursion_limit", "POST", "/single-turn/batch",
     {"json": {"inputs": ["hi"], "config": {"recursion_limit": 1}}}, 422, "recursion_limit"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "names"),
                         [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_a_clear_4xx(limited_server: LiveServer, method: str, path: str, kwargs: dict[str, Any],
                                      status: int, names: str) -> None:
    response = httpx.request(method, limited_server.url + path, timeout=10, **kwargs)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert names in response.text, response.text[:500]
    assert "Traceback" not in response.text
    assert httpx.get(limited_server.url + "/health").status_code == 200  # still serving


def test_there_are_at_least_thirty_bad_requests() -> None:
    assert len(BAD_REQUESTS) >= 30


def test_concurrent_streams_per_client_are_limited(limited_server: LiveServer) -> None:
    host, port = "127.0.0.1", int(limited_server.url.rsplit(":", 1)[1])

    async def scenario() -> tuple[list[Any], httpx.Response]:
        streams = [asyncio.create_task(sse_request(host, port, "POST", "/chat", {"message": "hi"})) for _ in range(2)]
        await asyncio.sleep(0.5)  # both are streaming (20 tokens, 100 ms apart)
        async with httpx.AsyncClient() as client:
            third = await client.post(limited_server.url + "/chat", json={"message": "hi"})
        return await asyncio.gather(*streams), third

    streams, third = asyncio.run(scenario())
    assert third.status_code == 429
    assert third.headers["retry-after"] == "1"
    assert "MAX_STREAMS_PER_CLIENT=2" in third.json()["error"]
    assert all(s.events[-1].event == "done" for s in streams)
    assert httpx.post(limited_server.url + "/chat", json={"message": "hi"}, timeout=30).status_code == 200


# --- API keys ------------------------------------------------------------------------------------------------

PROTECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/single-turn/invoke", {"json": {"input": "hi"}}),
    ("POST", "/system-prompt/stream", {"json": {"input": {"message": "hi"}}}),
    ("POST", "/conversation/stream_events", {"json": {"input": {"messages": MESSAGES_OK}}}),
    ("GET", "/conversation/input_schema", {}),
    ("GET", "/single-turn/playground/", {}),
    ("POST", "/chat", {"json": {"message": "hi"}}),
    ("GET", "/chat", {"params": {"message": "hi"}}),
    ("POST", "/chat-token", {"params": {"message": "hi"}}),
    ("POST", "/chat-conversation", {"json": {"messages": MESSAGES_OK}}),
    ("POST", "/chat-buffered", {"params": {"message": "hi"}}),
    ("POST", "/chat-timeout", {"params": {"message": "hi"}}),
    ("GET", "/docs", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/playground/", {}),
]


def session_of(server: LiveServer, key: str) -> str:
    """The sign-in cookie's value for `key`: a signed session (chains.common.keys)."""
    response = httpx.post(server.url + "/sign-in", data={"key": key})
    assert response.status_code == 303
    return response.cookies["session"]


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_every_route_needs_a_key(keyed_server: LiveServer, method: str, path: str, kwargs: dict[str, Any]) -> None:
    url = keyed_server.url + path
    refused = httpx.request(method, url, timeout=10, **kwargs)
    assert refused.status_code == 401
    assert refused.json()["type"] == "unauthorized"
    wrong = httpx.request(method, url, timeout=10, headers={"Authorization": "Bearer not-a-key"}, **kwargs)
    assert wrong.status_code == 401 and "not-a-key" not in wrong.text
    raw_key_cookie = httpx.request(method, url, timeout=10, headers={"Cookie": f"session={KEYS[0]}"}, **kwargs)
    assert raw_key_cookie.status_code == 401  # a cookie holds a signed session, never the key itself
    for headers in ({"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": KEYS[1]},
                    {"Cookie": f"session={session_of(keyed_server, KEYS[0])}"}):
        allowed = httpx.request(method, url, timeout=30, headers=headers, **kwargs)
        assert allowed.status_code == 200, (headers, allowed.text[:300])


def test_health_stays_open(keyed_server: LiveServer) -> None:
    assert httpx.get(keyed_server.url + "/health").json()["status"] == "ok"


def test_a_browser_without_a_key_is_sent_to_sign_in(keyed_server: LiveServer) -> None:
    response = httpx.get(keyed_server.url + "/conversation/playground/?x=1", headers={"Accept": "text/html"})
    assert response.status_code == 303
    assert response.headers["location"] == "/sign-in?next=/conversation/playground/%3Fx%3D1"


def test_sign_in_sets_a_strict_http_only_cookie(keyed_server: LiveServer) -> None:
    response = httpx.post(keyed_server.url + "/sign-in", data={"key": KEYS[1], "next": "/chat?message=hi"})
    assert response.status_code == 303 and response.headers["location"] == "/chat?message=hi"
    cookie = response.headers["set-cookie"]
    assert "session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie and KEYS[1] not in cookie
    rejected = httpx.post(keyed_server.url + "/sign-in", data={"key": "guess-123", "next": "/"})
    assert rejected.status_code == 401 and "guess-123" not in rejected.text
    offsite = httpx.post(keyed_server.url + "/sign-in", data={"key": KEYS[0], "next": "//evil.example/"})
    assert offsite.headers["location"] == "/playground/"  # never an open redirect


def test_keys_never_reach_the_log(keyed_server: LiveServer) -> None:
    for key in (*KEYS, "guess-456"):
        httpx.post(keyed_server.url + "/chat", json={"message": "hi"}, headers={"X-API-Key": key}, timeout=30)
        httpx.post(keyed_server.url + "/sign-in", data={"key": key})
    log = keyed_server.output()
    assert not any(key in log for key in (*KEYS, "guess-456"))


def test_a_person_with_a_key_uses_the_chat_playground(keyed_server: LiveServer, page: Page) -> None:
    page.goto(keyed_server.url + "/conversation/playground/")
    expect(page.get_by_label("API key")).to_be_visible()
    page.get_by_label("API key").fill(KEYS[0])
    page.get_by_role("button", name="Sign in").click()
    box = page.get_by_placeholder("Send a message...")
    expect(box).to_be_visible(timeout=15_000)
    box.fill("你好")
    box.press("Enter")
    expect(page.get_by_text("line two.", exact=False).first).to_be_visible(timeout=15_000)
    events = page.evaluate("""async () => new Promise((resolve) => {
        const source = new EventSource('/chat?message=hi'); const kinds = [];
        source.addEventListener('start', () => kinds.push('start'));
        source.addEventListener('done', () => { kinds.push('done'); source.close(); resolve(kinds); });
        source.onerror = () => { source.close(); resolve(kinds.concat('error')); };
    })""")
    assert events == ["start", "done"]  # EventSource sends no headers: the cookie carries the key


# --- LangServe config lock-down ------------------------------------------------------------------------------

ATTEMPTS = [
    {"configurable": {"model_name": "gpt-4o"}},
    {"configurable": {"openai_api_base": "http://attacker.invalid/v1"}},
    {"configurable": {"openai_api_key": "sk-attacker"}},
    {"configurable": {"temperature": 2}},
    {"callbacks": [{"handler": "x"}]},
    {"recursion_limit": 1},
    {"max_concurrency": 1000},
    {"run_id": "00000000-0000-0000-0000-000000000000"},
    {"recursionLimit": 1},  # LangChain.js spellings: only its defaults pass
    {"maxConcurrency": 4},
    {"configurable": {}, "recursion_limit": 25, "temperature": 2},
]


@pytest.mark.parametrize("config", ATTEMPTS, ids=[json.dumps(a)[:40] for a in ATTEMPTS])
@pytest.mark.parametrize("endpoint", ["invoke", "stream", "stream_log", "stream_events", "batch"])
def test_config_cannot_change_the_model(fake_server: LiveServer, endpoint: str, config: dict[str, Any]) -> None:
    body: dict[str, Any] = {"config": config}
    if endpoint == "batch":
        body["inputs"] = ["hi"]
    else:
        body["input"] = "hi"
    response = httpx.post(f"{fake_server.url}/single-turn/{endpoint}", json=body, timeout=10)
    assert response.status_code == 422, response.text[:300]
    assert "not allowed" in response.text or "disallowed" in response.text


def test_labels_are_allowed_in_config(fake_server: LiveServer) -> None:
    response = httpx.post(f"{fake_server.url}/single-turn/invoke", timeout=10,
                          json={"input": "hi", "config": {"tags": ["ui"], "metadata": {"user": "ana"},
                                                          "run_name": "ui-call"}})
    assert response.status_code == 200


# The bodies LangServe's own clients send by default (captured from langserve 0.3.3's RemoteRunnable and
# @langchain/core 0.3's): each must be accepted on every endpoint.
PY_DEFAULT_CONFIG = {"tags": [], "metadata": {}, "callbacks": None, "recursion_limit": 25, "configurable": {}}
JS_DEFAULT_CONFIG = {"tags": [], "metadata": {}, "recursionLimit": 25}


@pytest.mark.parametrize("config", [PY_DEFAULT_CONFIG, JS_DEFAULT_CONFIG, {**JS_DEFAULT_CONFIG, "runName": "x"},
                                    {**PY_DEFAULT_CONFIG, "max_concurrency": None}], ids=["py", "js", "js-runName",
                                                                                         "py-max_concurrency"])
@pytest.mark.parametrize("endpoint", ["invoke", "stream", "stream_log", "stream_events", "batch"])
def test_clients_default_configs_are_accepted(fake_server: LiveServer, endpoint: str, config: dict[str, Any]) -> None:
    body: dict[str, Any] = {"input": "hi", "config": config, "kwargs": {}}
    if endpoint == "batch":  # LangChain.js sends one config and one kwargs object per input
        body = {"inputs": ["hi", "hi"], "config": [config, config], "kwargs": [{}, {}]}
    response = httpx.post(f"{fake_server.url}/single-turn/{endpoint}", json=body, timeout=10)
    assert response.status_code == 200, response.text[:300]


@pytest.mark.parametrize(("config", "named"), [({"tags": "ui"}, "tags"), ({"tags": [1]}, "tags"),
                                                ({"metadata": []}, "metadata"), ({"runName": 5}, "runName")])
def test_malformed_labels_are_refused(fake_server: LiveServer, config: dict[str, Any], named: str) -> None:
    response = httpx.post(f"{fake_server.url}/single-turn/invoke", json={"input": "hi", "config": config}, timeout=10)
    assert response.status_code == 422 and named in response.json()["detail"][0]["msg"]


def test_config_schema_offers_nothing_to_configure(fake_server: LiveServer) -> None:
    for chain in ("single-turn", "system-prompt", "conversation"):
        schema = httpx.get(f"{fake_server.url}/{chain}/config_schema").json()
        assert not schema.get("properties", {}).get("configurable")


# --- CORS ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/chat", "/chat-token", "/single-turn/stream"])
def test_cors_preflight(fake_server: LiveServer, path: str) -> None:
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "http://localhost"):
        allowed = httpx.options(fake_server.url + path, headers={"Origin": origin, **ask})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == origin
    for origin in ("https://evil.example", "http://localhost.evil.example", "http://127.0.0.1.nip.io:8000"):
        refused = httpx.options(fake_server.url + path, headers={"Origin": origin, **ask})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_cors_on_a_refusal_lets_the_browser_read_it(limited_server: LiveServer) -> None:
    response = httpx.post(limited_server.url + "/chat", json={"message": ""}, headers={"Origin": "http://localhost:5173"})
    assert response.status_code == 422
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_cors_lets_a_page_on_an_allowed_origin_read_its_run_id(fake_server: LiveServer) -> None:
    # Without Access-Control-Expose-Headers the browser hides X-Run-Id, and the page could not resume or cancel.
    response = httpx.post(fake_server.url + "/chat", json={"message": "hi"}, headers={"Origin": "http://localhost:5173"})
    assert response.status_code == 200 and response.headers["x-run-id"]
    assert "x-run-id" in response.headers["access-control-expose-headers"].lower()


# --- schemathesis over the whole OpenAPI document -------------------------------------------------------------

def test_schemathesis_finds_no_server_error_and_no_schema_violation(fake_server: LiveServer, tmp_path) -> None:
    """Every operation in /openapi.json, property-based: bounded examples, a fixed seed (reproducible in CI)."""
    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", f"{fake_server.url}/openapi.json", "--max-examples", "20", "--seed", "20261125",
         "--checks", "not_a_server_error,response_schema_conformance", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert "Selected: " in result.stdout and " passed" in summary
    assert "Server error" not in result.stdout and "violates schema" not in result.stdout


@pytest.mark.parametrize(("path", "status"), [
    ("/playground/", 200), ("/playground/app.js", 200), ("/playground/shared/sse-client.js", 200),
    ("/playground/shared/style.css", 200), ("/playground/shared/vendor/marked.esm.js", 200),
    ("/playground/screenshots/plain-desktop.png", 200),
    ("/playground/package.json", 404), ("/playground/package-lock.json", 404),
    ("/playground/node_modules/vite/package.json", 404), ("/playground/react/src/main.jsx", 404),
    ("/playground/vue/vite.config.js", 404), ("/playground/../server.py", 404), ("/playground/plain/app.js", 404),
    ("/playground/shared/%2e%2e/package.json", 404),
])
def test_only_the_pages_themselves_are_served(fake_server: LiveServer, path: str, status: int) -> None:
    assert httpx.get(fake_server.url + path).status_code == status
