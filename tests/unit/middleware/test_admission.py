"""chains.middleware.admission: the local model's places refuse what would not fit, before it starts: the queue
as a whole (503), and one client's share of it (429)."""

from __future__ import annotations

from chains.common.errors import ModelOverloadedError
from chains.common.scope import API_KEY_ID, MODEL_RUNS
from chains.middleware.admission import ModelAdmission
from chains.models.base import ModelClient, ModelPlaces, model_client
from tests.support.asgi import Inner, call, scope


class Queue:
    """An AdmissionQueue over the real ledger, without a model."""

    def __init__(self, queue_size: int, per_client: int = 8) -> None:
        self.places = ModelPlaces(queue_size, per_client)

    @property
    def pending(self) -> int:
        return self.places.pending

    def free_places(self) -> int:
        return self.places.free()

    def refusal(self, client: ModelClient | None, runs: int = 1) -> ModelOverloadedError | None:
        return self.places.refusal(client, runs)


async def test_model_requests_are_refused_when_the_queue_has_no_room() -> None:
    queue = Queue(queue_size=0)
    middleware = ModelAdmission(Inner(), queue)
    queue.places.take(ModelClient("10.9.9.9"))  # someone else holds the one place
    full = await call(middleware, scope(path="/conversation/stream"))
    assert full.status == 503 and full.headers["retry-after"] == "1"
    assert full.json() == {"error": "the local model is busy: its wait queue is full", "type": "overloaded"}
    assert (await call(middleware, scope(method="GET", path="/health"))).status == 200
    assert (await call(middleware, scope(method="OPTIONS"))).status == 200
    queue.places.give_back(("a:10.9.9.9",))
    assert (await call(middleware, scope())).status == 200


async def test_a_batch_needs_a_place_for_each_input() -> None:
    queue = Queue(queue_size=1)  # two places
    middleware = ModelAdmission(Inner(), queue)
    refused = await call(middleware, scope(path="/single-turn/batch", **{MODEL_RUNS: 3}))
    assert refused.status == 503
    assert refused.json()["error"] == "the local model is busy: a batch of 3 inputs needs 3 places, 2 are free"


async def test_one_client_cannot_take_all_the_places() -> None:
    """The hole: runs that outlive their connection took every place of the local model for one address. A
    client holds at most LOCAL_QUEUE_PER_CLIENT, and never all of them: the others are still served."""
    queue = Queue(queue_size=4, per_client=8)  # 5 places; the share is capped at 4
    middleware = ModelAdmission(Inner(), queue)
    for _ in range(4):
        queue.places.take(ModelClient("127.0.0.9", "key-a"))
    mine = await call(middleware, scope(client="127.0.0.9"))
    assert mine.status == 429 and mine.headers["retry-after"] == "1"
    assert mine.json() == {"type": "too_many_runs", "error": (
        "this client address holds 4 of the local model's 5 places (running or waiting), the most one may "
        "(LOCAL_QUEUE_PER_CLIENT=4); try again when one ends")}
    same_key = await call(middleware, scope(client="127.0.0.10", **{API_KEY_ID: "key-a"}))
    assert same_key.status == 429 and "this API key holds 4" in same_key.json()["error"]
    assert (await call(middleware, scope(client="127.0.0.10", **{API_KEY_ID: "key-b"}))).status == 200


async def test_the_request_runs_in_its_clients_name() -> None:
    seen: list[ModelClient | None] = []

    async def app(scope: object, receive: object, send: object) -> None:
        seen.append(model_client.get())
        await Inner()(scope, receive, send)  # type: ignore[arg-type]

    middleware = ModelAdmission(app, Queue(queue_size=2))  # type: ignore[arg-type]
    await call(middleware, scope(client="10.1.2.3", **{API_KEY_ID: "key-z"}))
    assert seen == [ModelClient("10.1.2.3", "key-z")] and model_client.get() is None


def test_the_ledger_gives_every_place_back() -> None:
    places = ModelPlaces(queue_size=2, per_client=2)
    assert places.share == 2
    held = [places.take(ModelClient("a", "k")), places.take(ModelClient("b"))]
    assert places.pending == 2 and places.held == {"a:a": 1, "k:k": 1, "a:b": 1}
    for slots in held:
        places.give_back(slots)
    assert places.pending == 0 and not places.held
    assert ModelPlaces(queue_size=0, per_client=8).share == 1  # one place: whoever comes first may have it
