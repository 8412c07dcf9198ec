"""schemathesis over the AI SDK's endpoints, `POST /api/chat` and `GET /api/chat/{chat_id}/stream` (chains/api/ui/,
docs/ai-sdk.md), as tests/e2e/openai/test_responses.py runs it over /v1/responses: the CLI against the live
server's /openapi.json, the operations under /api/chat only (the stop, `POST /api/chat/{chat_id}/cancel`, too), a
fixed seed, bounded examples. Whatever the generated request (chat ids at and past the pattern's bounds, messages
of any role and part, bodies with fields of a page's own, a query's `on_disconnect`), the server answers no 5xx,
and what it answers conforms to the schema it publishes. The scripted model (`CHAT_PROVIDER=fake`), a short reply:
only the protocol matters here.

The schema cannot say that the last message must be the user's, with text, nor which `on_disconnect` values are
meant, so nearly every request schemathesis generates on its own is a 400 and the reply itself is never fuzzed.
This module is therefore also schemathesis's hooks file (`SCHEMATHESIS_HOOKS`; its hooks are registered only when
schemathesis loads it): about half of the generated bodies get a last user message with text appended, and half of
the generated `on_disconnect` values become ones the server takes, so that the runs, their streams and the resumes
of their chats are fuzzed too (the test asserts that they were: 200s in the server's log). Every answer is checked
against the published schema, its content type included: each event of a stream, and the refusals' plain text."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import httpx

from tests.support.fixtures import app_fixture
from tests.support.servers import ROOT, LiveServer

KEY = "sk-ui-chat-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}

ui_server = app_fixture("ui-chat-schemathesis-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="3", API_KEYS=KEY,
                        doc="The scripted model behind one API key.")


# --- schemathesis's hooks ------------------------------------------------------------------------------------------

ON_DISCONNECT = ("cancel", "continue", "0", "2.5", "3600")


def _half(value: Any) -> int | None:
    """A fixed choice per generated value (the seed fixes the values): None for half of them, else an index."""
    digest = zlib.crc32(repr(value).encode())
    return None if digest % 2 else digest // 2


def map_body(context: Any, body: Any) -> Any:
    """Half of the bodies of `POST /api/chat` with messages: a last user message with text, as a page sends."""
    operation = context.operation
    if operation is None or operation.path != "/api/chat" or not isinstance(body, dict) \
            or not isinstance(body.get("messages"), list) or (pick := _half(body)) is None:
        return body
    parts = [part for m in body["messages"] if isinstance(m, dict) and isinstance(m.get("parts"), list)
             for part in m["parts"] if isinstance(part, dict)]
    texts: list[str] = [part["text"] for part in parts if isinstance(part.get("text"), str)]
    text = next((t for t in texts if t.strip()), "讲个笑话 🙂")  # a generated text when there is one
    last = {"id": f"u{pick % 1000}", "role": "user", "parts": [{"type": "text", "text": text}]}
    return {**body, "messages": [*body["messages"], last]}


def map_query(context: Any, query: Any) -> Any:
    """Half of the generated `on_disconnect` values on `POST /api/chat`: a policy the server takes."""
    operation = context.operation
    if operation is None or operation.path != "/api/chat" or not isinstance(query, dict) \
            or "on_disconnect" not in query or (pick := _half(query)) is None:
        return query
    return {**query, "on_disconnect": ON_DISCONNECT[pick % len(ON_DISCONNECT)]}


if __name__ == "_schemathesis_hooks":  # loaded by schemathesis (SCHEMATHESIS_HOOKS), not collected by pytest
    import schemathesis

    schemathesis.hook(map_body)
    schemathesis.hook(map_query)


# --- the tests ------------------------------------------------------------------------------------------------------

def chat_operations(server: LiveServer) -> dict[str, list[str]]:
    """The operations under /api/chat that the server publishes: what the regex selects."""
    schema = httpx.get(f"{server.url}/openapi.json", headers=AUTH, timeout=10).json()
    return {path: sorted(ops) for path, ops in schema["paths"].items() if re.match("^/api/chat", path)}


def test_the_schema_publishes_the_chat_and_its_resume(ui_server: LiveServer) -> None:
    """What schemathesis is given: the chat, with its request body, and the resume, with the path's pattern (and
    whatever else lives under /api/chat, which the run below covers too)."""
    operations = chat_operations(ui_server)
    assert operations["/api/chat"] == ["post"] and operations["/api/chat/{chat_id}/stream"] == ["get"]
    schema = httpx.get(f"{ui_server.url}/openapi.json", headers=AUTH, timeout=10).json()
    post = schema["paths"]["/api/chat"]["post"]
    assert "requestBody" in post and "text/event-stream" in post["responses"]["200"]["content"]
    resume = schema["paths"]["/api/chat/{chat_id}/stream"]["get"]
    [chat_id] = [p for p in resume["parameters"] if p["name"] == "chat_id"]
    assert chat_id["schema"]["pattern"] == r"^[A-Za-z0-9_.~-]{1,128}$"


def test_schemathesis_over_api_chat_finds_no_server_error(ui_server: LiveServer, tmp_path: Path) -> None:
    """Property-based, over the /api/chat operations only: bounded examples, a fixed seed."""
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(cli), "run", f"{ui_server.url}/openapi.json", "--include-path-regex", "^/api/chat",
         "--max-examples", "60", "--seed", "20261125", "--checks",
         "not_a_server_error,response_schema_conformance,content_type_conformance",
         "--no-color", "--header", f"Authorization: Bearer {KEY}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": __file__, "PYTHONPATH": str(ROOT)},
    )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    selected = sum(len(ops) for ops in chat_operations(ui_server).values())  # the chat, its resume (and any other)
    assert selected >= 2 and f"Selected: {selected}/" in result.stdout, summary
    assert "Server error" not in result.stdout and "violates schema" not in result.stdout, summary
    log = ui_server.output()
    assert "Traceback" not in log, log[-3000:]
    # The hooks did their part: replies were streamed (and chats resumed) under fuzzed requests, not only refusals.
    replies = len(re.findall(r'"POST /api/chat(?:\?\S*)? HTTP/1.1" 200', log))
    refusals = len(re.findall(r'"POST /api/chat(?:\?\S*)? HTTP/1.1" 4\d\d', log))
    assert replies >= 20 and refusals >= 20, (replies, refusals)
    assert re.search(r'"GET /api/chat/\S+/stream HTTP/1.1" 204', log), log[-3000:]
