"""chains.common.scope: which requests run the model, and who the client is."""

from __future__ import annotations

from chains.common.scope import client_address, holds_a_stream, runs_the_model


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
