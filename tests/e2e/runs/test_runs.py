"""Runs on a live server: resume with Last-Event-ID after a dropped connection, cancel, the disconnect policies,
the store's bounds, who may see a run, and every bad input — over real HTTP on loopback."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.support.clients import LONG
from tests.support.fixtures import ServeApp, app_fixture
from tests.support.runs import read_events, runs_started, tokens
from tests.support.servers import LiveServer, first_token_seconds
from tests.support.sse import Event, SSEDecoder, run_positions

TOKENS = 20
ENDLESS = {"CHAT_PROVIDER": "fake", "FAKE_REPLY_TOKENS": "100000", "FAKE_TOKEN_DELAY_MS": "10"}


runs_server = app_fixture("runs-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS=str(TOKENS), FAKE_TOKEN_DELAY_MS="30",
                          doc="Scripted tokens 30 ms apart: a reply takes ~0.6 s, long enough to cut it anywhere.")
endless_server = app_fixture("endless-server", **ENDLESS,
                             doc="Replies that would run for minutes: only a cancel or a disconnect ends them.")


def wait_for_status(server: LiveServer, run_id: str, seconds: float = 30) -> str:
    """The run's status once it has ended (or whatever it is when `seconds` have passed)."""
    deadline = time.monotonic() + seconds
    while True:
        status = httpx.get(server.url + f"/chat/runs/{run_id}", timeout=10).json()["status"]
        if status != "running" or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


@pytest.mark.parametrize("k", [0, 1, TOKENS // 2, TOKENS])
@pytest.mark.parametrize("how", ["resume route", "EventSource reconnect"])
def test_a_dropped_stream_resumes_with_last_event_id_none_lost_or_doubled(runs_server, k: int, how: str) -> None:
    before = runs_started(runs_server)
    response, first = read_events(runs_server, "GET", "/chat", stop_after_tokens=k,
                                  params={"message": "hi", "on_disconnect": "continue"})
    run_id = response.headers["x-run-id"]
    assert first[0].json()["run_id"] == run_id and len(tokens(first)) == k
    last_id = first[-1].id
    if how == "resume route":
        _, rest = read_events(runs_server, "GET", f"/chat/runs/{run_id}/stream", headers={"Last-Event-ID": last_id})
    else:  # what an EventSource does: the same request again, with the id of the last event it saw
        _, rest = read_events(runs_server, "GET", "/chat", params={"message": "hi", "on_disconnect": "continue"},
                              headers={"Last-Event-ID": last_id})
    events = first + rest
    assert run_positions([e.id for e in events]) == (run_id, list(range(TOKENS + 2)))
    done = events[-1].json()
    assert done["status"] == "completed" and "".join(tokens(events)) == done["full_response"]
    assert len(tokens(events)) == done["token_count"] == TOKENS
    assert runs_started(runs_server) == before + 1  # the reconnect joined the run: no second generation


def test_last_event_id_also_works_as_a_query_and_a_finished_run_replays_whole(runs_server) -> None:
    response, live = read_events(runs_server, "POST", "/chat", json={"message": "hi"})
    run_id = response.headers["x-run-id"]
    _, replay = read_events(runs_server, "GET", f"/chat/runs/{run_id}/stream")
    assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in live]
    _, tail = read_events(runs_server, "GET", f"/chat/runs/{run_id}/stream",
                          params={"last_event_id": live[-3].id})
    assert [e.id for e in tail] == [e.id for e in live[-2:]]
    over = httpx.get(runs_server.url + f"/chat/runs/{run_id}/stream", headers={"Last-Event-ID": live[-1].id})
    assert over.status_code == 204  # nothing after the terminal event: an EventSource stops reconnecting


def test_cancel_ends_every_listener_with_the_partial_reply_and_is_idempotent(endless_server) -> None:
    response, first = read_events(endless_server, "GET", "/chat", stop_after_tokens=3,
                                  params={"message": "hi", "on_disconnect": "continue"})
    run_id = response.headers["x-run-id"]
    cancel = httpx.post(endless_server.url + f"/chat/runs/{run_id}/cancel", timeout=10)
    assert cancel.status_code == 200
    assert cancel.json() == {"run_id": run_id, "cancelled": True, "status": "cancelled",
                             "detail": "the run was cancelled"}
    _, rest = read_events(endless_server, "GET", f"/chat/runs/{run_id}/stream", headers={"Last-Event-ID": first[-1].id})
    done = rest[-1]
    assert done.event == "done"
    summary = done.json()
    assert summary["status"] == summary["finish_reason"] == "cancelled"
    sent = tokens(first + rest)
    assert summary["full_response"] == "".join(sent) and summary["token_count"] == len(sent) >= 3
    assert summary["usage"]["completion_tokens"] >= len(sent) and summary["usage"]["prompt_tokens"] > 0
    again = httpx.post(endless_server.url + f"/chat/runs/{run_id}/cancel", timeout=10).json()
    assert again["cancelled"] is False and again["status"] == "cancelled" and "already ended" in again["detail"]


def test_a_listener_connected_during_the_cancel_gets_the_cancelled_terminal_event(endless_server) -> None:
    response, first = read_events(endless_server, "GET", "/chat", stop_after_tokens=1,
                                  params={"message": "hi", "on_disconnect": "continue"})
    run_id = response.headers["x-run-id"]
    listened: list[Event] = []

    def listen() -> None:
        listened.extend(read_events(endless_server, "GET", f"/chat/runs/{run_id}/stream",
                                    headers={"Last-Event-ID": first[-1].id})[1])

    thread = threading.Thread(target=listen)
    thread.start()
    deadline = time.monotonic() + 10
    while httpx.get(endless_server.url + "/health").json()["runs"]["live"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the listener is following live tokens
    httpx.post(endless_server.url + f"/chat/runs/{run_id}/cancel", timeout=10)
    thread.join(timeout=20)
    assert listened and listened[-1].event == "done" and listened[-1].json()["status"] == "cancelled"
    assert len(tokens(listened)) > 0


def test_by_default_a_disconnect_cancels_the_run(endless_server) -> None:
    response, first = read_events(endless_server, "GET", "/chat", stop_after_tokens=2, params={"message": "hi"})
    run_id = response.headers["x-run-id"]
    assert wait_for_status(endless_server, run_id) == "cancelled"
    _, replay = read_events(endless_server, "GET", f"/chat/runs/{run_id}/stream")
    assert replay[-1].json()["finish_reason"] == "cancelled"


def test_a_grace_period_keeps_the_run_for_a_rejoin_then_cancels(endless_server) -> None:
    response, first = read_events(endless_server, "GET", "/chat", stop_after_tokens=2,
                                  params={"message": "hi", "on_disconnect": "3"})
    run_id = response.headers["x-run-id"]
    time.sleep(0.5)
    with httpx.stream("GET", endless_server.url + f"/chat/runs/{run_id}/stream", timeout=30,
                      headers={"Last-Event-ID": first[-1].id}) as rejoined:
        decoder, more = SSEDecoder(), []
        for text in rejoined.iter_text():
            more += decoder.feed(text)
            if len(tokens(more)) >= 5:
                break  # still generating after the first disconnect: the rejoin kept it
    assert run_positions([e.id for e in first + more])[1][:len(first) + 5] == list(range(len(first) + 5))
    assert httpx.get(endless_server.url + f"/chat/runs/{run_id}").json()["status"] == "running"
    assert wait_for_status(endless_server, run_id) == "cancelled"  # nobody rejoins now: cancelled after 3 s


@pytest.mark.parametrize(("path", "headers", "params", "status", "kind"), [
    ("/chat/runs/{run}/stream", {"Last-Event-ID": "garbage"}, {}, 400, "invalid_event_id"),
    ("/chat/runs/{run}/stream", {"Last-Event-ID": "{other}:1"}, {}, 400, "invalid_event_id"),
    ("/chat/runs/{run}/stream", {"Last-Event-ID": "{run}:999"}, {}, 400, "invalid_event_id"),
    ("/chat/runs/{run}/stream", {}, {"last_event_id": "{run}:x"}, 400, "invalid_event_id"),
    ("/chat/runs/AAAAAAAAAAAAAAAAAAAAAA/stream", {}, {}, 404, "not_found"),
    ("/chat", {"Last-Event-ID": "not-an-id"}, {"message": "hi"}, 400, "invalid_event_id"),
    ("/chat", {"Last-Event-ID": "AAAAAAAAAAAAAAAAAAAAAA:3"}, {"message": "hi"}, 404, "not_found"),
])
def test_bad_resumes_get_a_clear_4xx(runs_server, path: str, headers: dict[str, str], params: dict[str, str],
                                     status: int, kind: str) -> None:
    runs = [httpx.post(runs_server.url + "/chat", json={"message": "hi"}, timeout=30).headers["x-run-id"]
            for _ in range(2)]
    fill = {"run": runs[0], "other": runs[1]}
    response = httpx.get(runs_server.url + path.format(**fill), timeout=10,
                         headers={k: v.format(**fill) for k, v in headers.items()},
                         params={k: v.format(**fill) for k, v in params.items()})
    assert response.status_code == status, response.text
    assert response.json()["type"] == kind and response.json()["error"]


def test_malformed_run_ids_and_policies_are_422_naming_the_field(runs_server) -> None:
    bad_run = httpx.post(runs_server.url + "/chat/runs/short/cancel", timeout=10)
    assert bad_run.status_code == 422 and "run_id" in bad_run.text
    assert httpx.post(runs_server.url + "/chat/runs/AAAAAAAAAAAAAAAAAAAAAA/cancel").json()["type"] == "not_found"
    bad_policy = httpx.get(runs_server.url + "/chat", params={"message": "hi", "on_disconnect": "sometimes"})
    assert bad_policy.status_code == 422 and "on_disconnect" in bad_policy.text
    too_long = httpx.get(runs_server.url + "/chat", params={"message": "hi", "on_disconnect": "99999"})
    assert too_long.status_code == 422


def test_the_store_refuses_beyond_its_live_runs_and_forgets_after_its_ttl(serve_app: ServeApp) -> None:
    server = serve_app("runs-bounds-server", **ENDLESS, RUN_MAX_LIVE="1", RUN_TTL="1")
    response, first = read_events(server, "GET", "/chat", stop_after_tokens=1,
                                  params={"message": "hi", "on_disconnect": "continue"})
    run_id = response.headers["x-run-id"]
    full = httpx.post(server.url + "/chat", json={"message": "hi"}, timeout=10)
    assert full.status_code == 503 and full.headers["retry-after"]
    assert full.json()["type"] == "run_store_full"
    httpx.post(server.url + f"/chat/runs/{run_id}/cancel", timeout=10)
    assert httpx.post(server.url + "/chat", json={"message": "hi", "timeout": 0.2}, timeout=30).status_code == 200
    time.sleep(1.5)  # RUN_TTL=1: the finished run is forgotten
    gone = httpx.get(server.url + f"/chat/runs/{run_id}/stream", timeout=10)
    assert gone.status_code == 404 and gone.json()["type"] == "not_found"


def test_a_run_is_visible_only_to_the_key_that_started_it(serve_app: ServeApp) -> None:
    server = serve_app("runs-keys-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="5", API_KEYS="key-one,key-two")
    one, two = {"Authorization": "Bearer key-one"}, {"X-API-Key": "key-two"}
    response, events = read_events(server, "POST", "/chat", json={"message": "hi"}, headers=one)
    run_id = response.headers["x-run-id"]
    for path, method in ((f"/chat/runs/{run_id}/stream", "GET"), (f"/chat/runs/{run_id}/cancel", "POST")):
        other = httpx.request(method, server.url + path, headers=two, timeout=10)
        assert other.status_code == 404 and other.json()["type"] == "not_found"  # as if it did not exist
        assert httpx.request(method, server.url + path, timeout=10).status_code == 401
    joined = httpx.get(server.url + "/chat", params={"message": "hi"}, headers={**two, "Last-Event-ID": events[1].id})
    assert joined.status_code == 404
    _, replay = read_events(server, "GET", f"/chat/runs/{run_id}/stream", headers=one)
    assert [e.data for e in replay] == [e.data for e in events]


def test_cancel_stops_the_embedded_model_and_frees_it_for_the_next_request(long_local_server) -> None:
    response, first = read_events(long_local_server, "POST", "/chat", stop_after_tokens=3,
                                  params={"on_disconnect": "continue"}, json={"message": LONG})
    run_id = response.headers["x-run-id"]
    outcome = httpx.post(long_local_server.url + f"/chat/runs/{run_id}/cancel", timeout=10).json()
    assert outcome["cancelled"] is True
    _, rest = read_events(long_local_server, "GET", f"/chat/runs/{run_id}/stream", headers={"Last-Event-ID": first[-1].id})
    summary = rest[-1].json()
    assert summary["finish_reason"] == "cancelled" and summary["token_count"] < 2000
    assert summary["usage"]["prompt_tokens"] > 10 and summary["usage"]["completion_tokens"] >= summary["token_count"]
    # The decode thread has let go of the model (a 2,000-token reply would hold it for ~20 s) …
    deadline = time.monotonic() + 5  # it stops at its next token; a busy machine may take a moment
    while httpx.get(long_local_server.url + "/health").json()["generations"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert httpx.get(long_local_server.url + "/health").json()["generations"] == 0
    # … and the next request gets it.
    assert first_token_seconds(long_local_server.url) > 0
