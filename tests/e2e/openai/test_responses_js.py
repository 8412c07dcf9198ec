"""The official `openai` Node SDK (pinned in tests/js/package-lock.json) against live servers' `/v1/responses`, as
a Node client of OpenAI's Responses API uses it: `responses.create` (whole, and `stream: true`), `responses.stream`
(its events, its `.on` deltas with the SDK's snapshot, its final response), a background create → `retrieve` until
it ends → its stream replayed and resumed, a background create on a slow reply → `cancel`, and a refusal (`tools`)
raised as the SDK's BadRequestError. tests/js/openai_responses.mjs prints what it got; this module asserts on it.
The Python SDK's side is tests/e2e/openai/test_responses.py. The scripted model (`CHAT_PROVIDER=fake`)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from chains.models.fake import scripted_reasoning, scripted_tokens
from tests.support.fixtures import app_fixture
from tests.support.servers import ROOT, LiveServer

JS = ROOT / "tests" / "js"
KEY = "sk-responses-js-key-0123456789"
TOKENS = 20
REPLY = "".join(scripted_tokens(TOKENS))
REASONING_TOKENS, REASONING_REPLY_TOKENS = 4, 5
SLOW_TOKENS = 3000  # 10 ms apart: a 30-second reply, cancelled early on

js_server = app_fixture("responses-js-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS=str(TOKENS), API_KEYS=KEY,
                        doc="The scripted model behind an API key.")
js_reasoning_server = app_fixture("responses-js-reasoning-server", CHAT_PROVIDER="fake",
                                  FAKE_REASONING_TOKENS=str(REASONING_TOKENS),
                                  FAKE_REPLY_TOKENS=str(REASONING_REPLY_TOKENS),
                                  doc="The scripted model reasoning aloud before its reply.")
js_slow_server = app_fixture("responses-js-slow-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS=str(SLOW_TOKENS),
                             FAKE_TOKEN_DELAY_MS="10", doc="A 30-second reply: for a background run that is cancelled.")

OPENING = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
           "response.completed"]


@pytest.fixture(scope="module")
def js(js_server: LiveServer, js_reasoning_server: LiveServer, js_slow_server: LiveServer) -> Iterator[dict[str, Any]]:
    """What the SDK got from the three servers, in one Node process."""
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    assert (JS / "node_modules" / "openai" / "package.json").is_file(), \
        "the JS client is not installed: run `make test`, or `cd tests/js && npm ci`"
    done = subprocess.run([node, "openai_responses.mjs", js_server.url, "--key", KEY, "--reasoning",
                           js_reasoning_server.url, "--slow", js_slow_server.url],
                          cwd=JS, capture_output=True, text=True, encoding="utf-8", timeout=120)
    logs = "".join(server.output()[-2000:] for server in (js_server, js_reasoning_server, js_slow_server))
    assert done.returncode == 0, done.stderr[-3000:] + logs
    yield json.loads(done.stdout)
    assert "Traceback" not in logs, logs


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def deltas(events: list[dict[str, Any]], kind: str = "response.output_text.delta") -> list[str]:
    return [event["delta"] for event in events if event["type"] == kind]


def assert_numbered(events: list[dict[str, Any]]) -> None:
    """Every event has a sequence number, each above the one before (what the SDK's resume filters on)."""
    numbers = [event["sequence_number"] for event in events]
    assert all(isinstance(n, int) for n in numbers), numbers
    assert all(a < b for a, b in itertools.pairwise(numbers)), numbers


def assert_usage(usage: dict[str, Any], output_tokens: int, reasoning_tokens: int = 0) -> None:
    assert usage["output_tokens"] == output_tokens and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + output_tokens
    assert usage["output_tokens_details"]["reasoning_tokens"] == reasoning_tokens


def test_the_pinned_client_is_the_openai_sdk_5_or_6(js: dict[str, Any]) -> None:
    package = json.loads((JS / "package.json").read_text())
    lock = json.loads((JS / "package-lock.json").read_text())
    pinned = package["dependencies"]["openai"]
    assert pinned[0].isdigit() and int(pinned.split(".")[0]) in (5, 6), pinned  # exact (npm install --save-exact)
    assert lock["packages"]["node_modules/openai"]["version"] == pinned == js["sdkVersion"]


def test_create_answers_the_whole_response(js: dict[str, Any]) -> None:
    response = js["create"]
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["id"] == "resp_" + response["runId"]  # the run behind it: its X-Run-Id header
    assert response["output_text"] == REPLY and response["text"] == REPLY  # the SDK's output_text, and the items'
    assert response["output"] == [{"type": "message", "status": "completed", "text": REPLY}]
    assert (response["model"], response["instructions"], response["metadata"]) == \
        ("conversation", "be brief", {"case": "whole"})
    assert_usage(response["usage"], TOKENS)


def test_create_with_stream_gives_the_events_in_order(js: dict[str, Any]) -> None:
    events = js["createStream"]["events"]
    assert kinds(events) == [*OPENING, *["response.output_text.delta"] * TOKENS, *CLOSING]
    assert deltas(events) == scripted_tokens(TOKENS)  # \r\n, Chinese and emoji as they were
    assert_numbered(events)
    completed = events[-1]["response"]
    assert completed["status"] == "completed" and completed["id"] == events[0]["response"]["id"]
    retrieved = js["createStream"]["retrieved"]  # the same response, retrieved once it ended
    assert retrieved["id"] == completed["id"] and retrieved["status"] == "completed"
    assert retrieved["output_text"] == REPLY
    assert_usage(retrieved["usage"], TOKENS)


def test_the_stream_helper_gives_each_token_and_the_final_response(js: dict[str, Any]) -> None:
    stream = js["stream"]
    events = stream["events"]
    assert kinds(events)[:4] == OPENING and kinds(events)[-4:] == CLOSING
    assert kinds(events).count("response.completed") == 1
    assert deltas(events) == scripted_tokens(TOKENS)
    assert_numbered(events)
    # Its `.on("response.output_text.delta")`: each delta with the SDK's own accumulation so far.
    handled = stream["handled"]
    assert [h["delta"] for h in handled] == scripted_tokens(TOKENS)
    assert [h["snapshot"] for h in handled] == ["".join(scripted_tokens(i + 1)) for i in range(TOKENS)]
    final = stream["final"]
    assert final["status"] == "completed" and final["output_text"] == REPLY
    assert final["id"] == events[0]["response"]["id"] == events[-1]["response"]["id"]
    assert_usage(final["usage"], TOKENS)


def test_a_reasoning_model_streams_its_reasoning_before_the_text(js: dict[str, Any]) -> None:
    events = js["reasoning"]["events"]
    order = kinds(events)
    assert order[0] == "response.created" and order[-1] == "response.completed"
    last_reasoning = max(i for i, kind in enumerate(order) if kind.startswith("response.reasoning_text."))
    first_text = order.index("response.output_text.delta")
    assert last_reasoning < first_text  # the reasoning item is done before the message's first token
    assert deltas(events, "response.reasoning_text.delta") == scripted_reasoning(REASONING_TOKENS)
    assert deltas(events) == scripted_tokens(REASONING_REPLY_TOKENS)
    assert_numbered(events)
    final = js["reasoning"]["final"]
    reasoning, message = final["output"]
    assert (reasoning["type"], reasoning["status"]) == ("reasoning", "completed")
    assert reasoning["text"] == "".join(scripted_reasoning(REASONING_TOKENS))
    assert message["type"] == "message" and final["output_text"] == "".join(scripted_tokens(REASONING_REPLY_TOKENS))
    assert_usage(final["usage"], REASONING_TOKENS + REASONING_REPLY_TOKENS, REASONING_TOKENS)


def test_a_background_response_is_retrieved_and_its_stream_resumed(js: dict[str, Any]) -> None:
    background = js["background"]
    started, ended = background["started"], background["ended"]
    assert started["status"] in ("queued", "in_progress") and started["background"] is True
    assert started["output"] == []
    assert ended["id"] == started["id"] and ended["status"] == "completed" and ended["background"] is True
    assert ended["output_text"] == REPLY
    assert_usage(ended["usage"], TOKENS)
    # The whole stream, replayed by `retrieve(id, {stream: true})`.
    replayed = background["replayed"]
    assert kinds(replayed) == [*OPENING, *["response.output_text.delta"] * TOKENS, *CLOSING]
    assert deltas(replayed) == scripted_tokens(TOKENS)
    assert_numbered(replayed)
    # `responses.stream({response_id, starting_after})`: exactly the events after that number, and the response.
    after = background["after"]
    resumed = background["resumed"]
    assert after == replayed[5]["sequence_number"]
    assert [e["sequence_number"] for e in resumed["events"]] == \
        [e["sequence_number"] for e in replayed if e["sequence_number"] > after]
    assert resumed["events"] == [e for e in replayed if e["sequence_number"] > after]
    assert resumed["final"]["output_text"] == REPLY and resumed["final"]["status"] == "completed"


def test_cancel_stops_a_slow_background_response(js: dict[str, Any]) -> None:
    cancel = js["cancel"]
    started, begun, cancelled = cancel["started"], cancel["begun"], cancel["cancelled"]
    assert started["status"] in ("queued", "in_progress") and started["background"] is True
    assert begun["status"] == "in_progress" and begun["text"]  # it had begun when it was cancelled
    assert cancelled["id"] == started["id"] and cancelled["status"] == "cancelled"
    whole = "".join(scripted_tokens(SLOW_TOKENS))
    # What it said until then: more than nothing, less than the whole reply, and the reply's beginning.
    assert 0 < len(cancelled["text"]) < len(whole) and whole.startswith(cancelled["text"])
    assert len(cancelled["text"]) >= len(begun["text"])
    assert cancelled["output"][-1]["status"] == "incomplete"
    assert cancel["retrieved"]["status"] == "cancelled" and cancel["retrieved"]["text"] == cancelled["text"]
    replayed = cancel["replayed"]
    assert replayed[0]["type"] == "response.created"
    assert replayed[-1]["type"] == "response.incomplete"  # the Responses API has no cancelled event
    assert replayed[-1]["response"] == {"id": started["id"], "status": "cancelled"}
    assert "response.completed" not in kinds(replayed)
    assert "".join(deltas(replayed)) == cancelled["text"]
    assert_numbered(replayed)


def test_tools_are_refused_as_the_sdks_bad_request_error(js: dict[str, Any]) -> None:
    refusal = js["refusal"]
    assert refusal["raised"] is True
    assert refusal["isBadRequestError"] and refusal["name"] == "BadRequestError"
    assert refusal["status"] == 400 and refusal["param"] == "tools"
    assert refusal["type"] == "invalid_request_error" and "tools" in refusal["message"]
