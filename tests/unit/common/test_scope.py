"""chains.common.scope: which requests run the model, and who the client is."""

from __future__ import annotations

import pytest

from chains.common.scope import CLIENT_ADDRESS, INVALID_ADDRESS, client_address, holds_a_stream, runs_the_model


def test_which_paths_run_the_model() -> None:
    for path in ("/chat", "/chat-token", "/chat-buffered", "/single-turn/invoke", "/conversation/stream/",
                 "/system-prompt/batch", "/x/stream_log", "/x/stream_events", "/x/c/abc/invoke"):
        assert runs_the_model(path), path
    for path in ("/chat/defaults", "/health", "/single-turn/input_schema", "/docs", "/playground/", "/sign-in"):
        assert not runs_the_model(path), path


def test_completions_run_the_model_and_models_do_not() -> None:
    assert runs_the_model("/v1/chat/completions")
    assert not runs_the_model("/v1/models") and not runs_the_model("/v1/models/conversation")
    assert not runs_the_model("/chat/runs/abc") and not runs_the_model("/chat/runs/abc/cancel")  # a run's state, cancel


def test_joining_a_run_holds_a_stream_and_runs_nothing() -> None:
    """A join starts no generation (the model's queue is not asked), but holds a stream: the per-client cap counts
    it, as it counts every request that runs the model."""
    join = "/chat/runs/AAAAAAAAAAAAAAAAAAAAAA/stream"
    assert not runs_the_model(join) and holds_a_stream(join)
    assert holds_a_stream("/chat") and holds_a_stream("/single-turn/stream") and holds_a_stream("/v1/chat/completions")
    for path in ("/chat/runs/abc", "/chat/runs/abc/cancel", "/health", "/v1/models"):
        assert not holds_a_stream(path), path


def test_the_client_is_the_connections_address() -> None:
    assert client_address({"client": ("10.0.0.7", 50000)}) == "10.0.0.7"
    assert client_address({"client": None}) == client_address({}) == "unknown"


@pytest.mark.parametrize(("given", "address"), [
    ("203.0.113.9", "203.0.113.9"),
    ("2001:DB8:0:0::1", "2001:db8::1"),  # one text per address: one bucket per client
    ("::ffff:203.0.113.9", "203.0.113.9"),  # IPv4-mapped: the IPv4 client it is
    ("fe80::1%eth0", "fe80::1"),  # a link-local peer, whichever interface
    ("::1", "::1"),
])
def test_an_address_is_normalised(given: str, address: str) -> None:
    assert client_address({"client": (given, 0)}) == address


@pytest.mark.parametrize("given", [
    "1.2.3.4 ending=done tokens=999 run_id=FAKE",  # X-Forwarded-For, as uvicorn passes it on from a trusted proxy
    '1.2.3.4" ending="done', "1.2.3.4\nstream end", "1.2.3.4\x85x=1", "fe80::1%eth0 x=1", "fe80::1%" + "a" * 40,
    "unknown", "localhost", "evil.example", "01.2.3.4", "1.2.3", "1.2.3.4.5", "[::1]", "", "1" * 10_000,
])
def test_what_is_not_an_ip_address_is_one_invalid_client(given: str) -> None:
    assert client_address({"client": (given, 0)}) == INVALID_ADDRESS


def test_the_address_is_computed_once_a_request() -> None:
    scope = {"client": ("::ffff:10.0.0.1", 1)}
    assert client_address(scope) == "10.0.0.1" and scope[CLIENT_ADDRESS] == "10.0.0.1"
    scope["client"] = ("10.9.9.9", 1)  # never happens within a request: shows that the scope's answer is kept
    assert client_address(scope) == "10.0.0.1"
