"""A loopback stand-in for an OpenTelemetry collector's OTLP/HTTP traces endpoint (protobuf): `POST /v1/traces`
takes what the SDK's OTLP exporter sends; `GET /_spans`: the spans received (name, ids, attributes), or with
`?count` only how many (what the bench asks: it keeps nothing else)."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

spans: list[dict[str, Any]] = []
counted = 0


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return list(v.string_value for v in value.array_value.values) if kind == "array_value" else getattr(value, kind)


async def traces(request: Request) -> Response:
    global counted
    export = ExportTraceServiceRequest.FromString(await request.body())
    for resource in export.resource_spans:
        for scope in resource.scope_spans:
            counted += len(scope.spans)
            if request.app.state.keep:
                spans.extend({"name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                              "parent_span_id": span.parent_span_id.hex(),
                              "attributes": {a.key: _value(a.value) for a in span.attributes}}
                             for span in scope.spans)
    return Response(b"", media_type="application/x-protobuf")  # an empty ExportTraceServiceResponse: all accepted


async def received(request: Request) -> Response:
    if "count" in request.query_params:
        return PlainTextResponse(str(counted))
    return JSONResponse(spans)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/_spans", received),
                        Route("/health", health)])
app.state.keep = True
# The bench's sink: counts, keeps nothing (`uvicorn tests.support.otlp_receiver:counting`).
counting = Starlette(routes=app.routes)
counting.state.keep = False
