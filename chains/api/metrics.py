"""`GET /metrics`: Prometheus' text format, every worker's values summed (chains.observability.metrics). With
`API_KEYS` set it needs a key like every route (a scraper sends `Authorization: Bearer <key>`)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from chains.observability.metrics import render


def metrics_router() -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", tags=["meta"], response_class=Response)
    def scrape() -> Response:
        """Prometheus metrics: TTFT, time per output token, token usage, durations, endings, requests, queues."""
        body, content_type = render()
        return Response(body, media_type=content_type)

    return router
