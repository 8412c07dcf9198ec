"""The streaming core's observer: each generation's metrics, its span and its one log line, at its start, first
token and end (chains.streaming.record.StreamObserver; nothing per token).
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context

from chains.common.log_text import json_line, logfmt
from chains.observability import metrics
from chains.observability.tracing import Tracing
from chains.observability.upstream import UpstreamsObserved
from chains.streaming.record import StreamLabels, StreamRecord

# The client's address, set by the request's middleware (chains.middleware.observe) for the log line: normalised
# (chains.common.scope.client_address), never a forwarded header's text as given.
client_address: ContextVar[str] = ContextVar("client_address", default="")

stream_log = logging.getLogger(__name__)  # chains.observability.observer


class _Series:
    """The metric series of one (route, chain, provider, model): looked up once, not at every stream's end
    (`labels()` costs a few microseconds a call, and a stream's end records eight of them)."""

    __slots__ = (
        "duration",
        "endings",
        "first_answer",
        "first_reasoning",
        "first_token",
        "input_tokens",
        "longest_gap",
        "open",
        "output_tokens",
        "per_token",
        "values",
    )

    def __init__(self, values: tuple[str, str, str, str]) -> None:
        self.values = values
        self.open = metrics.streams_open.labels(*values)
        self.duration = metrics.operation_duration.labels(*values)
        self.first_token = metrics.time_to_first_token.labels(*values)
        self.first_reasoning = metrics.time_to_first_reasoning.labels(*values)
        self.first_answer = metrics.time_to_first_answer.labels(*values)
        self.per_token = metrics.time_per_output_token.labels(*values)
        self.longest_gap = metrics.longest_gap.labels(*values)
        self.input_tokens = metrics.token_usage.labels(*values, "input")
        self.output_tokens = metrics.token_usage.labels(*values, "output")
        self.endings: dict[str, Any] = {}

    def ending(self, reason: str) -> Any:
        counter = self.endings.get(reason)
        if counter is None:
            counter = self.endings[reason] = metrics.stream_endings.labels(*self.values, reason)
        return counter


class _Stream:
    """The handle of one generation: its metric series, its span, its client."""

    __slots__ = ("client", "series", "span")

    def __init__(self, series: _Series, span: Span | None, client: str) -> None:
        self.series = series
        self.span = span
        self.client = client


@dataclass
class StreamsObserved:
    provider: str
    model: str
    temperature: float
    max_tokens: int
    tracing: Tracing | None = None
    json_log: bool = False

    series: dict[tuple[str, str], _Series] = field(default_factory=dict)  # by (route, chain): a bounded set

    def stream_started(self, labels: StreamLabels) -> _Stream:
        series = self.series.get((labels.route, labels.chain))
        if series is None:
            series = self.series[labels.route, labels.chain] = _Series(
                (labels.route, labels.chain, self.provider, self.model))
        series.open.inc()
        span = None
        if self.tracing is not None:
            # A child of the request's span: the current context is the request's (chains.middleware.observe).
            span = self.tracing.tracer.start_span(f"chat {self.model}", kind=SpanKind.INTERNAL, attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider,
                "gen_ai.request.model": self.model, "gen_ai.request.max_tokens": self.max_tokens,
                "gen_ai.request.temperature": self.temperature, "chains.route": labels.route,
                "chains.chain": labels.chain})
            # Made current: the generation's task, created right after this call, copies the context, so the
            # upstream call is the span's child (its traceparent). The request's middleware restores the context
            # when the request ends.
            otel_context.attach(set_span_in_context(span))
        return _Stream(series, span, client_address.get())

    def first_token(self, handle: object) -> None:
        assert isinstance(handle, _Stream)  # what stream_started returned
        span = handle.span
        if span is not None:
            span.add_event("gen_ai.first_token")

    def stream_ended(self, handle: object, record: StreamRecord) -> None:
        assert isinstance(handle, _Stream)  # what stream_started returned
        stream = handle
        series = stream.series
        series.open.dec()
        series.ending(record.ending).inc()
        for histogram, value in ((series.duration, record.seconds), (series.first_token, record.time_to_first_token),
                                 (series.per_token, record.time_per_output_token),
                                 (series.first_reasoning, record.time_to_first_reasoning),
                                 (series.first_answer, record.time_to_first_answer),
                                 (series.longest_gap, record.longest_gap), (series.input_tokens, record.prompt_tokens),
                                 (series.output_tokens, record.completion_tokens)):
            if value is not None:  # not measured (no first token, one token only, no usage reported)
                histogram.observe(value)
        if stream.span is not None:
            self._end_span(stream.span, record)
        stream_log.info(self.log_line(record, stream.client))

    def _end_span(self, span: Span, record: StreamRecord) -> None:
        attributes: dict[str, Any] = {"gen_ai.response.finish_reasons": [record.finish_reason or record.ending],
                                      "chains.ending": record.ending, "chains.token_events": record.token_events}
        if record.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = record.prompt_tokens
        if record.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = record.completion_tokens
        if record.time_to_first_token is not None:
            attributes["gen_ai.server.time_to_first_token"] = record.time_to_first_token
        if record.reasoning_tokens is not None:
            attributes["gen_ai.usage.reasoning.output_tokens"] = record.reasoning_tokens
        if record.reasoning_events:
            attributes["chains.reasoning_events"] = record.reasoning_events
        if record.upstream is not None:
            attributes["chains.upstream"] = record.upstream
        if record.ending not in ("done", "cancelled", "disconnect"):
            attributes["error.type"] = record.ending
            span.set_status(Status(StatusCode.ERROR))
        span.set_attributes(attributes)
        span.end()

    def log_line(self, record: StreamRecord, client: str) -> str:
        """One line per stream: what ended, how, how fast. Never the messages, never a key."""
        fields: dict[str, object] = {
            "event": "stream_end", "run_id": record.run_id, "route": record.labels.route,
            "chain": record.labels.chain, "provider": self.provider, "model": self.model, "ending": record.ending,
            "finish_reason": record.finish_reason, "ttft_s": _rounded(record.time_to_first_token),
            "tokens": record.token_events, "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens, "duration_s": _rounded(record.seconds), "client": client}
        if record.reasoning_events:
            fields["reasoning_events"] = record.reasoning_events
            fields["ttfa_s"] = _rounded(record.time_to_first_answer)
        if record.reasoning_tokens is not None:
            fields["reasoning_tokens"] = record.reasoning_tokens
        if record.upstream is not None:
            fields["upstream"] = record.upstream
        if self.json_log:
            return json_line(orjson.dumps(fields).decode())  # one object, one line
        # logfmt: a value with a space, `=`, `"` or anything non-printable is quoted and escaped, so that none
        # (an upstream's finish_reason, a model's name) can end the line or pose as another field.
        del fields["event"]
        return "stream end " + logfmt(fields)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


class LocalQueueObserved:
    """The local model's queue (chains.models.local's hook): submitted → decoding → done, per model."""

    def __init__(self, model: str) -> None:
        self.wait = metrics.local_queue_wait.labels(model)
        self.depth = metrics.local_queue_depth.labels(model)
        self.running = metrics.local_running.labels(model)

    def queued(self) -> None:
        self.depth.inc()

    def decode_started(self, waited: float) -> None:
        self.depth.dec()
        self.running.inc()
        self.wait.observe(waited)

    def decode_ended(self) -> None:
        self.running.dec()


def add_stream_log_handler(json_lines: bool) -> None:
    """The stream log's own handler (uvicorn configures only its own loggers): one line a stream, on stderr."""
    if stream_log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if json_lines else "%(asctime)s %(levelname)s %(message)s"))
    stream_log.addHandler(handler)
    stream_log.setLevel(logging.INFO)
    stream_log.propagate = False


def observe(provider: str, model: str, temperature: float, max_tokens: int, json_log: bool,
            tracing: Tracing | None, chat_model: object = None) -> StreamsObserved:
    """The observer for the streaming core; the local model's queue reports to the metrics too."""
    add_stream_log_handler(json_log)
    observe_queue = getattr(chat_model, "observe_queue", None)
    if observe_queue is not None:
        observe_queue(LocalQueueObserved(model))
    observe_upstreams = getattr(chat_model, "observe_upstreams", None)
    if observe_upstreams is not None:
        observe_upstreams(UpstreamsObserved(model))
    return StreamsObserved(provider, model, temperature, max_tokens, tracing, json_log)
