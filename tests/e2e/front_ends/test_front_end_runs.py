"""Streams that survive, in Chromium: every reply is a run on the server, and the typewriter chats (plain, React,
Vue) follow it. A connection cut mid-reply from the server's side of the wire is rejoined with `Last-Event-ID`
and the reply finishes; Stop cancels the run; a reload re-attaches to it. None of them generates twice: the
server's `/health` counts the generations it started (`runs.started`). A raw `EventSource` survives the same cut.

The browser reaches the app through tests/support/cut_proxy.py, a loopback proxy the tests cut: the honest way to
drop a connection mid-body. The shared client's own rules (rejoin, give up, Stop) are tested at the end, on a
scripted `fetch`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Request, expect

from chains.models.fake import scripted_tokens
from tests.support.browser import squash
from tests.support.cut_proxy import CutProxy
from tests.support.fixtures import app_fixture
from tests.support.front_end_chat import PAGES, Chat
from tests.support.servers import ROOT, LiveServer
from tests.support.sse import parse_sse, run_positions

TOKENS = 100
REPLY = "".join(scripted_tokens(TOKENS))  # the server's reply to anything: 100 tokens 50 ms apart, ~5 s
RECONNECTING = "Connection lost: reconnecting…"
RUN_KEY_PREFIX = "typewriter-chat:run:"
CANCEL = re.compile(r"/chat/runs/([A-Za-z0-9_-]{22})/cancel$")
REJOIN = re.compile(r"/chat/runs/([A-Za-z0-9_-]{22})/stream$")


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    for framework in ("react", "vue"):
        assert (ROOT / "playground" / framework / "dist" / "index.html").is_file(), "run `make playground` first"


runs_server = app_fixture("fe-runs-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS=str(TOKENS),
                          FAKE_TOKEN_DELAY_MS="50")


@pytest.fixture
def proxy(runs_server: LiveServer) -> Iterator[CutProxy]:
    proxy = CutProxy(runs_server.port)
    yield proxy
    proxy.close()


@pytest.fixture(params=list(PAGES))
def front_end(request: pytest.FixtureRequest) -> str:
    return PAGES[request.param]


def generations(server: LiveServer) -> int:
    """How many generations the server has started (asked directly, not through the proxy)."""
    return httpx.get(server.url + "/health", timeout=10).json()["runs"]["started"]


def run_as_kept(server: LiveServer, run_id: str) -> dict[str, Any]:
    """The run's terminal event as the server keeps it: the whole run replayed (followed live if it still runs)."""
    response = httpx.get(f"{server.url}/chat/runs/{run_id}/stream", timeout=30)
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    assert events[-1].event == "done", [e.event for e in events]
    return events[-1].json()


def run_id_of(chat: Chat) -> str:
    """The run the page started: the `X-Run-Id` of its one `POST /chat`."""
    started = [r for r in chat.responses if r.url.split("?")[0] == chat.chat_url]
    assert len(started) == 1, [r.url for r in started]
    assert started[0].url.endswith("?on_disconnect=30"), started[0].url  # a run that outlives its connection
    return started[0].headers["x-run-id"]


def wait_until(condition, what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def real_errors(chat: Chat) -> list[str]:
    """Console errors but Chromium's own line for each request the cut or the refusing proxy failed."""
    return [m for m in chat.console_errors if not m.startswith("Failed to load resource")]


def expect_complete_reply(chat: Chat) -> None:
    reply = chat.wait_for_reply_end(timeout=45_000)
    expect(reply).to_have_attribute("data-status", "done")
    expect(reply.get_by_test_id("reconnecting")).to_have_count(0)
    assert chat.reply_html() == chat.rendered(REPLY)["html"]  # the exact full reply, nothing lost or repeated
    expect(reply.get_by_test_id("stats")).to_have_attribute("data-token-count", str(TOKENS))
    chat.expect_idle()


# --- the pages -----------------------------------------------------------------------------------------------------

def test_connection_cut_mid_reply_is_rejoined_and_the_reply_finishes(runs_server: LiveServer, proxy: CutProxy,
                                                                     page: Page, front_end: str) -> None:
    before = generations(runs_server)
    chat = Chat(page, SimpleNamespace(url=proxy.url), front_end).open()  # the page and its API through the proxy
    chat.send("tell me a long story")
    chat.wait_for_reply_length(15)

    assert proxy.cut(refuse=True) >= 1  # the network goes down mid-reply, and stays down a while
    reply = chat.reply()
    expect(reply.get_by_test_id("reconnecting")).to_have_text(RECONNECTING)
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(chat.stop_button).to_be_enabled()
    wait_until(lambda: proxy.refused >= 2, "the page to try to rejoin, and try again")
    expect(reply.get_by_test_id("reconnecting")).to_have_text(RECONNECTING)  # still honest: not back yet

    proxy.restore()
    expect_complete_reply(chat)
    assert generations(runs_server) - before == 1, "the rejoin started a second generation"

    # It rejoined the run it had started, after the last event it had handled.
    run_id = run_id_of(chat)
    rejoins = [r for r in chat.requests if REJOIN.search(r.url)]
    assert rejoins and all(REJOIN.search(r.url)[1] == run_id for r in rejoins)
    last_ids = [r.all_headers().get("last-event-id") or "" for r in rejoins]
    # (15 characters shown before the cut: a few tokens past the start event, seq 0)
    assert all(i.startswith(run_id + ":") and int(i.split(":")[1]) >= 3 for i in last_ids), last_ids
    # The reply only ever grew: nothing shown twice, nothing shown and taken back.
    states = [squash(s) for s in chat.reply_states() if s]
    assert all(b.startswith(a) for a, b in zip(states, states[1:])), states
    assert states[-1] == squash(REPLY)
    assert not chat.page_errors and not real_errors(chat), (chat.page_errors, chat.console_errors)


def test_stop_cancels_the_run(runs_server: LiveServer, proxy: CutProxy, page: Page, front_end: str) -> None:
    before = generations(runs_server)
    chat = Chat(page, SimpleNamespace(url=proxy.url), front_end).open()
    chat.send("tell me a long story")
    chat.wait_for_reply_length(15)
    chat.stop_button.click()

    reply = chat.reply()
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.get_by_test_id("stopped")).to_have_text("Stopped: partial reply")
    chat.expect_idle()
    run_id = run_id_of(chat)
    cancels = [r for r in chat.requests if CANCEL.search(r.url)]
    assert [(r.method, CANCEL.search(r.url)[1]) for r in cancels] == [("POST", run_id)]

    # The server ended the run as cancelled, long before its 100 tokens (a run left to its grace period would
    # have run on to the end): what the page shows is the run's partial reply, with the tokens it used.
    kept = run_as_kept(runs_server, run_id)
    assert kept["status"] == "cancelled" and kept["finish_reason"] == "cancelled"
    assert 0 < kept["token_count"] < TOKENS and kept["usage"]["completion_tokens"] == kept["token_count"]
    assert squash(chat.reply_text()) == squash(kept["full_response"])
    expect(reply.get_by_test_id("stats")).to_have_attribute("data-token-count", str(kept["token_count"]))
    assert generations(runs_server) - before == 1
    assert httpx.get(runs_server.url + "/health").json()["runs"]["live"] == 0
    assert not chat.page_errors and not real_errors(chat)


def test_reload_mid_reply_reattaches_to_the_run(runs_server: LiveServer, proxy: CutProxy, page: Page,
                                                front_end: str) -> None:
    before = generations(runs_server)
    chat = Chat(page, SimpleNamespace(url=proxy.url), front_end).open()
    chat.system_prompt.fill("Answer at length.")
    chat.send("tell me a long story")
    chat.wait_for_reply_length(15)
    run_id = run_id_of(chat)

    page.reload()
    # The conversation is back, and the reply re-attached to its run: replayed from its start, then followed.
    expect(chat.messages).to_have_count(2)
    expect(chat.messages.first.get_by_test_id("message-text")).to_have_text("tell me a long story")
    expect(chat.system_prompt).to_have_value("Answer at length.")
    expect_complete_reply(chat)
    assert generations(runs_server) - before == 1, "the reload started a second generation"
    assert [REJOIN.search(r.url)[1] for r in chat.requests if REJOIN.search(r.url)] == [run_id]
    assert not [r for r in chat.requests if CANCEL.search(r.url)], "leaving the page cancelled the run"
    keys = page.evaluate("Object.keys(sessionStorage)")
    assert not [k for k in keys if k.startswith(RUN_KEY_PREFIX)], "the finished reply is still kept for a reload"

    # The conversation goes on from the restored history.
    chat.send("go on")
    chat.wait_for_reply_length(5)
    assert chat.chat_bodies()[-1] == {
        "messages": [{"role": "user", "content": "tell me a long story"}, {"role": "assistant", "content": REPLY},
                     {"role": "user", "content": "go on"}],
        "system_prompt": "Answer at length."}
    chat.stop_button.click()
    expect(chat.reply()).to_have_attribute("data-status", "stopped")
    assert not chat.page_errors and not real_errors(chat)


# --- a browser's own EventSource -----------------------------------------------------------------------------------

FOLLOW_EVENT_SOURCE = """
(query) => {
  // Records everything an EventSource on GET /chat sees; the test reads window.__es. It is never closed: after
  // `done` it reconnects by itself with the terminal event's id, and the server's 204 must end it for good.
  const es = window.__es = {events: [], opens: 0, errors: 0, state: 0};
  const source = new EventSource('/chat?' + new URLSearchParams(query));
  const record = (type) => (e) => es.events.push({type, data: JSON.parse(e.data), id: e.lastEventId});
  source.addEventListener('start', record('start'));
  source.addEventListener('message', record('token'));
  source.addEventListener('done', record('done'));
  source.addEventListener('open', () => { es.opens += 1; });
  source.addEventListener('error', () => { es.errors += 1; es.state = source.readyState; });
}
"""


def test_event_source_survives_a_server_side_cut(runs_server: LiveServer, proxy: CutProxy, page: Page) -> None:
    before = generations(runs_server)
    requests: list[Request] = []
    statuses: list[int] = []
    page.on("request", lambda r: requests.append(r) if r.url.split("?")[0].endswith("/chat") else None)
    page.on("response", lambda r: statuses.append(r.status) if r.url.split("?")[0].endswith("/chat") else None)
    page.goto(proxy.url + "/playground/")  # same origin as the API
    page.evaluate(FOLLOW_EVENT_SOURCE, {"message": "讲个笑话", "on_disconnect": "30"})
    page.wait_for_function("window.__es.events.length > 10")
    assert proxy.cut() >= 1

    # EventSource reconnects by itself (after its retry delay) with Last-Event-ID: the server joins the run.
    page.wait_for_function("window.__es.events.some((e) => e.type === 'done')", timeout=45_000)
    # Then the stream ends; it reconnects once more with the terminal id, gets 204 and stops for good.
    page.wait_for_function("window.__es.state === EventSource.CLOSED", timeout=30_000)
    es = page.evaluate("window.__es")
    events = es["events"]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}, kinds
    run_id, positions = run_positions([e["id"] for e in events])
    assert positions == list(range(len(events))), "events lost or repeated across the cut"
    done = events[-1]["data"]
    assert done["status"] == "completed" and done["token_count"] == TOKENS
    assert "".join(e["data"]["token"] for e in events if e["type"] == "token") == done["full_response"] == REPLY
    assert es["opens"] == 2  # the first connection and the rejoin after the cut

    assert len(requests) == 3 and statuses == [200, 200, 204], (len(requests), statuses)
    resumed_after = [r.all_headers().get("last-event-id") for r in requests]  # Chromium's own header
    assert resumed_after[0] is None
    assert resumed_after[1].startswith(run_id + ":") and 10 <= int(resumed_after[1].split(":")[1]) < len(events) - 1
    assert resumed_after[2] == events[-1]["id"]
    assert generations(runs_server) - before == 1, "EventSource's reconnect started a second generation"


# --- the shared client on its own ----------------------------------------------------------------------------------

# streamChat against a scripted fetch: `script` is the responses in order, each {status, headers, chunks, cut}
# (cut: the body errors after its chunks, as a dropped connection does) or {fail: true} (no connection at all).
SCRIPTED_CLIENT = """
async ({script, graceSeconds, stopAfter, runId}) => {
  const { streamChat } = await import('/playground/shared/sse-client.js');
  const encoder = new TextEncoder();
  const requests = [];
  const realFetch = window.fetch;
  const controller = new AbortController();
  let next = 0;
  window.fetch = async (url, init = {}) => {
    const headers = {...(init.headers || {})};
    requests.push({url: String(url), method: init.method || 'GET', lastEventId: headers['Last-Event-ID'] || null});
    if (String(url).endsWith('/cancel')) return new Response('{"cancelled": true}', {status: 200});
    const step = script[Math.min(next++, script.length - 1)];
    if (step.fail) throw new TypeError('Failed to fetch');
    let stream;
    const chunks = step.chunks || [];
    let sent = 0;
    const body = new ReadableStream({  // a chunk per read, so a cut comes after them (an error drops what is queued)
      start(c) { stream = c; },
      pull(c) {
        if (sent < chunks.length) c.enqueue(encoder.encode(chunks[sent++]));
        else if (step.cut) c.error(new TypeError('network error'));
        else if (!step.open) c.close();
        else return new Promise(() => {}); // kept open, silent
      },
    }, {highWaterMark: 0});
    init.signal?.addEventListener('abort', () => { try { stream.error(new DOMException('aborted', 'AbortError')); } catch {} });
    const status = step.status ?? 200;
    return new Response(status === 204 ? null : body, {status, headers: step.headers ?? {'Content-Type': 'text/event-stream'}});
  };
  const tokens = [];
  const connection = [];
  try {
    const outcome = await streamChat({
      body: {message: 'x'}, signal: controller.signal, graceSeconds, rejoinDelays: [10, 20], runId,
      onToken: (t) => { tokens.push(t); if (tokens.length === stopAfter) controller.abort(); },
      onConnection: (state) => connection.push(state),
    });
    return {outcome, tokens, connection, requests};
  } finally {
    window.fetch = realFetch;
  }
}
"""

RUN = "AAAAAAAAAAAAAAAAAAAAAA"
SSE = {"Content-Type": "text/event-stream", "X-Run-Id": RUN}


def event(seq: int, data: str, name: str | None = None) -> str:
    return f"id: {RUN}:{seq}\n" + (f"event: {name}\n" if name else "") + f"data: {data}\n\n"


def token(seq: int, text: str) -> str:
    return event(seq, f'{{"token": "{text}", "token_count": {seq}}}')


START = event(0, f'{{"status": "started", "run_id": "{RUN}"}}', "start")


def done(seq: int, status: str, text: str) -> str:
    return event(seq, f'{{"status": "{status}", "full_response": "{text}", "token_count": {seq - 1}}}', "done")


def scripted(page: Page, script: list[dict], grace_seconds: float = 5, stop_after: int = 0,
             run_id: str | None = None) -> dict[str, Any]:
    return page.evaluate(SCRIPTED_CLIENT, {"script": script, "graceSeconds": grace_seconds, "stopAfter": stop_after,
                                           "runId": run_id})


def test_client_rejoins_after_the_last_event_it_handled(runs_server: LiveServer, page: Page) -> None:
    page.goto(runs_server.url + "/playground/")
    # Cut mid-event: "b" was half sent, so the rejoin asks for what follows "a" and gets "b" whole.
    result = scripted(page, [
        {"headers": SSE, "chunks": [START, token(1, "a"), token(2, "b")[:12]], "cut": True},
        {"fail": True},  # the network is still down: try again
        {"headers": SSE, "chunks": [token(2, "b"), done(3, "completed", "ab")]},
    ])
    assert result["outcome"]["status"] == "done" and result["tokens"] == ["a", "b"]
    assert result["connection"] == ["reconnecting", "reconnecting", "connected"]
    assert [(r["method"], r["url"], r["lastEventId"]) for r in result["requests"]] == [
        ("POST", "/chat?on_disconnect=5", None),
        ("GET", f"/chat/runs/{RUN}/stream", f"{RUN}:1"),
        ("GET", f"/chat/runs/{RUN}/stream", f"{RUN}:1"),
    ]

    # Re-attaching (after a reload): the whole run, from its start.
    result = scripted(page, [{"headers": SSE, "chunks": [START, token(1, "a"), done(2, "completed", "a")]}],
                      run_id=RUN)
    assert result["outcome"]["status"] == "done" and result["tokens"] == ["a"]
    assert [(r["url"], r["lastEventId"]) for r in result["requests"]] == [(f"/chat/runs/{RUN}/stream", None)]


def test_client_gives_up_when_the_run_cannot_be_rejoined(runs_server: LiveServer, page: Page) -> None:
    page.goto(runs_server.url + "/playground/")
    # The network stays down past the run's grace period: the server has cancelled it by then.
    result = scripted(page, [{"headers": SSE, "chunks": [START, token(1, "a")], "cut": True}, {"fail": True}],
                      grace_seconds=0.3)
    assert result["outcome"]["status"] == "error" and result["outcome"]["kind"] == "network"
    assert result["outcome"]["message"].endswith("the reply could not be resumed within 0.3 s")
    assert len(result["requests"]) >= 3 and set(result["connection"]) == {"reconnecting"}

    # The server no longer has the run (expired, or restarted): said at once.
    result = scripted(page, [
        {"headers": SSE, "chunks": [START, token(1, "a")], "cut": True},
        {"status": 404, "headers": {"Content-Type": "application/json"},
         "chunks": ['{"error": "no run: unknown, expired, or not yours", "type": "not_found"}']},
    ])
    assert result["outcome"] == {"status": "error", "kind": "network", "message": (
        "The connection dropped and the reply cannot be resumed: HTTP 404: no run: unknown, expired, or not yours")}
    assert len(result["requests"]) == 2

    # A stream that names no run cannot be rejoined: a connection problem, as before runs.
    result = scripted(page, [{"chunks": ['data: {"token": "a", "token_count": 1}\n\n'], "cut": True}])
    assert result["outcome"]["kind"] == "network" and len(result["requests"]) == 1


def test_client_stop_cancels_and_reads_the_cancelled_summary(runs_server: LiveServer, page: Page) -> None:
    page.goto(runs_server.url + "/playground/")
    # Stop after "a": the cancel is sent; "b" was already on its way; the run's cancelled `done` ends the reply.
    result = scripted(page, [{"headers": SSE, "chunks": [START, token(1, "a"), token(2, "b")], "open": True}],
                      stop_after=1)
    # (the scripted stream stays open without a `done`: the client closes it after STOP_WAIT_MS)
    assert result["outcome"] == {"status": "stopped"} and result["tokens"] == ["a", "b"]
    assert [(r["method"], r["url"]) for r in result["requests"]] == [
        ("POST", "/chat?on_disconnect=5"), ("POST", f"/chat/runs/{RUN}/cancel")]

    result = scripted(page, [{"headers": SSE, "chunks": [START, token(1, "a"), token(2, "b"),
                                                         done(3, "cancelled", "ab")]}], stop_after=1)
    assert result["outcome"]["status"] == "stopped" and result["outcome"]["done"]["full_response"] == "ab"

    # Stopped as the connection drops: the cancel is sent, nothing rejoins, the reply ends at once.
    result = scripted(page, [{"headers": SSE, "chunks": [START, token(1, "a")], "cut": True}, {"fail": True}],
                      stop_after=1)
    assert result["outcome"] == {"status": "stopped"} and result["connection"] == []
    assert [(r["method"], r["url"]) for r in result["requests"]] == [
        ("POST", "/chat?on_disconnect=5"), ("POST", f"/chat/runs/{RUN}/cancel")]


SETTLE_STOPPED = """
async () => {
  const { settle } = await import('/playground/shared/chat.js');
  const done = {status: 'cancelled', full_response: 'ab', token_count: 2, finish_reason: 'cancelled'};
  return settle({status: 'stopped', done}, 'ab');
}
"""


def test_a_stopped_run_keeps_its_summary(runs_server: LiveServer, page: Page) -> None:
    page.goto(runs_server.url + "/playground/")
    assert page.evaluate(SETTLE_STOPPED) == {"reply": {"status": "stopped", "stats": {
        "status": "cancelled", "full_response": "ab", "token_count": 2, "finish_reason": "cancelled"}}, "user": None}
