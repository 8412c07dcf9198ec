"""The probes in-process (chains.api.meta): `/health/live` answers while the process serves; `/health/ready` is 200
only when the replica can take new work, and 503 naming each reason otherwise, one reason at a time and all
together. The end-to-end probes (a real SIGTERM, a stopped redis-server, a closed upstream port) are in
tests/e2e/operations/test_probes.py; here also the reason a running server cannot show: the local model not
loaded. And while draining, new work is refused and the rest passes (chains.middleware.draining)."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from chains.api.meta import meta_router
from chains.common.settings import load_settings
from chains.middleware.draining import RefuseWhileDraining
from chains.models.fake import ScriptedChatModel
from chains.models.upstreams import OpenAICompatibleChat, build_upstreams
from chains.streaming.generation import LiveStreams
from chains.streaming.store import MemoryRunStore, RunLimits

SETTINGS = load_settings(_env_file=None, chat_provider="fake")


class UnloadedModel(ScriptedChatModel):
    @property
    def loaded(self) -> bool:
        return False


class StoreAway(MemoryRunStore):
    def unready(self) -> str | None:
        return "the run store (Redis) has not answered for 3.1 s"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upstreams(url: str) -> Any:
    def models(url: str | None) -> tuple[OpenAICompatibleChat, OpenAICompatibleChat]:
        model = OpenAICompatibleChat(model="m", api_key="sk-test", base_url=url, max_retries=0)
        return model, model
    return build_upstreams([url], models, "m", 30.0, 0, 0)


async def ready(model: Any = None, store: MemoryRunStore | None = None, draining: bool = False) -> httpx.Response:
    live = LiveStreams()
    live.draining = draining
    app = FastAPI()
    app.include_router(meta_router(SETTINGS, None, store or MemoryRunStore(RunLimits()),
                                   model if model is not None else ScriptedChatModel(), live))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/health/live")).json() == {"status": "ok"}  # whatever readiness says
        assert (await client.get("/health")).status_code == 200  # as it always was
        return await client.get("/health/ready")


async def test_ready_when_nothing_stands_in_the_way() -> None:
    answer = await ready()
    assert answer.status_code == 200 and answer.json() == {"ready": True, "reasons": [], "details": {}}
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("reason", "setup"), [
    ("draining", {"draining": True}),
    ("run_store_unreachable", {"store": StoreAway(RunLimits())}),
    ("model_not_loaded", {"model": UnloadedModel()}),
])
async def test_each_reason_alone_is_a_503_naming_it(reason: str, setup: dict[str, Any]) -> None:
    answer = await ready(**setup)
    assert answer.status_code == 503
    body = answer.json()
    assert body["ready"] is False and body["reasons"] == [reason] and body["details"][reason]


async def test_no_upstream_reachable_when_the_only_one_refuses_connections_and_ready_once_one_listens() -> None:
    port = closed_port()
    model = upstreams(f"http://127.0.0.1:{port}/v1")
    answer = await ready(model)
    assert answer.status_code == 503 and answer.json()["reasons"] == ["no_upstream_reachable"]
    assert "sk-test" not in answer.text and str(port) not in answer.text  # no key, no address
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", port))
        listening.listen()
        model._reach = None  # the cached answer (REACH_CACHE) aside
        assert (await ready(model)).status_code == 200
    model._reach = None
    model.upstreams[0].cooling_until = time.monotonic() + 30  # it failed a request: not a candidate meanwhile
    assert (await ready(model)).json()["reasons"] == ["no_upstream_reachable"]


async def test_every_reason_at_once() -> None:
    answer = await ready(UnloadedModel(), StoreAway(RunLimits()), draining=True)
    assert answer.status_code == 503
    assert answer.json()["reasons"] == ["draining", "run_store_unreachable", "model_not_loaded"]


async def test_while_draining_new_work_is_refused_and_joins_state_and_probes_pass() -> None:
    async def routes(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("passed")(scope, receive, send)

    live = LiveStreams()
    app = RefuseWhileDraining(routes, live)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.post("/chat", json={"message": "hi"})).text == "passed"  # not draining yet
        live.draining = True
        for method, path in (("GET", "/chat"), ("POST", "/v1/chat/completions"), ("POST", "/v1/responses"),
                             ("POST", "/api/chat"), ("POST", "/single-turn/stream"), ("GET", "/chat-token")):
            refused = await client.request(method, path)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", path
            if path.startswith("/v1"):  # in OpenAI's shape, which its SDKs raise (and retry: a 503)
                assert refused.json()["error"]["code"] == "draining"
            elif path.startswith("/api/chat"):  # the AI SDK shows the body as it is: text
                assert refused.text.startswith("this replica is shutting down")
            else:
                assert refused.json()["type"] == "draining"
        for method, path in (("GET", "/chat/runs/" + "A" * 22 + "/stream"), ("GET", "/chat/runs/" + "A" * 22),
                             ("POST", "/chat/runs/" + "A" * 22 + "/cancel"), ("GET", "/health/ready"),
                             ("GET", "/v1/responses/resp_x"), ("OPTIONS", "/chat")):
            assert (await client.request(method, path)).text == "passed", path
