"""`/chat` is served by hand (chains.api.chat.router.served_by): one validation of the whole request, not
FastAPI's per-request solving. It must answer every request exactly as FastAPI's own handler of the same
signatures would: here the same app twice, once with `/chat` served by FastAPI's handler, and a battery of good
and bad requests compared answer for answer (status, headers that matter, body; a stream by its events' kinds)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from chains.common.settings import load_settings
from tests.support.sse import parse_sse

SETTINGS = {"chat_provider": "fake", "fake_reply_tokens": 3, "max_input_chars": 50, "_env_file": None}
LONG = "x" * 51
RUN = "A" * 22


def app(solved_by_fastapi: bool) -> FastAPI:
    from server import create_app

    built = create_app(load_settings(**SETTINGS))
    if solved_by_fastapi:  # before its first request: FastAPI resolves the included routers' routes then
        for routes in routes_of(built):
            for i, route in enumerate(routes):
                if isinstance(route, APIRoute) and route.path == "/chat":
                    routes[i] = APIRoute(route.path, route.endpoint, methods=list(route.methods), name=route.name,
                                         responses=route.responses, description=route.description)
    return built


def routes_of(built: FastAPI) -> list[list[Any]]:
    """The app's route lists: its own, and each included router's (FastAPI keeps those apart)."""
    lists = [built.router.routes]
    lists += [route.original_router.routes for route in built.router.routes if hasattr(route, "original_router")]
    return lists


CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/chat?message=hi", {}),
    ("GET", "/chat", {}),
    ("GET", "/chat?message=", {}),
    ("GET", f"/chat?message={LONG}", {}),
    ("GET", "/chat?message=a&message=b", {}),
    ("GET", "/chat?message=hi&buffer_size=0", {}),
    ("GET", "/chat?message=hi&buffer_size=abc&flush_ms=0&timeout=-1&idle_timeout=99999", {}),
    ("GET", f"/chat?message=hi&system_prompt={LONG}", {}),
    ("GET", "/chat?message=hi&on_disconnect=bogus", {}),
    ("GET", "/chat?message=hi&on_disconnect=" + "9" * 17, {}),
    ("GET", "/chat?on_disconnect=bogus&buffer_size=0", {}),
    ("GET", "/chat?on_disconnect=" + "9" * 17 + "&buffer_size=0", {}),
    ("GET", "/chat?message=hi&on_disconnect=continue&unknown=1", {}),
    ("GET", "/chat?message=hi", {"headers": {"Last-Event-ID": "x" * 201}}),
    ("GET", "/chat?message=hi", {"headers": {"Last-Event-ID": "not-an-id"}}),
    ("GET", "/chat", {"headers": {"Last-Event-ID": f"{RUN}:3"}}),
    ("POST", "/chat", {}),
    ("POST", "/chat?message=hi", {}),
    ("POST", "/chat", {"json": {"message": "hi"}}),
    ("POST", "/chat", {"json": {}}),
    ("POST", "/chat", {"json": None}),
    ("POST", "/chat", {"json": "text"}),
    ("POST", "/chat", {"json": [1, 2]}),
    ("POST", "/chat", {"json": {"message": "hi", "messages": [{"role": "user", "content": "hi"}]}}),
    ("POST", "/chat", {"json": {"messages": []}}),
    ("POST", "/chat", {"json": {"messages": [{"role": "bot", "content": "hi"}]}}),
    ("POST", "/chat", {"json": {"messages": [{"role": "user", "content": LONG}]}}),
    ("POST", "/chat", {"json": {"message": "hi", "buffer_size": "x", "extra": 1}}),
    ("POST", "/chat?buffer_size=0", {"json": {"message": "hi", "buffer_size": 0}}),
    ("POST", "/chat?on_disconnect=bogus", {"json": {"message": "hi"}}),
    ("POST", "/chat?message=hi", {"content": b"hi", "headers": {"Content-Type": "text/plain"}}),
    ("POST", "/chat", {"content": b'{"message": "hi"}', "headers": {"Content-Type": "application/merge+json"}}),
    ("POST", "/chat", {"content": b'{"message": ', "headers": {"Content-Type": "application/json"}}),
    ("POST", "/chat", {"json": {"message": "hi"}, "headers": {"Last-Event-ID": f"{RUN}:3"}}),
    ("PUT", "/chat?message=hi", {}),
    ("HEAD", "/chat?message=hi", {}),
]


def answer(response: httpx.Response) -> tuple[Any, ...]:
    kept = {name: response.headers.get(name) for name in ("content-type", "allow", "retry-after")}
    if kept["content-type"] and kept["content-type"].startswith("text/event-stream"):
        return response.status_code, kept, [event.event for event in parse_sse(response.text)]
    return response.status_code, kept, response.text


@pytest.fixture(scope="module")
def apps() -> tuple[FastAPI, FastAPI]:
    by_hand, by_fastapi = app(False), app(True)
    kinds = [{type(route).__name__ for routes in routes_of(each) for route in routes
              if getattr(route, "path", "") == "/chat"} for each in (by_hand, by_fastapi)]
    assert kinds == [{"ServedByHand"}, {"APIRoute"}]
    return by_hand, by_fastapi




@pytest.mark.parametrize(("method", "path", "request_args"), CASES)
async def test_served_by_hand_answers_as_fastapi_would(apps: tuple[FastAPI, FastAPI], method: str, path: str,
                                                      request_args: dict[str, Any]) -> None:
    answers = []
    for each in apps:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=each), base_url="http://test") as client:
            answers.append(answer(await client.request(method, path, **request_args)))
    by_hand, by_fastapi = answers
    assert by_hand == by_fastapi
    SEEN.add(by_hand[0])


SEEN: set[int] = set()


def test_every_kind_of_answer_was_compared() -> None:
    """Run after the cases: the battery reached streams, validation problems, refusals and a wrong method."""
    assert {200, 400, 405, 422} <= SEEN, SEEN
