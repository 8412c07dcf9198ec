"""The real app (`server.create_app`) with the scripted model, in-process: an httpx client over its ASGI
transport, no server and no socket. One app per set of settings, built once (building one takes ~0.4 s).

The app's lifespan is not entered (httpx's ASGITransport runs none): what it yields is the connection limits and
live streams for the request-line protocol (tests/unit/hosting/test_http_protocol.py drives that), it closes the
run store, and it freezes the heap (tests/unit/hosting/test_heap.py) — none of which a request here needs."""

from __future__ import annotations

from functools import cache
from typing import Any

import httpx
from fastapi import FastAPI

from chains.common.settings import load_settings


@cache
def _app(settings: tuple[tuple[str, Any], ...]) -> FastAPI:
    from server import create_app  # server.py builds the environment's app on import: only when a test needs it

    return create_app(load_settings(_env_file=None, chat_provider="fake", **dict(settings)))


def client(**settings: Any) -> httpx.AsyncClient:
    """A client of the app these settings (lower-case names, as `load_settings` takes them) describe."""
    app = _app(tuple(sorted(settings.items())))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
