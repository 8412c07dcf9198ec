"""A client that goes away, or a timeout, stops the generation: the embedded model is free for the next request."""

from __future__ import annotations

import httpx

from tests.support.clients import LONG, read_then_leave
from tests.support.servers import first_token_seconds
from tests.support.sse import parse_sse


def test_disconnect_frees_the_model_for_the_next_request(long_local_server) -> None:
    # The abandoned reply would run on for 2,000 tokens (~20 s) if the disconnect were not acted on.
    read_then_leave(long_local_server.url, "/chat", 3, json={"message": LONG})
    waited = first_token_seconds(long_local_server.url)
    assert waited < 5, f"the next request waited {waited:.1f}s behind an abandoned generation"


def test_disconnect_on_a_raw_variant_frees_the_model(long_local_server) -> None:
    read_then_leave(long_local_server.url, "/chat-token", 3, params={"message": LONG})
    assert first_token_seconds(long_local_server.url) < 5


def test_timeout_stops_the_model(long_local_server) -> None:
    response = httpx.post(long_local_server.url + "/chat", json={"message": LONG, "timeout": 1}, timeout=60)
    events = parse_sse(response.text)
    sent = [e.json()["token"] for e in events if e.event == "message"]  # with what it had sent until then
    assert events[-1].json() == {"error": "Timeout after 1s", "type": "timeout", "full_response": "".join(sent),
                                 "token_count": len(sent)}
    assert first_token_seconds(long_local_server.url) < 5


def test_disconnect_closes_the_upstream_stream(long_openai_server) -> None:
    read_then_leave(long_openai_server.url, "/chat", 3, json={"message": LONG})
    waited = first_token_seconds(long_openai_server.url)
    assert waited < 5, f"the next request waited {waited:.1f}s: the upstream kept generating for a client that left"
