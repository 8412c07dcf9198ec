"""chains.api.runs.serving in-process: a request with `Last-Event-ID` joins the run it names instead of starting
one (204 after its terminal event), every store refusal is one of the shared error types, and a run's state,
replay and cancel through the app's `/chat/runs/…` routes (httpx's ASGI transport, the scripted model)."""

from __future__ import annotations

import pytest

from chains.api.runs.serving import run_refusal
from chains.streaming.run import InvalidEventId
from chains.streaming.store import RunNotFound, RunStoreFull, RunStoreUnavailable
from tests.support.asgi import call, scope
from tests.support.sse import parse_sse
from tests.unit.api.app import client


@pytest.mark.parametrize(("exc", "status", "kind", "retry_after"), [
    (RunNotFound("A" * 22), 404, "not_found", None),
    (InvalidEventId("Last-Event-ID 'x' is not an event id"), 400, "invalid_event_id", None),
    (RunStoreFull("4096 runs are generating"), 503, "run_store_full", "1"),
    (RunStoreUnavailable("redis is down"), 503, "run_store_unavailable", "1"),
])
async def test_each_store_refusal_is_its_shared_error_type(exc: Exception, status: int, kind: str,
                                                           retry_after: str | None) -> None:
    answer = await call(run_refusal(exc), scope())
    assert (answer.status, answer.json()) == (status, {"error": str(exc), "type": kind})
    assert answer.headers.get("retry-after") == retry_after


def test_anything_else_is_not_a_refusal() -> None:
    with pytest.raises(KeyError):
        run_refusal(KeyError("not the store's"))


async def test_a_request_with_last_event_id_joins_its_run_after_that_event() -> None:
    async with client() as http:
        first = await http.post("/chat", json={"message": "hi"})
        run_id = first.headers["x-run-id"]
        events = parse_sse(first.text)
        rejoined = await http.post("/chat", json={"message": "ignored"}, headers={"Last-Event-ID": f"{run_id}:5"})
        state = (await http.get(f"/chat/runs/{run_id}")).json()
    assert rejoined.status_code == 200 and rejoined.headers["x-run-id"] == run_id  # no second generation
    assert [(e.id, e.data) for e in parse_sse(rejoined.text)] == [(e.id, e.data) for e in events[6:]]
    assert state["events"] == len(events) and state["status"] == "completed"


async def test_after_the_terminal_event_there_is_nothing_to_join_and_a_bad_id_is_refused() -> None:
    async with client() as http:
        first = await http.post("/chat", json={"message": "hi"})
        last_id = parse_sse(first.text)[-1].id
        over = await http.post("/chat", params={"message": "hi"}, headers={"Last-Event-ID": last_id or ""})
        bad = await http.post("/chat", params={"message": "hi"}, headers={"Last-Event-ID": "not-an-id"})
        unknown = await http.post("/chat", params={"message": "hi"}, headers={"Last-Event-ID": "B" * 22 + ":1"})
    assert (over.status_code, over.content) == (204, b"")  # an EventSource stops reconnecting
    assert bad.status_code == 400 and bad.json()["type"] == "invalid_event_id"
    assert unknown.status_code == 404 and unknown.json()["type"] == "not_found"


async def test_a_run_can_be_replayed_looked_at_and_cancelled_by_its_id() -> None:
    async with client() as http:
        first = await http.post("/chat", json={"message": "hi"})
        run_id = first.headers["x-run-id"]
        replay = await http.get(f"/chat/runs/{run_id}/stream")
        tail = await http.get(f"/chat/runs/{run_id}/stream", params={"last_event_id": f"{run_id}:19"})
        header_wins = await http.get(f"/chat/runs/{run_id}/stream", params={"last_event_id": f"{run_id}:1"},
                                     headers={"Last-Event-ID": f"{run_id}:20"})
        state = await http.get(f"/chat/runs/{run_id}")
        cancel = await http.post(f"/chat/runs/{run_id}/cancel")
        missing = await http.get("/chat/runs/" + "C" * 22)
    assert replay.content == first.content  # the same bytes, kept as sent
    assert [e.id for e in parse_sse(tail.text)] == [f"{run_id}:20", f"{run_id}:21"]
    assert [e.id for e in parse_sse(header_wins.text)] == [f"{run_id}:21"]
    info = state.json()
    assert (info["run_id"], info["status"], info["listeners"]) == (run_id, "completed", 0)
    assert info["ended"] >= info["created"]
    assert cancel.json() == {"run_id": run_id, "cancelled": False, "status": "completed",
                             "detail": "the run had already ended (completed); nothing to cancel"}
    assert missing.status_code == 404 and missing.json()["type"] == "not_found"
