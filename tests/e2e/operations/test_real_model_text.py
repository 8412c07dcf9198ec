"""Text through the real embedded model, end to end: a multibyte character split across the model's tokens and a
bare carriage return arrive whole and exactly (the scripted model's tokens are whole strings by construction; the
real model's are bytes, so this is where a broken decoder would show).

Temperature 0 and the server's `local_server` (MAX_TOKENS=24): the replies are deterministic. The model emits a
bare `\\r` as a token of its own when a conversation shows it one (an assistant turn `A\\rB\\rC`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.servers import LiveServer
from tests.support.sse import Event, parse_sse

CODE_CONVERSATION = {"messages": [{"role": "user", "content": "Say the code."},
                                  {"role": "assistant", "content": "A\rB\rC"},
                                  {"role": "user", "content": "Say the code again."}]}


def chat(server: LiveServer, path: str = "/chat", **kwargs: Any) -> list[Event]:
    response = httpx.post(server.url + path, timeout=120, **kwargs)
    assert response.status_code == 200, response.text
    assert "\ufffd" not in response.text
    return parse_sse(response.text)


def tokens_and_done(events: list[Event]) -> tuple[list[str], dict[str, Any]]:
    assert events[-1].event == "done", events[-1]
    return [e.json()["token"] for e in events if e.event == "message"], events[-1].json()


@pytest.mark.parametrize("message", ["讲个笑话", "Reply with one emoji: 🙂"])
def test_characters_split_across_model_tokens_arrive_whole(local_server: LiveServer, message: str) -> None:
    tokens, done = tokens_and_done(chat(local_server, json={"message": message}))
    text = "".join(tokens)
    assert text == done["full_response"] and "\ufffd" not in text
    assert any(ord(char) > 0x2000 for char in text), f"no CJK or emoji in {text!r}: the prompt no longer tests this"
    # More model tokens than text pieces: some characters took several tokens, and each came as one piece.
    assert done["usage"]["completion_tokens"] > done["token_count"] == len(tokens)
    for token in tokens:
        token.encode("utf-8")  # no lone surrogate or half character in any one piece


def test_langserve_stream_carries_the_same_whole_characters(local_server: LiveServer) -> None:
    events = chat(local_server, "/single-turn/stream", json={"input": "讲个笑话"})
    pieces = [e.json() for e in events if e.event == "data"]
    assert events[-1].event == "end" and pieces and "\ufffd" not in "".join(pieces)
    invoked = httpx.post(local_server.url + "/single-turn/invoke", json={"input": "讲个笑话"}, timeout=120).json()
    assert "".join(pieces) == invoked["output"]


def test_a_bare_carriage_return_from_the_model_survives_in_json_events(local_server: LiveServer) -> None:
    tokens, done = tokens_and_done(chat(local_server, json=CODE_CONVERSATION))
    assert "\r" in tokens, f"the model did not emit a bare CR this time: {tokens!r}"
    assert "".join(tokens) == done["full_response"]
    assert "\r\n" not in done["full_response"] and "B\rC" in done["full_response"]


def test_a_bare_carriage_return_in_the_raw_encoding_is_a_line_break_and_loses_no_text(
        local_server: LiveServer) -> None:
    """The tutorial's raw `data:` lines cannot carry a CR (SSE reads CR as a line end): it becomes a line break,
    and the text after it is still data, not a stray field line that a client would drop."""
    _, done = tokens_and_done(chat(local_server, json=CODE_CONVERSATION))
    raw = chat(local_server, "/chat-conversation", json=CODE_CONVERSATION)
    assert raw[-1].event == "done" and raw[-1].data == "Completed"
    text = "".join(e.data for e in raw if e.event == "message")
    assert text == done["full_response"].replace("\r\n", "\n").replace("\r", "\n")
