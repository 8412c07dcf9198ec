"""Traces as a deployment exports them: the served app (`make run`'s launcher) with only the standard
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set, the SDK's OTLP/HTTP exporter behind its batch processor, a loopback
receiver (tests/support/otlp_receiver.py). The batch is held for ten minutes, so what arrives was sent by the shutdown's
flush: spans queued when the server stops are not lost."""

from __future__ import annotations

import httpx

from tests.support.servers import running_app, running_upstream, stop_process

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_the_spans_of_every_stream_reach_an_otlp_collector_when_the_server_stops() -> None:
    with running_upstream("tests.support.otlp_receiver:app", "otlp-receiver", "/health") as receiver, running_app(
            "otlp-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="4",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.url}/v1/traces", OTEL_BSP_SCHEDULE_DELAY="600000",
            OTEL_SERVICE_NAME="chains-otlp-test") as server:
        for headers in ({"traceparent": TRACEPARENT}, {}):
            response = httpx.post(server.url + "/chat", json={"message": "hi"}, headers=headers, timeout=20)
            assert response.status_code == 200 and "event: done" in response.text
        assert httpx.get(f"{receiver.url}/_spans", timeout=5).json() == []  # held in the batch until now
        stop_process(server)
        spans = httpx.get(f"{receiver.url}/_spans", timeout=5).json()
    requests = [s for s in spans if s["name"] == "POST /chat"]
    generations = [s for s in spans if s["name"] == "chat scripted"]
    assert len(requests) == 2 and len(generations) == 2, [s["name"] for s in spans]
    continued = next(s for s in requests if s["trace_id"] == TRACE_ID)  # the caller's trace, continued
    assert continued["parent_span_id"] == "00f067aa0ba902b7"
    for generation in generations:
        parent = next(s for s in requests if s["span_id"] == generation["parent_span_id"])
        assert parent["trace_id"] == generation["trace_id"]
        assert generation["attributes"]["gen_ai.usage.output_tokens"] == 4
        assert generation["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
