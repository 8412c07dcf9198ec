"""Every request counted by route template, status and error type, and traced when tracing is on. The outermost
middleware, so that the others' refusals are counted too. Pure ASGI (BaseHTTPMiddleware breaks disconnect
detection on streams); nothing per body chunk but a status check, and only an error's body is read."""

from __future__ import annotations

from contextvars import Token
from typing import get_args

import orjson
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chains.common.errors import ErrorType
from chains.common.scope import client_address
from chains.observability import metrics
from chains.observability.observer import client_address as client_address_var
from chains.observability.tracing import Tracing

KNOWN_ERROR_TYPES = frozenset(get_args(ErrorType))
ERROR_BODY_BYTES = 4096  # error bodies are small; a larger one is not ours and counts as "other"
UNROUTED = "unrouted"  # refused before routing (a middleware's refusal), or no route matched


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded: never the request's own path), once the routes have run."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNROUTED


def error_type(status: int, body: bytes) -> str:
    """The `type` of our error body, the `code` of the OpenAI-shaped one, `validation` for a 422; only names from
    the one list of error types, so the label stays bounded."""
    if status == 422:
        return "validation"
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "other"
    if isinstance(parsed, dict):
        named = parsed.get("type")
        if isinstance(parsed.get("error"), dict):  # OpenAI's shape (/v1)
            named = parsed["error"].get("code")
        if "detail" in parsed and isinstance(parsed["detail"], list):
            return "validation"
        if isinstance(named, str) and named in KNOWN_ERROR_TYPES:
            return named
    return "other"


class _Answer:
    """What a request was answered: its status, and the start of an error's body (for its type)."""

    __slots__ = ("body", "status")

    def __init__(self) -> None:
        self.status = 500
        self.body = b""


class ObserveRequests:
    def __init__(self, app: ASGIApp, tracing: Tracing | None = None) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = _Answer()

        async def observing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.status = message["status"]
            elif answer.status >= 400 and len(answer.body) < ERROR_BODY_BYTES:
                answer.body += message.get("body", b"")
            await send(message)

        client_token = client_address_var.set(client_address(scope))
        span: Span | None = None
        context_token: Token[Context] | None = None
        if self.tracing is not None:
            carrier = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
            span = self.tracing.tracer.start_span(
                scope["method"], context=propagate.extract(carrier), kind=SpanKind.SERVER,
                attributes={"http.request.method": scope["method"], "url.path": scope["path"],
                            "client.address": client_address(scope)})
            context_token = otel_context.attach(set_span_in_context(span))
        try:
            await self.app(scope, receive, observing_send)
        finally:
            status = answer.status
            kind = error_type(status, answer.body) if status >= 400 else ""
            route = route_template(scope)
            metrics.requests.labels(route, scope["method"], str(status), kind).inc()
            client_address_var.reset(client_token)
            if span is not None:
                span.update_name(f"{scope['method']} {route}")
                span.set_attributes({"http.route": route, "http.response.status_code": status})
                if kind:
                    span.set_attribute("error.type", kind)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
            if context_token is not None:
                otel_context.detach(context_token)
