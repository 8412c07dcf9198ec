"""A client that leaves while its stream is silent — waiting in the local model's queue, waiting for an upstream
that hangs before its first byte, waiting while the model evaluates a long prompt — is noticed at once: the
disconnect watch runs from the first byte of the response, not only when a token is written. Without it, nothing
is written before the first token, and a write to a closed connection is dropped without an error, so the
generation would run to its end for nobody."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.clients import LONG
from tests.support.fixtures import app_fixture, pointed_at
from tests.support.servers import LiveServer

# ~730 tokens: a few seconds of prompt evaluation on 2 cores, during which no token can be sent.
LONG_PROMPT = ("Here is a list of words: " + " ".join(f"word{i}" for i in range(200)) + ". Now forget them. " + LONG)

# A request on each kind of surface: ours (JSON and raw), LangServe's stream, and LangServe's /invoke (which
# answers only at the end; chains.middleware.cancel_when_client_leaves watches it).
SURFACES: dict[str, tuple[str, Any, bytes | None]] = {  # path, body, what arrives before the silence
    "chat": ("/chat", {"message": "{}"}, b"event: start"),
    "chat-token": ("/chat-token?message={}", None, b"200 OK"),
    "langserve-stream": ("/single-turn/stream", {"input": "{}"}, b"200 OK"),
    "langserve-invoke": ("/single-turn/invoke", {"input": "{}"}, None),
}


class Stream:
    """One request on a raw socket, read only as far as asked, then dropped: a client that goes away."""

    def __init__(self, server: LiveServer, path: str, body: Any = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        payload = json.dumps(body).encode() if body is not None else b""
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        self.received = b""

    def read_until(self, marker: bytes, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while marker not in self.received:
            assert time.monotonic() < deadline, f"{marker!r} did not come: {self.received[-300:]!r}"
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before {marker!r}: {self.received[-300:]!r}"
            self.received += chunk

    def unread(self) -> bytes:
        """Whatever has arrived and not been read yet."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return b""
        finally:
            self.sock.setblocking(True)

    def leave(self) -> float:
        self.sock.close()
        return time.monotonic()


def generations(server: LiveServer) -> int:
    return httpx.get(server.url + "/health", timeout=10).json()["generations"]


def seconds_until_free(server: LiveServer, since: float, limit: float) -> float:
    """Seconds from `since` until the local model has no generation running or waiting (at most `limit`)."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while client.get("/health").json()["generations"] and time.monotonic() - since < limit:
            time.sleep(0.02)
    return time.monotonic() - since


def request_for(surface: str, text: str) -> tuple[str, Any, bytes | None]:
    path, body, marker = SURFACES[surface]
    if body is None:
        return path.format(quote(text)), None, marker
    return path, json.loads(json.dumps(body).replace("{}", text)), marker


# --- waiting in the local model's queue -------------------------------------------------------------------------

@pytest.mark.parametrize("surface", SURFACES)
def test_leaving_while_queued_behind_another_generation_means_it_never_runs(long_local_server: LiveServer,
                                                                            surface: str) -> None:
    server = long_local_server
    running = Stream(server, "/chat", {"message": LONG})
    running.read_until(b'"token_count":1')  # the model is busy with a 2,000-token reply
    path, body, marker = request_for(surface, LONG)  # were it to run, a reply of up to 2,000 tokens
    queued = Stream(server, path, body)
    if marker:
        queued.read_until(marker)
    deadline = time.monotonic() + 10
    while generations(server) < 2:
        assert time.monotonic() < deadline, "the second request never joined the queue"
        time.sleep(0.02)
    time.sleep(0.3)  # silence: it waits for the model
    queued.leave()
    time.sleep(0.3)
    left = running.leave()  # the model is free now, unless the queued request still wants it
    waited = seconds_until_free(server, left, limit=20)
    print(f"{surface}: the model was free {1000 * waited:.0f} ms after the running client left")
    assert waited < 3, f"{surface}: a request whose client left while queued ran anyway ({waited:.1f}s)"


# --- evaluating a long prompt ----------------------------------------------------------------------------------

def test_leaving_during_prompt_evaluation_stops_the_generation_before_its_reply(long_local_server: LiveServer) -> None:
    server = long_local_server
    assert generations(server) == 0
    reference = Stream(server, "/chat", {"message": LONG_PROMPT})
    reference.read_until(b"event: start")
    started = time.monotonic()
    reference.read_until(b'"token_count":1')
    evaluation = time.monotonic() - started  # how long this prompt takes before its first token
    seconds_until_free(server, reference.leave(), limit=20)

    silent = Stream(server, "/chat", {"message": LONG_PROMPT})
    silent.read_until(b"event: start")
    time.sleep(min(0.3, evaluation / 4))
    assert b'"token"' not in silent.unread(), "the prompt was evaluated too quickly to leave during it"
    waited = seconds_until_free(server, silent.leave(), limit=60)
    print(f"prompt evaluation {evaluation:.1f}s; the model was free {waited:.1f}s after the client left")
    # Left during the evaluation: free once it ends (the first token), not after a reply of up to 1,300 tokens.
    assert waited < 2 * evaluation + 2, f"the generation went on {waited:.1f}s (evaluation {evaluation:.1f}s)"


# --- an upstream that hangs before its first byte -----------------------------------------------------------------

hanging_upstream_server = app_fixture(
    "silent-upstream-server", **pointed_at("fault_upstream", "fault", key="sk-test-not-a-key"), OPENAI_TIMEOUT="60",
    OPENAI_MAX_RETRIES="0", doc="Long upstream timeout and no retries: only the client's leaving can end a hung "
    "request early.")


@pytest.mark.parametrize("surface", SURFACES)
def test_leaving_while_the_upstream_hangs_closes_the_upstream_request(fault_upstream: LiveServer,
                                                                      hanging_upstream_server: LiveServer,
                                                                      surface: str) -> None:
    httpx.post(fault_upstream.url + "/_script", json={"faults": ["hang"]}).raise_for_status()
    path, body, marker = request_for(surface, "hi")
    client = Stream(hanging_upstream_server, path, body)
    if marker:
        client.read_until(marker)
    deadline = time.monotonic() + 10
    while not (log := httpx.get(fault_upstream.url + "/_log").json()):
        assert time.monotonic() < deadline, "the request never reached the upstream"
        time.sleep(0.02)
    time.sleep(0.3)  # the upstream has sent nothing: not a byte, not a header
    assert log[0]["closed"] is None
    left = time.time()
    client.leave()
    deadline = time.monotonic() + 10
    while (entry := httpx.get(fault_upstream.url + "/_log").json()[0])["closed"] is None:
        assert time.monotonic() < deadline, f"{surface}: the hung upstream request was never closed"
        time.sleep(0.01)
    print(f"{surface}: upstream request closed {1000 * (entry['closed'] - left):.0f} ms after the client left")
    assert entry["closed"] - left < 1.0
