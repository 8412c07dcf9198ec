"""The OpenAI-compatible upstream's HTTP client, observed: the trace context goes upstream (`traceparent`), and
retries and failed answers are counted. Event hooks on the client the OpenAI SDK uses: once per HTTP call, not
per token."""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate

from chains.observability import metrics


def failure_kind(status: int) -> str | None:
    if status < 400:
        return None
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    return "server_error" if status >= 500 else "client_error"


def observed_async_client(model: str, upstream: str) -> Any:
    """The OpenAI SDK's default async client (its limits and redirects) with our hooks, for one upstream."""
    import openai

    retries = metrics.upstream_retries.labels(model, upstream)

    async def on_request(request: Any) -> None:
        propagate.inject(request.headers)  # the current span's context: a generation's, when tracing is on
        # The SDK numbers its attempts in this header: 0 the first call, then each retry.
        if request.headers.get("x-stainless-retry-count", "0") != "0":
            retries.inc()

    async def on_response(response: Any) -> None:
        kind = failure_kind(response.status_code)
        if kind is not None:
            metrics.upstream_failures.labels(model, upstream, kind).inc()

    return openai.DefaultAsyncHttpxClient(event_hooks={"request": [on_request], "response": [on_response]})


class UpstreamsObserved:
    """The upstreams' hook (chains.models.upstreams.UpstreamsObserver): which answered, which were moved past."""

    def __init__(self, model: str) -> None:
        self.model = model

    def answered(self, upstream: str) -> None:
        metrics.upstream_answers.labels(self.model, upstream).inc()

    def failed_over(self, upstream: str) -> None:
        metrics.upstream_failovers.labels(self.model, upstream).inc()
