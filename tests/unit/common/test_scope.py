"""chains.common.scope: which requests run the model."""

from __future__ import annotations

from chains.common.scope import runs_the_model


def test_which_paths_run_the_model() -> None:
    for path in ("/chat", "/chat-token", "/chat-buffered", "/single-turn/invoke", "/conversation/stream/",
                 "/system-prompt/batch", "/x/stream_log", "/x/stream_events", "/x/c/abc/invoke"):
        assert runs_the_model(path), path
    for path in ("/chat/defaults", "/health", "/single-turn/input_schema", "/docs", "/playground/", "/sign-in"):
        assert not runs_the_model(path), path
