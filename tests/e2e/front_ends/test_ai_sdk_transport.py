"""The Vercel AI SDK's own client against live servers' `POST /api/chat` and `GET /api/chat/{id}/stream`: `ai`
7.0.173 (pinned in tests/js/package-lock.json), its `DefaultChatTransport` (which parses every chunk with the SDK's
own chunk schema: a chunk it would refuse fails the stream) and `readUIMessageStream` (which assembles the message as
`useChat` does), in Node (tests/js/ai_sdk_chat.mjs prints what it got; this module asserts on it).

What a client of the SDK must see: the reply's text is the run's text, token by token; reasoning arrives as a
reasoning part before the text; a model failure arrives as an error, a refusal as the SDK's APICallError with our
text; an abort stops the run (with `on_disconnect=cancel`; by default the run waits its grace period for a resume,
and Stop is its cancel); a reply resumes after a cut and after a reload, through another replica that shares the
run store (a real redis-server), without a second generation; `reconnectToStream` gets 204 (null) when the chat has
nothing active.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from chains.models.fake import scripted_reasoning, scripted_tokens
from tests.support.cut_proxy import CutProxy
from tests.support.fixtures import app_fixture, server_fixture
from tests.support.runs import runs_started
from tests.support.servers import ROOT, LiveServer, running_replicas, start_redis
from tests.support.sse import parse_sse

JS = ROOT / "tests" / "js"
SCRIPT = "ai_sdk_chat.mjs"
TOKENS = 20
REPLY = "".join(scripted_tokens(TOKENS))
REASONING_TOKENS = 6
SLOW_TOKENS = 60  # 50 ms apart: a reply of 3 s, to be cut, reloaded or stopped mid-way
SLOW_REPLY = "".join(scripted_tokens(SLOW_TOKENS))
SLOW = {"CHAT_PROVIDER": "fake", "FAKE_REPLY_TOKENS": str(SLOW_TOKENS), "FAKE_TOKEN_DELAY_MS": "50"}

chat_server = app_fixture("ai-sdk-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS=str(TOKENS))
reasoning_server = app_fixture("ai-sdk-reasoning-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="10",
                               FAKE_REASONING_TOKENS=str(REASONING_TOKENS))
failing_ui_server = app_fixture("ai-sdk-failing-server", CHAT_PROVIDER="fake", FAKE_FAIL_AFTER="3",
                                FAKE_TOKEN_DELAY_MS="5")
slow_server = app_fixture("ai-sdk-slow-server", **SLOW)
redis_server = server_fixture(lambda request: start_redis(), doc="A real redis-server on loopback.")


@pytest.fixture(scope="module")
def pair(redis_server: LiveServer) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Replicas A and B of one deployment: two processes sharing one Redis run store."""
    with running_replicas(("ai-sdk-redis-a", "ai-sdk-redis-b"), **SLOW, RUN_STORE_URL=redis_server.url) as (a, b):
        yield a, b
    for server in (a, b):
        assert "Traceback" not in server.output()


@pytest.fixture(scope="module", autouse=True)
def node() -> str:
    found = shutil.which("node")
    assert found is not None, "node is not installed"
    assert (JS / "node_modules" / "ai" / "package.json").is_file(), \
        "the JS client is not installed: run `make test`, or `cd tests/js && npm ci`"
    return found


# --- driving the SDK ---------------------------------------------------------------------------------------------

def run_sdk(node: str, steps: list[dict[str, Any]], on_announce: Callable[[dict[str, Any]], None] | None = None,
            seconds: float = 60) -> list[dict[str, Any]]:
    """Runs the steps in one Node process (one client); each step's result, in order. `on_announce` is called with
    each line a step prints mid-stream (`announceAfterDeltas`), while the client goes on reading."""
    plan = json.dumps({"steps": steps, "timeoutMs": int(seconds * 1000)})
    process = subprocess.Popen([node, SCRIPT, plan], cwd=JS, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, encoding="utf-8")
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds + 5
    try:
        while (line := lines.get(timeout=max(0.1, deadline - time.monotonic()))) is not None:
            printed = json.loads(line)
            if "announce" in printed:
                assert on_announce is not None, printed
                on_announce(printed)
            else:
                results.append(printed)
        code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    stderr = process.stderr.read() if process.stderr else ""
    assert code == 0, stderr[-3000:]
    return results


def user(text: str, id: str = "u1") -> dict[str, Any]:
    return {"id": id, "role": "user", "parts": [{"type": "text", "text": text}]}


def send(url: str, chat_id: str, messages: list[dict[str, Any]] | None = None, **options: Any) -> dict[str, Any]:
    return {"op": "send", "url": url, "chatId": chat_id, "messages": messages or [user("讲个笑话")], **options}


def reconnect(url: str, chat_id: str) -> dict[str, Any]:
    return {"op": "reconnect", "url": url, "chatId": chat_id}


def text_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


def reasoning_of(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "reasoning")


def types(result: dict[str, Any]) -> list[str]:
    return [c["type"] for c in result["chunks"]]


def run_id_of(result: dict[str, Any]) -> str:
    """The run behind a reply: its x-run-id header, which the message's id and metadata carry too."""
    run_id = result["request"]["headers"]["x-run-id"]
    assert result["message"]["id"] == "msg_" + run_id
    assert result["chunks"][0] == {"type": "start", "messageId": "msg_" + run_id, "messageMetadata": {"runId": run_id}}
    return run_id


def run_state(server: LiveServer, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/chat/runs/{run_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def kept_text(server: LiveServer, run_id: str) -> tuple[str, list[dict[str, Any]]]:
    """The run as the server keeps it, read by our own parser through the runs route (not by the SDK): the text of
    its text-delta chunks, and its chunks."""
    response = httpx.get(f"{server.url}/chat/runs/{run_id}/stream", timeout=30)
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    assert events[-1].data == "[DONE]"
    chunks = [e.json() for e in events[:-1]]
    return "".join(c["delta"] for c in chunks if c["type"] == "text-delta"), chunks


def wait_for_status(server: LiveServer, run_id: str, status: str, seconds: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while (state := run_state(server, run_id))["status"] != status:
        assert time.monotonic() < deadline, f"run {run_id} still {state['status']}, not {status}"
        time.sleep(0.05)
    return state


def no_errors(result: dict[str, Any]) -> None:
    assert result["errors"] == [], result["errors"]


# --- a reply -----------------------------------------------------------------------------------------------------

def test_the_pinned_client_is_ai_7() -> None:
    package = json.loads((JS / "package.json").read_text())
    lock = json.loads((JS / "package-lock.json").read_text())
    assert package["dependencies"]["ai"] == "7.0.173"  # exact (npm install --save-exact)
    assert lock["packages"]["node_modules/ai"]["version"] == "7.0.173"


def test_a_reply_assembles_to_the_runs_text(node: str, chat_server: LiveServer) -> None:
    [result] = run_sdk(node, [send(chat_server.url, "chat-one")])
    no_errors(result)
    request = result["request"]
    assert request["status"] == 200 and request["method"] == "POST" and request["url"] == chat_server.url + "/api/chat"
    assert request["headers"]["content-type"].startswith("text/event-stream")
    assert request["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    assert request["headers"]["cache-control"] == "no-cache" and request["headers"]["x-accel-buffering"] == "no"
    run_id = run_id_of(result)

    message = result["message"]
    assert message["role"] == "assistant"
    assert text_of(message) == REPLY
    assert [p["type"] for p in message["parts"]] == ["step-start", "text"]
    assert message["parts"][1]["state"] == "done"
    # The chunks, in the SDK's order: one delta per token, and it assembled them one by one.
    assert types(result) == ["start", "start-step", "text-start", *["text-delta"] * TOKENS, "text-end", "finish-step",
                             "finish"]
    assert [c["delta"] for c in result["chunks"] if c["type"] == "text-delta"] == scripted_tokens(TOKENS)
    assert result["snapshots"] >= TOKENS
    finish = result["chunks"][-1]
    assert finish["finishReason"] == "stop"
    usage = message["metadata"]["usage"]
    assert usage["completion_tokens"] == TOKENS and usage["total_tokens"] == usage["prompt_tokens"] + TOKENS
    assert message["metadata"]["runId"] == run_id

    # The run the x-run-id names: completed, and its text is the one the SDK assembled.
    state = run_state(chat_server, run_id)
    assert state["status"] == "completed"
    text, chunks = kept_text(chat_server, run_id)
    assert text == REPLY and chunks == result["chunks"]


def test_a_second_turn_sends_the_assembled_history(node: str, chat_server: LiveServer) -> None:
    [first] = run_sdk(node, [send(chat_server.url, "chat-two", [user("Hi, I am Ana.")])])
    no_errors(first)
    # The history as useChat keeps it: the assistant message with its step-start part and metadata.
    history = [user("Hi, I am Ana."), first["message"], user("What is my name?", "u2")]
    [second] = run_sdk(node, [send(chat_server.url, "chat-two", history)])
    no_errors(second)
    assert text_of(second["message"]) == REPLY
    assert run_id_of(second) != run_id_of(first)
    # The prompt had both user turns and the reply: more prompt tokens than the first turn's.
    prompt_tokens = [r["message"]["metadata"]["usage"]["prompt_tokens"] for r in (first, second)]
    assert prompt_tokens[1] > prompt_tokens[0]


def test_reasoning_arrives_as_a_reasoning_part_before_the_text(node: str, reasoning_server: LiveServer) -> None:
    [result] = run_sdk(node, [send(reasoning_server.url, "chat-thinking")])
    no_errors(result)
    message = result["message"]
    assert [p["type"] for p in message["parts"]] == ["step-start", "reasoning", "text"]
    assert reasoning_of(message) == "".join(scripted_reasoning(REASONING_TOKENS))
    assert text_of(message) == "".join(scripted_tokens(10))
    assert all(p.get("state") == "done" for p in message["parts"][1:])
    assert types(result) == ["start", "start-step", "reasoning-start", *["reasoning-delta"] * REASONING_TOKENS,
                             "reasoning-end", "text-start", *["text-delta"] * 10, "text-end", "finish-step", "finish"]
    usage = message["metadata"]["usage"]
    assert usage["completion_tokens"] == REASONING_TOKENS + 10
    assert usage["completion_tokens_details"] == {"reasoning_tokens": REASONING_TOKENS}


def test_a_model_failure_arrives_as_an_error(node: str, failing_ui_server: LiveServer) -> None:
    [result] = run_sdk(node, [send(failing_ui_server.url, "chat-failing")])
    run_id = run_id_of(result)
    # The stream itself is sound (every chunk passed the schema); the SDK turned the error chunk into its error.
    assert [e["source"] for e in result["errors"]] == ["message"], result["errors"]
    error = result["errors"][0]["message"]
    assert error and "Traceback" not in error
    assert types(result) == ["start", "start-step", "text-start", "text-delta", "text-delta", "text-delta", "text-end",
                             "error"]
    assert result["chunks"][-1] == {"type": "error", "errorText": error}
    assert text_of(result["message"]) == "".join(scripted_tokens(3))  # what came before the failure is kept
    assert "finish" not in types(result)
    assert run_state(failing_ui_server, run_id)["status"] == "failed"


def test_a_refusal_is_the_sdks_api_call_error_with_our_text(node: str, chat_server: LiveServer) -> None:
    assistant_last = [user("hi"), {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "Hello"}]}]
    [result] = run_sdk(node, [send(chat_server.url, "chat-refused", assistant_last)])
    assert result["chunks"] == [] and result["message"] is None
    [error] = result["errors"]
    assert error["source"] == "call" and error["name"] == "AI_APICallError" and error["statusCode"] == 400
    assert error["message"] == error["body"] and "last message must be the user's" in error["message"]


# --- stop ----------------------------------------------------------------------------------------------------------

def test_an_abort_cancels_the_run(node: str, slow_server: LiveServer) -> None:
    [result] = run_sdk(node, [send(slow_server.url, "chat-abort", query="?on_disconnect=cancel", abortAfterDeltas=5)])
    assert result["aborted"]
    assert {e["name"] for e in result["errors"]} == {"AbortError"}, result["errors"]
    run_id = run_id_of(result)
    assert SLOW_REPLY.startswith(text_of(result["message"]))
    state = wait_for_status(slow_server, run_id, "cancelled", seconds=5)
    assert state["ended"] - state["created"] < 2.5  # stopped early: the whole reply takes 3 s
    text, chunks = kept_text(slow_server, run_id)
    assert chunks[-1] == {"type": "abort", "reason": "cancelled"}
    assert len(text) >= 5 and SLOW_REPLY.startswith(text) and text != SLOW_REPLY
    # Nothing is active for the chat any more.
    [after] = run_sdk(node, [reconnect(slow_server.url, "chat-abort")])
    assert after["resumed"] is False and after["request"]["status"] == 204


def test_by_default_an_abort_leaves_the_run_for_a_resume_and_the_cancel_stops_it(node: str,
                                                                               slow_server: LiveServer) -> None:
    # A closed connection is also what a reload or a cut looks like: the run waits (its grace period) for the client
    # to come back. Stop (the pages') is the SDK's abort plus the run's cancel.
    [result] = run_sdk(node, [send(slow_server.url, "chat-stop", abortAfterDeltas=5)])
    run_id = run_id_of(result)
    time.sleep(0.3)
    assert run_state(slow_server, run_id)["status"] == "running"
    cancel = httpx.post(f"{slow_server.url}/chat/runs/{run_id}/cancel", timeout=10)
    assert cancel.status_code == 200 and cancel.json()["cancelled"] is True, cancel.text
    state = wait_for_status(slow_server, run_id, "cancelled", seconds=5)
    assert state["ended"] - state["created"] < 2.5
    [after] = run_sdk(node, [reconnect(slow_server.url, "chat-stop")])
    assert after["resumed"] is False and after["request"]["status"] == 204


# --- resume --------------------------------------------------------------------------------------------------------

def test_nothing_active_is_204_and_null(node: str, chat_server: LiveServer) -> None:
    never, = run_sdk(node, [reconnect(chat_server.url, "chat-never-used")])
    assert never["resumed"] is False and never["request"]["status"] == 204
    assert never["request"]["url"] == chat_server.url + "/api/chat/chat-never-used/stream"
    # A chat whose reply has ended has nothing to resume either: the SDK keeps what it has.
    done, after = run_sdk(node, [send(chat_server.url, "chat-ended"), reconnect(chat_server.url, "chat-ended")])
    no_errors(done)
    assert after["resumed"] is False and after["request"]["status"] == 204 and after["chunks"] == []


def test_resume_after_a_cut_through_the_other_replica(node: str, pair: tuple[LiveServer, LiveServer]) -> None:
    a, b = pair
    started_a, started_b = runs_started(a), runs_started(b)
    proxy = CutProxy(a.port)  # the client reaches A through it; the test cuts the connection mid-reply
    try:
        cut: list[int] = []
        steps = [send(proxy.url, "chat-cut", announceAfterDeltas=10), reconnect(b.url, "chat-cut")]
        first, resumed = run_sdk(node, steps, on_announce=lambda line: cut.append(proxy.cut()))
    finally:
        proxy.close()
    assert cut and cut[0] >= 1
    # The cut: the stream broke off mid-reply (a network error, not a chunk the SDK refused), the text so far kept.
    assert first["errors"] and {e["source"] for e in first["errors"]} <= {"stream", "message"}, first["errors"]
    assert all(e["name"] == "TypeError" for e in first["errors"]), first["errors"]
    run_id = run_id_of(first)
    partial = text_of(first["message"])
    assert len(partial) >= 10 and SLOW_REPLY.startswith(partial) and partial != SLOW_REPLY
    assert "finish" not in types(first)

    # reconnectToStream through B: the run replayed from its start and followed to its end.
    no_errors(resumed)
    assert resumed["resumed"] is True and resumed["request"]["status"] == 200
    assert resumed["request"]["url"] == b.url + "/api/chat/chat-cut/stream"
    assert resumed["request"]["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    assert resumed["message"]["id"] == "msg_" + run_id and resumed["request"]["headers"]["x-run-id"] == run_id
    assert text_of(resumed["message"]) == SLOW_REPLY
    assert types(resumed)[:3] == ["start", "start-step", "text-start"] and types(resumed)[-1] == "finish"
    assert types(resumed).count("text-delta") == SLOW_TOKENS
    assert resumed["chunks"][:len(first["chunks"])] == first["chunks"]  # the same chunks, nothing lost or doubled
    assert run_state(b, run_id)["status"] == "completed"
    assert (runs_started(a), runs_started(b)) == (started_a + 1, started_b), "a second generation"


def test_resume_after_a_reload_through_the_other_replica(node: str, pair: tuple[LiveServer, LiveServer]) -> None:
    a, b = pair
    started_a, started_b = runs_started(a), runs_started(b)
    # The first client goes away mid-reply (a page reloaded); a new one, with nothing but the chat's id, resumes.
    [gone] = run_sdk(node, [send(a.url, "chat-reload", exitAfterDeltas=10)])
    run_id = run_id_of(gone)
    assert len(text_of(gone["message"])) >= 10 and text_of(gone["message"]) != SLOW_REPLY
    assert run_state(b, run_id)["status"] == "running"

    [resumed] = run_sdk(node, [reconnect(b.url, "chat-reload")])
    no_errors(resumed)
    assert resumed["resumed"] is True and resumed["message"]["id"] == "msg_" + run_id
    assert text_of(resumed["message"]) == SLOW_REPLY
    assert resumed["message"]["metadata"]["usage"]["completion_tokens"] == SLOW_TOKENS
    text, chunks = kept_text(a, run_id)
    assert text == SLOW_REPLY and chunks == resumed["chunks"]
    assert run_state(a, run_id)["status"] == "completed"
    assert (runs_started(a), runs_started(b)) == (started_a + 1, started_b), "a second generation"
    # And once it has ended, neither replica has anything to resume for the chat.
    assert [r["resumed"] for r in run_sdk(node, [reconnect(a.url, "chat-reload"), reconnect(b.url, "chat-reload")])] \
        == [False, False]
