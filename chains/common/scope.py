"""The keys we set in a request's ASGI scope, which paths run the model, and who the client is: what the
middleware, the surfaces and the request-line protocol all read (no web framework: a scope is a mapping)."""

from __future__ import annotations

import functools
import ipaddress
import re
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
OPENAI_RESPONSES = "/v1/responses"  # POST only: its /{id} routes read, resume or cancel a run (chains.api.responses)


RUNS_PREFIX = "/chat/runs/"  # a run's state, its cancel, and joining it (chains.api.runs)


UI_CHAT = "/api/chat"  # the AI SDK's UI message stream (chains.api.ui)


def runs_the_model(path: str) -> bool:
    """LangServe's generation endpoints, the /chat routes, /v1/chat/completions, /v1/responses and /api/chat; not
    schemas, docs, playgrounds or /health, nor a run's state, its cancel or joining it (`/chat/runs/…`), which start
    nothing."""
    if path.startswith(RUNS_PREFIX):
        return False
    return ((path.startswith("/chat") and path != "/chat/defaults")
            or path.rstrip("/").endswith(MODEL_ENDPOINTS) or path in (OPENAI_COMPLETIONS, OPENAI_RESPONSES, UI_CHAT))


def joins_a_run(path: str) -> bool:
    """`GET /chat/runs/{id}/stream`, a chat's `GET /api/chat/{id}/stream` or `GET /v1/responses/{id}` (which may
    stream): follows a run that is generating, and holds a stream open while it does."""
    return ((path.startswith((RUNS_PREFIX, UI_CHAT + "/")) and path.endswith("/stream"))
            or (path.startswith(OPENAI_RESPONSES + "/") and not path.endswith("/cancel")))


def holds_a_stream(path: str) -> bool:
    """What MAX_STREAMS_PER_CLIENT counts: requests that run the model, and joins of a run (each holds a
    connection and a listener, through another replica a Redis connection too) — not a run's state or cancel."""
    return runs_the_model(path) or joins_a_run(path)


# Set by client_address: the client's address as it computed it (each request asks a few times).
CLIENT_ADDRESS = "chains.client_address"
# The one bucket of every client whose address (a proxy's X-Forwarded-For, as given) is not an IP address.
INVALID_ADDRESS = "invalid"
# An IPv6 address is at most 45 characters as text ("ffff:…:255.255.255.255"), 62 with a zone id (`_ZONE_ID`).
_LONGEST_ADDRESS = 64
_ZONE_ID = re.compile(r"[0-9A-Za-z_.-]{1,16}")


def normalised_address(host: str) -> str:
    """An IP address in its one canonical text (an IPv4-mapped IPv6 address as IPv4, no zone id), or
    INVALID_ADDRESS: never the text as given, which a client behind a trusted proxy chooses (X-Forwarded-For)."""
    if not host or len(host) > _LONGEST_ADDRESS:  # before the cache: it keeps only short texts
        return INVALID_ADDRESS
    return _parsed(host)


@functools.lru_cache(maxsize=4096)  # a parse costs microseconds; the same clients come again and again
def _parsed(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return INVALID_ADDRESS
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.scope_id is not None:  # "fe80::1%<anything but %>" parses: a zone id is an interface's name
            if not _ZONE_ID.fullmatch(address.scope_id):
                return INVALID_ADDRESS
            return str(ipaddress.IPv6Address(address.packed))  # one client whichever interface it came by
    return str(address)


def client_address(scope: Scope) -> str:
    """The connection's address, or the one a trusted proxy reports (uvicorn's FORWARDED_ALLOW_IPS), normalised:
    what every limit counts by and every log line shows. Computed once a request, kept in the scope."""
    address = scope.get(CLIENT_ADDRESS)
    if address is None:
        client = scope.get("client")
        address = scope[CLIENT_ADDRESS] = normalised_address(str(client[0])) if client else "unknown"
    return address
