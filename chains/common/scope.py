"""The keys we set in a request's ASGI scope, which paths run the model, and who the client is: what the
middleware, the surfaces and the request-line protocol all read (no web framework: a scope is a mapping)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]  # an ASGI scope, as Starlette types it

# Set by LangServeBodies on a /batch: how many model runs the request asks for (the limits count them).
MODEL_RUNS = "chains.model_runs"
# Set in each request's scope by the request-line protocol (chains.hosting.http_protocol), so that the app can
# tell that the connection limits are in force.
PROTOCOL_MARK = "chains.http_protocol"

# Set by ApiKeyAuth when a request's key is valid: a fingerprint of the key (never the key), the owner of its runs.
API_KEY_ID = "chains.api_key_id"

# Set by BodySendInScope, the outermost of ours: its own `send`. A stream's body chunks go straight to it
# (chains.streaming.generation), past every middleware inside: a middleware here may watch `http.response.start` and the
# last body message (`more_body` false), never the chunks between (chains.middleware.body_send).
BODY_SEND = "chains.body_send"

MODEL_ENDPOINTS = ("/invoke", "/batch", "/stream", "/stream_log", "/stream_events")
# The OpenAI-compatible surface's generation endpoint (chains.api.openai).
OPENAI_COMPLETIONS = "/v1/chat/completions"


RUNS_PREFIX = "/chat/runs/"  # a run's state, its cancel, and joining it (chains.api.runs)


def runs_the_model(path: str) -> bool:
    """LangServe's generation endpoints, the /chat routes and /v1/chat/completions; not schemas, docs, playgrounds
    or /health, nor a run's state, its cancel or joining it (`/chat/runs/…`), which start nothing."""
    if path.startswith(RUNS_PREFIX):
        return False
    return ((path.startswith("/chat") and path != "/chat/defaults")
            or path.rstrip("/").endswith(MODEL_ENDPOINTS) or path == OPENAI_COMPLETIONS)


def joins_a_run(path: str) -> bool:
    """`GET /chat/runs/{id}/stream`: follows a run that is generating, and holds a stream open while it does."""
    return path.startswith(RUNS_PREFIX) and path.endswith("/stream")


def holds_a_stream(path: str) -> bool:
    """What MAX_STREAMS_PER_CLIENT counts: requests that run the model, and joins of a run (each holds a
    connection and a listener, through another replica a Redis connection too) — not a run's state or cancel."""
    return runs_the_model(path) or joins_a_run(path)


def client_address(scope: Scope) -> str:
    """The connection's address, or the one a trusted proxy reports (uvicorn's FORWARDED_ALLOW_IPS)."""
    return scope["client"][0] if scope.get("client") else "unknown"
