"""`/chat/runs/{run_id}/…`: resume a run's stream, or cancel it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query
from starlette.responses import JSONResponse, Response

from chains.api.chat.protocol import CHAT_EVENTS_DOC, JSON_SSE
from chains.api.runs.protocol import LAST_EVENT_ID_DOC, run_owner
from chains.api.runs.serving import RunServing
from chains.streaming.run import RUN_ID_PATTERN
from chains.streaming.store import CancelOutcome, RunInfo

RunId = Annotated[str, Path(description="the `run_id` of the start event, or the `X-Run-Id` header",
                            pattern=RUN_ID_PATTERN.pattern, max_length=22)]
Owner = Annotated[str | None, Depends(run_owner)]


def runs_router(serving: RunServing) -> APIRouter:
    router = APIRouter(tags=["runs"])

    @router.get("/chat/runs/{run_id}/stream", responses=JSON_SSE, description=(
        "The run's events after `Last-Event-ID` (header, or the `last_event_id` query), or all of them, then "
        "the live ones until its terminal event. A finished run replays within `RUN_TTL`.\n\n" + CHAT_EVENTS_DOC))
    async def resume_run(
        run_id: RunId, owner: Owner,
        last_event_id_query: Annotated[str | None, Query(alias="last_event_id", description=LAST_EVENT_ID_DOC,
                                                         max_length=200)] = None,
        last_event_id: Annotated[str | None, Header(description=LAST_EVENT_ID_DOC, max_length=200)] = None,
    ) -> Response:
        """Resume (or replay) a run's stream."""
        return await serving.join(run_id, owner, last_event_id or last_event_id_query or None)

    # The refusals are JSONResponses (404, 503), declared once for every route (chains.common.responses).
    @router.get("/chat/runs/{run_id}", response_model=RunInfo)
    async def run_state(run_id: RunId, owner: Owner) -> RunInfo | JSONResponse:
        """The run's state: running, completed, cancelled or failed; its events so far; when it ended."""
        return await serving.info(run_id, owner)

    @router.post("/chat/runs/{run_id}/cancel", response_model=CancelOutcome)
    async def cancel_run(run_id: RunId, owner: Owner) -> CancelOutcome | JSONResponse:
        """Stop the run: every listener gets `event: done` with `status` and `finish_reason` "cancelled" and what
        was sent and used until then. A second cancel, or one after the end, answers `cancelled: false`."""
        return await serving.cancel(run_id, owner)

    return router
