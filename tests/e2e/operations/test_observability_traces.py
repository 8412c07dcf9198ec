"""Traces, in process (the app on httpx's ASGI transport, spans in the SDK's in-memory exporter), against the live
fault upstream: a span per request that continues the caller's `traceparent`, a child span per generation with
the gen_ai.* attributes and a first-token event, and the generation's context sent upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.trace import SpanKind, StatusCode

from chains.common.settings import load_settings
from tests.support.servers import LiveServer

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"


@pytest.fixture
def traced_app(fault_upstream: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FastAPI]:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "memory")
    from server import create_app

    yield create_app(load_settings(_env_file=None, chat_provider="openai", openai_api_key="sk-test",
                                   openai_base_url=f"{fault_upstream.url}/v1", openai_model="fault",
                                   openai_max_retries=0, max_tokens=64, temperature=0.3))


def spans_of(app: FastAPI) -> list[Any]:
    tracing = app.state.tracing
    assert tracing is not None and tracing.memory is not None
    return list(tracing.memory.get_finished_spans())


def request(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.9", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, timeout=20, **kwargs)

    return asyncio.run(call())


def test_a_stream_is_a_request_span_with_a_generation_child_that_continues_the_callers_trace(
        traced_app: FastAPI, fault_upstream: LiveServer) -> None:
    httpx.post(fault_upstream.url + "/_script", json={"faults": ["ok"]}).raise_for_status()
    response = request(traced_app, "POST", "/chat", json={"message": "hi"}, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200 and "event: done" in response.text
    spans = spans_of(traced_app)
    (server,) = [span for span in spans if span.kind == SpanKind.SERVER]
    (generation,) = [span for span in spans if span.name == "chat fault"]
    assert server.name == "POST /chat"
    assert f"{server.context.trace_id:032x}" == TRACE_ID and f"{server.parent.span_id:016x}" == CALLER_SPAN_ID
    assert generation.parent.span_id == server.context.span_id
    assert generation.context.trace_id == server.context.trace_id
    assert server.attributes["http.route"] == "/chat" and server.attributes["http.response.status_code"] == 200
    assert server.attributes["client.address"] == "127.0.0.9"
    attributes = dict(generation.attributes)
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "fault"
    assert attributes["gen_ai.request.max_tokens"] == 64 and attributes["gen_ai.request.temperature"] == 0.3
    assert attributes["gen_ai.provider.name"] == "openai"
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("stop",)
    assert attributes["chains.token_events"] == 10  # the fault upstream's reply
    assert attributes["chains.upstream"] == f"{fault_upstream.url}/v1"  # which upstream of the list answered
    assert attributes["gen_ai.usage.output_tokens"] == 10  # its usage: every upstream is asked for it
    assert [event.name for event in generation.events] == ["gen_ai.first_token"]
    assert generation.status.status_code != StatusCode.ERROR
    # The upstream saw the generation's context: same trace, the generation span as its parent.
    (call,) = httpx.get(fault_upstream.url + "/_log").json()
    assert call["traceparent"] == f"00-{TRACE_ID}-{generation.context.span_id:016x}-01"


def test_a_failed_generation_and_a_refusal_are_marked(traced_app: FastAPI, fault_upstream: LiveServer) -> None:
    httpx.post(fault_upstream.url + "/_script", json={"faults": ["429"]}).raise_for_status()
    request(traced_app, "POST", "/chat", json={"message": "hi"})
    refused = request(traced_app, "POST", "/chat", json={"message": ""})
    assert refused.status_code == 422
    spans = spans_of(traced_app)
    (generation,) = [span for span in spans if span.name == "chat fault"]
    assert generation.attributes["error.type"] == "rate_limited" and generation.status.status_code == StatusCode.ERROR
    assert "gen_ai.usage.output_tokens" not in generation.attributes and not generation.events
    servers = [span for span in spans if span.kind == SpanKind.SERVER]
    assert [span.attributes.get("error.type") for span in servers] == [None, "validation"]
    assert all(span.parent is None for span in servers)  # no traceparent came in: each its own trace


def test_tracing_is_off_by_default(fault_upstream: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    from server import create_app

    app = create_app(load_settings(_env_file=None, chat_provider="fake"))
    assert app.state.tracing is None
