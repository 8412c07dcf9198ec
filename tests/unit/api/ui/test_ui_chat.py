"""chains.api.ui in-process: `POST /api/chat` answers `useChat`'s body with the UI message stream in the SDK's order
(reasoning and text parts, finish with usage, [DONE]), a failure as an error chunk and a cancel as abort; refusals
are plain text; `GET /api/chat/{id}/stream` replays the chat's active run, or answers 204. The real SDK against a
live server: tests/e2e/front_ends/test_ai_sdk_transport.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from chains.api.ui.protocol import UIMessageStream
from chains.models.fake import scripted_reasoning, scripted_tokens
from chains.streaming.events import DoneEvent, ErrorEvent, StartEvent, Usage
from tests.unit.api.app import client


def body(text: str = "hi", chat_id: str = "chat-1", **fields: Any) -> dict[str, Any]:
    return {"id": chat_id, "trigger": "submit-message", "messages": [
        {"id": "m0", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
        {"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}], **fields}


def chunks(stream: str) -> list[Any]:
    datas = [line.removeprefix("data: ") for line in stream.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]", stream[-200:]
    return [json.loads(data) for data in datas[:-1]]


async def test_a_reply_is_the_ui_message_stream_in_the_sdks_order() -> None:
    async with client(fake_reply_tokens=4) as http:
        answer = await http.post("/api/chat", json=body())
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/event-stream"
    assert answer.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert answer.headers["cache-control"] == "no-cache" and answer.headers["x-accel-buffering"] == "no"
    run_id = answer.headers["x-run-id"]
    got = chunks(answer.text)
    assert [c["type"] for c in got] == ["start", "start-step", "text-start", *["text-delta"] * 4, "text-end",
                                        "finish-step", "finish"]
    assert got[0] == {"type": "start", "messageId": f"msg_{run_id}", "messageMetadata": {"runId": run_id}}
    assert "".join(c["delta"] for c in got if c["type"] == "text-delta") == "".join(scripted_tokens(4))
    assert {c["id"] for c in got if c["type"].startswith("text-")} == {"t0"}
    assert got[-1]["finishReason"] == "stop" and got[-1]["messageMetadata"]["usage"]["completion_tokens"] == 4


async def test_reasoning_is_a_reasoning_part_before_the_text() -> None:
    async with client(fake_reply_tokens=2, fake_reasoning_tokens=3) as http:
        got = chunks((await http.post("/api/chat", json=body())).text)
    assert [c["type"] for c in got] == [
        "start", "start-step", "reasoning-start", *["reasoning-delta"] * 3, "reasoning-end", "text-start",
        "text-delta", "text-delta", "text-end", "finish-step", "finish"]
    assert "".join(c["delta"] for c in got if c["type"] == "reasoning-delta") == "".join(scripted_reasoning(3))


async def test_a_failure_is_an_error_chunk_and_a_cancel_is_abort() -> None:
    async with client(fake_reply_tokens=5, fake_fail_after=2) as http:
        got = chunks((await http.post("/api/chat", json=body())).text)
    assert [c["type"] for c in got][-2:] == ["text-end", "error"]
    assert "internal error" in got[-1]["errorText"] and set(got[-1]) == {"type", "errorText"}
    stream = UIMessageStream()
    head = stream.start(b"r:0", StartEvent(timestamp=0, run_id="r")) + stream.tokens(b"r:1", "a", 1)
    cancelled = stream.done(b"r:2", DoneEvent(status="cancelled", full_response="a", token_count=1, duration=0.1,
                                               tokens_per_second=10))
    assert b'"type":"text-start"' in head
    assert cancelled == (b'data: {"type":"text-end","id":"t0"}\n\ndata: {"type":"abort","reason":"cancelled"}\n\n'
                         b"data: [DONE]\n\n")
    failed = UIMessageStream().error(b"r:1", ErrorEvent(error="the upstream model failed", type="upstream_error"))
    assert failed == b'data: {"type":"error","errorText":"the upstream model failed"}\n\ndata: [DONE]\n\n'


async def test_an_empty_reply_and_a_length_finish() -> None:
    stream = UIMessageStream()
    done = stream.done(b"r:1", DoneEvent(full_response="", token_count=0, duration=0.1, tokens_per_second=0,
                                         usage=Usage(prompt_tokens=1, completion_tokens=0, total_tokens=1),
                                         finish_reason="length"))
    assert b"text-end" not in done and b'"finishReason":"length"' in done


async def test_refusals_are_plain_text_naming_the_problem() -> None:
    async with client() as http:
        no_user = await http.post("/api/chat", json={**body(), "messages": body()["messages"][:1]})
        bad_id = await http.post("/api/chat", json=body(chat_id="a/b"))
        empty = await http.post("/api/chat", json=body(text="   "))
        resume_bad_id = await http.get("/api/chat/a%20b/stream")
    for refused in (no_user, bad_id, empty):
        assert refused.status_code == 400 and refused.headers["content-type"].startswith("text/plain")
    assert "the last message must be the user's" in no_user.text
    assert bad_id.text.startswith("id: ") and "no text part" in empty.text
    assert resume_bad_id.status_code == 400 and resume_bad_id.headers["content-type"].startswith("text/plain")


async def once_named(ask: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """`ask`'s answer once it is a 200: the reply started beside it has been named by its chat (bounded)."""
    for _ in range(200):
        answer = await ask()
        if answer.status_code == 200:
            return answer
        await asyncio.sleep(0.01)
    return answer


async def test_resume_replays_the_chats_active_run_and_is_204_when_there_is_none() -> None:
    async with client(fake_reply_tokens=6, fake_token_delay_ms=30) as http:
        assert (await http.get("/api/chat/never-used/stream")).status_code == 204
        started = asyncio.create_task(http.post("/api/chat", json=body(chat_id="resumed")))
        resumed = await once_named(lambda: http.get("/api/chat/resumed/stream"))
        original = await started
        assert resumed.status_code == 200 and resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
        assert chunks(resumed.text) == chunks(original.text)  # replayed from its start, followed to its end
        assert resumed.headers["x-run-id"] == original.headers["x-run-id"]
        assert (await http.get("/api/chat/resumed/stream")).status_code == 204  # over: nothing active


async def test_a_chats_reply_is_stopped_by_the_chats_cancel_and_ends_with_abort() -> None:
    async with client(fake_reply_tokens=200, fake_token_delay_ms=20) as http:
        assert (await http.post("/api/chat/nothing-yet/cancel")).status_code == 404
        started = asyncio.create_task(http.post("/api/chat", json=body(chat_id="stopped")))
        cancel = await once_named(lambda: http.post("/api/chat/stopped/cancel"))
        assert cancel.json()["cancelled"] is True
        got = chunks((await asyncio.wait_for(started, 30)).text)
    assert got[-1] == {"type": "abort", "reason": "cancelled"}
    assert len([c for c in got if c["type"] == "text-delta"]) < 200


async def test_a_run_that_cannot_be_named_is_not_left_generating(monkeypatch: Any) -> None:
    from chains.streaming.store import MemoryRunStore

    async def unnamed(self: MemoryRunStore, name: str, run_id: str, owner: str | None) -> None:
        raise RuntimeError("the store broke")

    monkeypatch.setattr(MemoryRunStore, "name", unnamed)
    async with client(fake_reply_tokens=1000, fake_token_delay_ms=10) as http:
        refused = await http.post("/api/chat", json=body(chat_id="orphan"))
        assert refused.status_code == 500
        for _ in range(100):  # the cancel lands on the generation's next step (bounded)
            live = (await http.get("/health")).json()["runs"]["live"]
            if live == 0:
                break
            await asyncio.sleep(0.01)
    assert live == 0  # cancelled with its request, not generating 1,000 tokens for nobody
