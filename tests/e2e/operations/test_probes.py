"""The probes, on one replica: `/health/live` answers 200 while the process serves; `/health/ready` answers 200
when the replica can take new work, else 503 naming why. Each reason is produced for real, on its own:

- `draining`: SIGTERM while a run streams: not ready at once, new work refused with 503 `draining` and
  Retry-After, the run still ends `done`, then the process exits.
- `run_store_unreachable`: the run store's redis-server stopped (SIGSTOP), then resumed (SIGCONT).
- `no_upstream_reachable`: CHAT_PROVIDER=openai whose upstreams are closed loopback ports, then one comes up.
(`model_not_loaded`: the lead's tests.)

A probe must answer quickly whatever it waits for (HAProxy's `timeout check` in deploy/haproxy.cfg is 2 s;
kubelet's default timeoutSeconds is 1 s), and without an API key (a load balancer's check carries none).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from chains.models.fake import scripted_tokens
from tests.support.servers import (
    HOST,
    LiveServer,
    clean_env,
    free_port,
    running_app,
    start_process,
    start_redis,
    stopping,
)
from tests.support.sse import Event, SSEDecoder

PROBE_WITHIN = 2.0  # seconds a probe may take to answer, whatever the replica waits for
KEY = "probe-test-key"


def probe(server: LiveServer, path: str) -> httpx.Response:
    """One probe, without a key; it must answer within PROBE_WITHIN (a timeout fails the test)."""
    sent = time.monotonic()
    response = httpx.get(server.url + path, timeout=PROBE_WITHIN + 1)
    took = time.monotonic() - sent
    assert took < PROBE_WITHIN, f"{path} took {took:.2f} s"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response


def assert_live(server: LiveServer) -> None:
    live = probe(server, "/health/live")
    assert live.status_code == 200 and live.json() == {"status": "ok"}, live.text


def assert_ready(server: LiveServer) -> None:
    ready = probe(server, "/health/ready")
    assert ready.status_code == 200, ready.text
    assert (ready.json()["ready"], ready.json()["reasons"]) == (True, []), ready.text


def readiness_turns(server: LiveServer, reasons: list[str] | None, seconds: float) -> float:
    """Polls /health/ready until it says ready (`reasons` None) or 503 with exactly these reasons, each with its
    detail; returns how long that took."""
    started = time.monotonic()
    while True:
        response = probe(server, "/health/ready")
        body = response.json()
        if reasons is None and response.status_code == 200 and body["ready"] is True:
            return time.monotonic() - started
        if reasons is not None and response.status_code == 503:
            assert body["ready"] is False and body["reasons"] == reasons, body
            assert sorted(body["details"]) == sorted(reasons) and all(body["details"].values()), body
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"readiness is still {response.status_code} {body}"
        time.sleep(0.05)


def test_a_replica_that_can_take_work_is_live_and_ready_without_a_key() -> None:
    with stopping(start_redis()) as redis_server, running_app(
            "probes-ready", CHAT_PROVIDER="fake", RUN_STORE_URL=redis_server.url, API_KEYS=KEY) as server:
        assert_live(server)
        assert_ready(server)
        assert httpx.get(server.url + "/chat/defaults", timeout=5).status_code == 401  # the keys are on
        health = httpx.get(server.url + "/health", timeout=5).json()  # /health as it was
        assert (health["status"], health["ready"], health["provider"]) == ("ok", True, "fake"), health
    assert "Traceback" not in server.output()


class Follower(threading.Thread):
    """A `/chat` stream read in the background: its events as they arrive."""

    def __init__(self, server: LiveServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.events: list[Event] = []
        self.streaming = threading.Event()  # three tokens have arrived
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.server.url + "/chat", params={"message": "hi"}, timeout=30) as response:
                decoder = SSEDecoder()
                for text in response.iter_text():
                    self.events += decoder.feed(text)
                    if sum(e.event == "message" for e in self.events) >= 3:
                        self.streaming.set()
                self.events += decoder.end()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        finally:
            self.streaming.set()


def test_draining_after_sigterm_not_ready_at_once_new_work_refused_the_live_run_finishes() -> None:
    tokens, drain_seconds = 40, 20  # a 4 s run, far within the grace period
    with running_app("probes-draining", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS=str(tokens),
                     FAKE_TOKEN_DELAY_MS="100", DRAIN_SECONDS=str(drain_seconds)) as server:
        assert_ready(server)
        follower = Follower(server)
        follower.start()
        assert follower.streaming.wait(15) and follower.error is None
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert readiness_turns(server, ["draining"], 1.0) < 1.0  # at once
        assert_live(server)
        refused = httpx.post(server.url + "/chat", json={"message": "new work"}, timeout=5)
        assert refused.status_code == 503 and refused.json()["type"] == "draining", refused.text
        assert refused.json()["error"] and refused.headers["retry-after"].isdigit()
        follower.join(15)
        assert not follower.is_alive() and follower.error is None, follower.error
        done = follower.events[-1]
        assert done.event == "done" and done.json()["status"] == "completed", follower.events[-2:]
        assert [e.json()["token"] for e in follower.events if e.event == "message"] == scripted_tokens(tokens)
        # With no run left, it exits without waiting out the grace period.
        server.process.wait(10 + 5)
        assert time.monotonic() - signalled < drain_seconds, "it waited out DRAIN_SECONDS with nothing live"
    log = server.output()
    assert "Traceback" not in log and "Finished server process" in log


@contextmanager
def paused(process_id: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block, continued (SIGCONT) however the block ends."""
    os.kill(process_id, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process_id, signal.SIGCONT)


def test_run_store_unreachable_while_redis_is_stopped_ready_again_after() -> None:
    with stopping(start_redis()) as redis_server, running_app(
            "probes-redis", CHAT_PROVIDER="fake", RUN_STORE_URL=redis_server.url) as server:
        assert_ready(server)
        with paused(redis_server.process.pid):
            took = readiness_turns(server, ["run_store_unreachable"], 8)
            assert_live(server)
        readiness_turns(server, None, 10)
        assert_live(server)
    assert took < 8 and "Traceback" not in server.output()


def start_upstream_on(port: int) -> LiveServer:
    """tests.support.fault_upstream (OpenAI-compatible; `ok` by default) on this very port, up once /v1/models
    answers."""
    args = [sys.executable, "-m", "uvicorn", "tests.support.fault_upstream:app", "--host", HOST, "--port", str(port),
            "--log-level", "warning"]
    return start_process(args, clean_env(), "probes-upstream", "/v1/models", port)


def openai_settings(*ports: int) -> dict[str, Any]:
    """CHAT_PROVIDER=openai over these loopback upstreams, as tests/conftest.py points the app at one."""
    return {"CHAT_PROVIDER": "openai", "OPENAI_API_KEY": "sk-test-not-a-real-key", "OPENAI_MODEL": "fault",
            "OPENAI_BASE_URL": ",".join(f"http://{HOST}:{port}/v1" for port in ports), "OPENAI_MAX_RETRIES": "0"}


def test_no_upstream_reachable_while_every_upstream_is_closed_ready_once_one_answers() -> None:
    first, second = free_port(), free_port()  # nothing listens there
    with running_app("probes-upstream-app", **openai_settings(first, second)) as server:
        assert_live(server)
        readiness_turns(server, ["no_upstream_reachable"], 5)
        detail = probe(server, "/health/ready").json()["details"]["no_upstream_reachable"]
        assert str(first) not in detail and str(second) not in detail, detail  # upstreams named by position
        with stopping(start_upstream_on(second)):  # the second of the list comes up
            readiness_turns(server, None, 10)
            assert_live(server)
            answer = httpx.post(server.url + "/chat", json={"message": "hi"}, timeout=20)
            assert answer.status_code == 200 and "event: done" in answer.text, answer.text[-300:]
        readiness_turns(server, ["no_upstream_reachable"], 10)  # and gone again
    assert "Traceback" not in server.output()
