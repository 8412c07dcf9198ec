"""chains.middleware.admission: the local model's places refuse what would not fit, before it starts: the queue
as a whole (503), and one client's share of it (429)."""

from __future__ import annotations

import asyncio

from chains.common.scope import API_KEY_ID, MODEL_RUNS
from chains.middleware import admission
from chains.middleware.admission import ModelAdmission
from chains.models.base import ModelClient, ModelPlaces, Reservation, admitted
from tests.support.asgi import Inner, call, scope


async def test_model_requests_are_refused_when_the_queue_has_no_room() -> None:
    queue = ModelPlaces(1, per_client=8)
    middleware = ModelAdmission(Inner(), queue)
    queue.take(ModelClient("10.9.9.9"))  # someone else holds the one place
    full = await call(middleware, scope(path="/conversation/stream"))
    assert full.status == 503 and full.headers["retry-after"] == "1"
    assert full.json() == {"error": "the local model is busy: its wait queue is full", "type": "overloaded"}
    assert (await call(middleware, scope(method="GET", path="/health"))).status == 200
    assert (await call(middleware, scope(method="OPTIONS"))).status == 200
    queue.give_back(("a:10.9.9.9",))
    assert (await call(middleware, scope())).status == 200


async def test_a_batch_needs_a_place_for_each_input() -> None:
    queue = ModelPlaces(2, per_client=8)  # two places
    middleware = ModelAdmission(Inner(), queue)
    refused = await call(middleware, scope(path="/single-turn/batch", **{MODEL_RUNS: 3}))
    assert refused.status == 503
    assert refused.json()["error"] == "the local model is busy: a batch of 3 inputs needs 3 places, 2 are free"


async def test_one_client_cannot_take_all_the_places() -> None:
    """The hole: runs that outlive their connection took every place of the local model for one address. A
    client holds at most LOCAL_QUEUE_PER_CLIENT, and never all of them: the others are still served."""
    queue = ModelPlaces(5, per_client=8)  # 5 places; the share is capped at 4
    middleware = ModelAdmission(Inner(), queue)
    for _ in range(4):
        queue.take(ModelClient("127.0.0.9", "key-a"))
    mine = await call(middleware, scope(client="127.0.0.9"))
    assert mine.status == 429 and mine.headers["retry-after"] == "1"
    assert mine.json() == {"type": "too_many_runs", "error": (
        "this client address holds 4 of the local model's 5 places (running or waiting), the most one may hold "
        "is LOCAL_QUEUE_PER_CLIENT=4; try again when one ends")}
    same_key = await call(middleware, scope(client="127.0.0.10", **{API_KEY_ID: "key-a"}))
    assert same_key.status == 429 and "this API key holds 4" in same_key.json()["error"]
    assert (await call(middleware, scope(client="127.0.0.10", **{API_KEY_ID: "key-b"}))).status == 200
    batch = await call(middleware, scope(path="/single-turn/batch", client="127.0.0.11", **{MODEL_RUNS: 1 + 4}))
    assert batch.status == 503  # more than are free: the model's, not the share's, refusal
    batch = await call(ModelAdmission(Inner(), ModelPlaces(5, per_client=2)),
                       scope(path="/single-turn/batch", **{MODEL_RUNS: 3}))
    assert batch.status == 429 and batch.json()["error"].startswith(
        "a batch of 3 inputs needs 3 places: this client address holds 0 of the local model's 5 places")


async def test_an_admitted_request_holds_its_places_until_its_generations_claim_them() -> None:
    """The check and the place are one step: requests arriving together cannot all pass before any generation
    starts. What the request's generations do not claim goes back when it ends."""
    queue = ModelPlaces(3, per_client=8)
    seen: list[Reservation | None] = []

    async def route(scope: object, receive: object, send: object) -> None:
        reservation = admitted.get()
        seen.append(reservation)
        assert reservation is not None and queue.pending == 1  # held before anything ran
        assert reservation.claim() and not reservation.claim()  # one place, claimed once
        await Inner()(scope, receive, send)  # type: ignore[arg-type]

    await call(ModelAdmission(route, queue), scope(client="10.1.2.3", **{API_KEY_ID: "key-z"}))  # type: ignore[arg-type]
    assert seen[0] is not None and seen[0].client == ModelClient("10.1.2.3", "key-z")
    assert admitted.get() is None and queue.pending == 1  # claimed: the generation gives it back when it ends
    queue.give_back(seen[0].slots)
    assert queue.pending == 0 and not queue.held


async def test_unclaimed_places_go_back_at_once_after_a_refusal_and_soon_after_a_stream(monkeypatch: object) -> None:
    queue = ModelPlaces(3, per_client=8)

    async def refused(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 422, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    await call(ModelAdmission(refused, queue), scope())  # type: ignore[arg-type]
    assert queue.pending == 0
    monkeypatch.setattr(admission, "CLAIM_GRACE_SECONDS", 0.05)  # type: ignore[attr-defined]
    await call(ModelAdmission(Inner(), queue), scope())  # a 200 whose run never reached the model
    assert queue.pending == 1
    await asyncio.sleep(0.1)
    assert queue.pending == 0 and not queue.held


def test_the_ledger_gives_every_place_back() -> None:
    places = ModelPlaces(places=3, per_client=2)
    assert places.share == 2
    held = [places.take(ModelClient("a", "k")), places.take(ModelClient("b"))]
    batch = places.reserve(None, 1)
    assert places.pending == 3 and places.refusal(None) is not None
    batch.release()
    batch.release()  # once only
    assert places.pending == 2 and places.held == {"a:a": 1, "k:k": 1, "a:b": 1}
    for slots in held:
        places.give_back(slots)
    assert places.pending == 0 and not places.held
    assert ModelPlaces(places=1, per_client=8).share == 1  # one place: whoever comes first may have it
