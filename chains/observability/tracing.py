"""OpenTelemetry traces: off by default, on through the standard `OTEL_*` environment variables.

On when `OTEL_TRACES_EXPORTER` is `otlp` (OTLP over HTTP/protobuf) or `console`, or when an OTLP endpoint is
set (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); never when `OTEL_SDK_DISABLED=true`
or `OTEL_TRACES_EXPORTER=none`. The SDK reads the rest itself: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`. `OTEL_TRACES_EXPORTER=memory` is ours, for
tests and the bench only: spans go to the SDK's in-memory exporter of this process (nothing leaves it).

The provider is this app's own (not the global one), so that apps built side by side in one test process keep
their spans apart; the propagator is the global one (W3C `traceparent`, baggage).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from chains.common.settings import ConfigError

EXPORTERS = ("otlp", "console", "memory")


@dataclass(frozen=True)
class Tracing:
    tracer: Tracer
    provider: TracerProvider
    memory: InMemorySpanExporter | None  # with OTEL_TRACES_EXPORTER=memory: the spans, for a test to read


def chosen_exporter(environ: Mapping[str, str]) -> str | None:
    """Which exporter the environment asks for; None: tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        first = named.split(",")[0].strip()
        if first == "none":
            return None
        if first not in EXPORTERS:
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {first!r} is not one of {', '.join(EXPORTERS)}, none")
        return first
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def tracing_from_environment(environ: Mapping[str, str] = os.environ) -> Tracing | None:
    exporter_name = chosen_exporter(environ)
    if exporter_name is None:
        return None
    resource = Resource.create({} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "chains"})
    provider = TracerProvider(resource=resource)
    memory: InMemorySpanExporter | None = None
    exporter: SpanExporter
    if exporter_name == "memory":
        exporter = memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        if exporter_name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))  # exported off the event loop's thread
    return Tracing(provider.get_tracer("chains"), provider, memory)
