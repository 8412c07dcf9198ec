"""Runs across replicas: app processes on their own ports (and `--workers 2`) share one real redis-server. A run
started on A is resumed, inspected and cancelled through B; the bounds hold across them; Redis unreachable at
start-up is one config-error line; Redis stopped mid-stream stops nothing that was streaming and comes back by
itself."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from chains.hosting import launcher
from tests.support.fixtures import server_fixture
from tests.support.runs import read_events as read_sse_events
from tests.support.runs import runs_started, tokens
from tests.support.servers import (
    HOST,
    ROOT,
    LiveServer,
    clean_env,
    free_port,
    running_app,
    running_replicas,
    start_redis,
    stop_process,
)
from tests.support.sse import Event, SSEDecoder

TOKENS = 40
KEY = {"Authorization": "Bearer key-one"}
OTHER_KEY = {"Authorization": "Bearer key-two"}
SLOW = {"CHAT_PROVIDER": "fake", "FAKE_REPLY_TOKENS": str(TOKENS), "FAKE_TOKEN_DELAY_MS": "50"}  # a reply: 2 s
START = {"message": "hi", "on_disconnect": "continue"}


redis_server = server_fixture(lambda request: start_redis(), doc="A real redis-server on loopback.")


@pytest.fixture(scope="module")
def pair(redis_server: LiveServer) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Replicas A and B: two processes, one Redis, API keys on."""
    with running_replicas(("runs-redis-a", "runs-redis-b"), **SLOW, RUN_STORE_URL=redis_server.url,
                          API_KEYS="key-one,key-two") as (a, b):
        yield a, b
    for server in (a, b):
        assert "Traceback" not in server.output()


def read_events(server: LiveServer, method: str, path: str, stop_after_tokens: int | None = None,
                **kwargs: Any) -> tuple[httpx.Response, list[Event]]:
    """tests.support.runs.read_events with the first key, unless the call names its own headers."""
    kwargs.setdefault("headers", KEY)
    return read_sse_events(server, method, path, stop_after_tokens, **kwargs)


def positions(events: list[Event]) -> list[int]:
    return [int((e.id or "").rsplit(":", 1)[1]) for e in events]


@pytest.mark.parametrize("k", [0, 1, TOKENS // 2, TOKENS])
@pytest.mark.parametrize("how", ["resume route", "EventSource reconnect"])
def test_started_on_a_resumed_on_b_none_lost_or_doubled(pair: tuple[LiveServer, LiveServer], k: int,
                                                        how: str) -> None:
    a, b = pair
    started_a, started_b = runs_started(a), runs_started(b)
    response, first = read_events(a, "GET", "/chat", stop_after_tokens=k, params=START)
    run_id = response.headers["x-run-id"]
    assert len(tokens(first)) == k
    if how == "resume route":
        _, rest = read_events(b, "GET", f"/chat/runs/{run_id}/stream", headers={**KEY, "Last-Event-ID": first[-1].id})
    else:  # an EventSource reconnecting, through a load balancer that picked the other replica
        _, rest = read_events(b, "GET", "/chat", params=START, headers={**KEY, "Last-Event-ID": first[-1].id})
    events = first + rest
    assert positions(events) == list(range(TOKENS + 2))
    assert {(e.id or "").split(":")[0] for e in events} == {run_id}
    done = events[-1].json()
    assert events[-1].event == "done" and done["status"] == "completed"
    assert "".join(tokens(events)) == done["full_response"] and len(tokens(events)) == done["token_count"] == TOKENS
    assert (runs_started(a), runs_started(b)) == (started_a + 1, started_b)  # B joined: no second generation


class Follower(threading.Thread):
    """A listener connected to a server in the background: the run id as soon as the headers arrive, the events as
    they arrive."""

    def __init__(self, server: LiveServer, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.server, self.headers = server, headers
        self.run_id: str | None = None
        self.events: list[Event] = []
        self.started = threading.Event()  # three tokens have arrived

    def run(self) -> None:
        with httpx.stream("GET", self.server.url + "/chat", params=START, headers=self.headers, timeout=30) as response:
            self.run_id = response.headers["x-run-id"]
            decoder = SSEDecoder()
            for text in response.iter_text():
                self.events += decoder.feed(text)
                if sum(e.event == "message" for e in self.events) >= 3:
                    self.started.set()
        self.started.set()

    def tokens(self) -> int:
        return sum(e.event == "message" for e in list(self.events))


def test_cancel_through_b_stops_the_generation_on_a(pair: tuple[LiveServer, LiveServer]) -> None:
    a, b = pair
    listener = Follower(a, KEY)  # connected to A all along
    listener.start()
    assert listener.started.wait(30) and listener.run_id is not None
    run_id = listener.run_id
    seen_at_cancel = listener.tokens()
    sent = time.monotonic()
    cancel = httpx.post(b.url + f"/chat/runs/{run_id}/cancel", headers=KEY, timeout=10)
    answered = time.monotonic() - sent
    assert cancel.status_code == 200, cancel.text
    assert cancel.json() == {"run_id": run_id, "cancelled": True, "status": "cancelled",
                             "detail": "the run was cancelled"}
    state = httpx.get(a.url + f"/chat/runs/{run_id}", headers=KEY, timeout=10).json()
    assert state["status"] == "cancelled"  # B answered once A's generation had ended
    listener.join(30)
    done = listener.events[-1]
    assert done.event == "done" and done.json()["finish_reason"] == done.json()["status"] == "cancelled"
    assert "".join(tokens(listener.events)) == done.json()["full_response"]
    # Tokens come every 50 ms: a stop within 200 ms lets at most 4 more through, plus the ones already on the way
    # to the listener when the cancel was sent (a loose bound: this machine is shared).
    assert done.json()["token_count"] - seen_at_cancel <= 6, (done.json()["token_count"], seen_at_cancel, answered)
    assert answered < 2.0, answered  # B waited for A's terminal event, not for its own time limit
    time.sleep(0.3)  # nothing more from A
    assert httpx.get(a.url + f"/chat/runs/{run_id}", headers=KEY, timeout=10).json()["events"] == state["events"]
    again = httpx.post(b.url + f"/chat/runs/{run_id}/cancel", headers=KEY, timeout=10).json()
    assert (again["cancelled"], again["status"]) == (False, "cancelled") and "already ended" in again["detail"]
    replay = read_events(b, "GET", f"/chat/runs/{run_id}/stream")[1]
    assert [(e.id, e.data) for e in replay] == [(e.id, e.data) for e in listener.events]


def test_b_answers_as_a_would_another_key_bad_ids_unknown_runs(pair: tuple[LiveServer, LiveServer]) -> None:
    a, b = pair
    response, events = read_events(a, "GET", "/chat", params=START)
    run_id = response.headers["x-run-id"]
    other_id = read_events(a, "GET", "/chat", params=START, stop_after_tokens=0)[0].headers["x-run-id"]
    for method, path in (("GET", f"/chat/runs/{run_id}/stream"), ("GET", f"/chat/runs/{run_id}"),
                         ("POST", f"/chat/runs/{run_id}/cancel")):
        refused = httpx.request(method, b.url + path, headers=OTHER_KEY, timeout=10)
        assert refused.status_code == 404 and refused.json()["type"] == "not_found", (path, refused.text)
        unknown = httpx.request(method, b.url + path.replace(run_id, "A" * 22), headers=OTHER_KEY, timeout=10)
        assert refused.text == unknown.text.replace("A" * 22, run_id)  # as if the run did not exist
    state = httpx.get(b.url + f"/chat/runs/{run_id}", headers=KEY, timeout=10).json()
    assert (state["status"], state["events"], state["listeners"]) == ("completed", TOKENS + 2, None)
    for last_event_id, problem in ((f"{run_id}:x", "not an event id"), (f"{other_id}:1", "another run"),
                                   (f"{run_id}:999", "beyond")):
        bad = httpx.get(b.url + f"/chat/runs/{run_id}/stream", headers={**KEY, "Last-Event-ID": last_event_id},
                        timeout=10)
        assert bad.status_code == 400 and bad.json()["type"] == "invalid_event_id", bad.text
        assert problem in bad.json()["error"]
    over = httpx.get(b.url + f"/chat/runs/{run_id}/stream", headers={**KEY, "Last-Event-ID": events[-1].id},
                     timeout=10)
    assert over.status_code == 204  # the terminal event: nothing follows
    unknown = httpx.get(b.url + "/chat", params=START, headers={**KEY, "Last-Event-ID": f"{'B' * 22}:3"}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["type"] == "not_found"


def test_with_workers_2_join_and_cancel_work_whichever_worker_answers(redis_server: LiveServer) -> None:
    with running_app("runs-redis-workers", workers=2, **SLOW, RUN_STORE_URL=redis_server.url) as server:
        # Both workers take connections (each request below is a new one), so across these rounds the join and the
        # cancel land on the worker that does not generate the run more often than not.
        pids = {httpx.get(server.url + "/health", timeout=10).json()["pid"] for _ in range(40)}
        assert len(pids) == 2
        for _ in range(4):
            response, first = read_events(server, "GET", "/chat", stop_after_tokens=2, params=START)
            run_id = response.headers["x-run-id"]
            _, rest = read_events(server, "GET", f"/chat/runs/{run_id}/stream",
                                  headers={"Last-Event-ID": first[-1].id})
            assert positions(first + rest) == list(range(TOKENS + 2)) and rest[-1].json()["status"] == "completed"
            response, _ = read_events(server, "GET", "/chat", stop_after_tokens=2, params=START)
            run_id = response.headers["x-run-id"]
            cancel = httpx.post(server.url + f"/chat/runs/{run_id}/cancel", timeout=10).json()
            assert (cancel["cancelled"], cancel["status"]) == (True, "cancelled"), cancel
    assert "Traceback" not in server.output()  # read once it has stopped: its shutdown included


def test_the_bounds_hold_across_replicas(redis_server: LiveServer) -> None:
    with running_replicas(("runs-redis-bounds-c", "runs-redis-bounds-d"), **SLOW, RUN_STORE_URL=redis_server.url,
                          RUN_MAX_LIVE="1", RUN_TTL="1") as (c, d):
        response, _ = read_events(c, "GET", "/chat", stop_after_tokens=1, params=START, headers={})
        running = response.headers["x-run-id"]
        full = httpx.get(d.url + "/chat", params=START, timeout=10)  # the one live run is on C
        assert full.status_code == 503 and full.json()["type"] == "run_store_full", full.text
        assert full.headers["retry-after"].isdigit()
        assert httpx.post(d.url + f"/chat/runs/{running}/cancel", timeout=10).json()["cancelled"] is True
        response, events = read_events(d, "GET", "/chat", params=START, headers={})  # room again
        finished = response.headers["x-run-id"]
        assert events[-1].json()["status"] == "completed"
        assert httpx.get(c.url + f"/chat/runs/{finished}", timeout=10).json()["status"] == "completed"
        time.sleep(1.5)  # RUN_TTL=1 after its end: gone on every replica
        for server in (c, d):
            gone = httpx.get(server.url + f"/chat/runs/{finished}/stream", timeout=10)
            assert gone.status_code == 404 and gone.json()["type"] == "not_found"


def test_redis_unreachable_at_start_up_is_one_config_error_line() -> None:
    port = free_port()
    env = clean_env(CHAT_PROVIDER="fake", RUN_STORE_URL=f"redis://admin:hunter2-secret@{HOST}:{free_port()}/0")
    result = subprocess.run(launcher.command(HOST, port), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"config error: RUN_STORE_URL: cannot reach Redis at redis://{HOST}:"), \
        result.stderr
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_redis_stopped_mid_stream_then_back() -> None:
    redis_server = start_redis()
    with ExitStack() as stack:
        # Called last, once the apps have stopped (a Redis gone first would add "unreachable" lines to their logs),
        # on whichever redis-server runs by then: the first is stopped mid-test and a second started.
        stack.callback(lambda: stop_process(redis_server))
        a, b = stack.enter_context(running_replicas(("runs-redis-fault-a", "runs-redis-fault-b"), **SLOW,
                                                    RUN_STORE_URL=redis_server.url))
        listener = Follower(a, {})
        listener.start()
        assert listener.started.wait(30) and listener.run_id is not None
        run_id = listener.run_id
        stop_process(redis_server)
        for method, path in (("GET", f"/chat/runs/{run_id}/stream"), ("POST", f"/chat/runs/{run_id}/cancel"),
                             ("GET", f"/chat/runs/{run_id}")):
            lost = httpx.request(method, b.url + path, timeout=10)
            assert lost.status_code == 503 and lost.json()["type"] == "run_store_unavailable", (path, lost.text)
            assert lost.headers["retry-after"].isdigit() and "redis://" not in lost.text
        listener.join(30)
        events = listener.events  # the listener on A finished its stream as if nothing happened
        assert events[-1].event == "done" and events[-1].json()["status"] == "completed"
        assert positions(events) == list(range(TOKENS + 2))
        # New work is refused at once and cleanly while the store is away (readiness says so too).
        during = httpx.get(a.url + "/chat", params={"message": "hi"}, timeout=10)
        assert during.status_code == 503 and during.json()["type"] == "run_store_unavailable", during.text
        ready = httpx.get(a.url + "/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["reasons"] == ["run_store_unreachable"]

        redis_server = start_redis(redis_server.port)  # back, empty (nothing persisted)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # each replica notices by itself
            if httpx.get(b.url + f"/chat/runs/{run_id}", timeout=10).status_code == 200:
                break
            time.sleep(0.2)
        # A wrote the run that spanned the outage again, whole: B replays it.
        replay = read_events(b, "GET", f"/chat/runs/{run_id}/stream", headers={})[1]
        assert [(e.id, e.data) for e in replay] == [(e.id, e.data) for e in events]
        response, first = read_events(a, "GET", "/chat", stop_after_tokens=2, params=START, headers={})
        _, rest = read_events(b, "GET", f"/chat/runs/{response.headers['x-run-id']}/stream",
                              headers={"Last-Event-ID": first[-1].id})
        assert positions(first + rest) == list(range(TOKENS + 2))
    for server in (a, b):
        log = server.output()
        assert "Traceback" not in log and " 500 " not in log and "hunter2" not in log
        assert log.count("unreachable") <= 2  # one line per outage, not one per token
