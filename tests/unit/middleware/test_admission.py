"""chains.middleware.admission: the local model's wait queue refuses what would not fit, before it starts."""

from __future__ import annotations

from chains.common.scope import MODEL_RUNS
from chains.middleware.admission import ModelAdmission
from tests.support.asgi import Inner, call, scope


async def test_model_requests_are_refused_when_the_queue_has_no_room() -> None:
    free = 0
    middleware = ModelAdmission(Inner(), free_places=lambda: free)
    full = await call(middleware, scope(path="/conversation/stream"))
    assert full.status == 503 and full.headers["retry-after"] == "1"
    assert full.json() == {"error": "the local model is busy: its wait queue is full", "type": "overloaded"}
    assert (await call(middleware, scope(method="GET", path="/health"))).status == 200
    assert (await call(middleware, scope(method="OPTIONS"))).status == 200
    free = 1
    assert (await call(middleware, scope())).status == 200


async def test_a_batch_needs_a_place_for_each_input() -> None:
    middleware = ModelAdmission(Inner(), free_places=lambda: 2)
    refused = await call(middleware, scope(path="/single-turn/batch", **{MODEL_RUNS: 3}))
    assert refused.status == 503
    assert refused.json()["error"] == "the local model is busy: a batch of 3 inputs needs 3 places, 2 are free"
    assert (await call(middleware, scope(path="/single-turn/batch", **{MODEL_RUNS: 2}))).status == 200
