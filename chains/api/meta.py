"""`/health`, the probes (`/health/live`, `/health/ready`) and the front door."""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse, RedirectResponse
from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, Field

from chains.common.settings import Settings
from chains.models.base import AdmissionQueue
from chains.models.readiness import model_unready
from chains.streaming.generation import DRAINING, LiveStreams
from chains.streaming.store import RunStore


class Liveness(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    """Whether this replica takes new work: what a load balancer's health check and Kubernetes' readinessProbe
    read (200 ready, 503 not)."""

    ready: bool
    reasons: list[str] = Field(description="why not: draining, run_store_unreachable, no_upstream_reachable, "
                               "model_not_loaded; empty when ready")
    details: dict[str, str] = Field(description="each reason, for a person")


def meta_router(settings: Settings, admission: AdmissionQueue | None, runs: RunStore,
                model: BaseChatModel | None = None, live: LiveStreams | None = None) -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["meta"])
    async def health() -> dict[str, object]:
        """Provider, model and readiness (the model loads before the server accepts requests), plus load: the
        local model's generations running or waiting, and this worker's asyncio tasks and process id (with
        `--workers N`, which worker answered), and this worker's runs: generating, finished and kept, started."""
        report: dict[str, object] = {"status": "ok", "ready": True, "provider": settings.provider,
                                     "model": settings.model_name, "tasks": len(asyncio.all_tasks()),
                                     "pid": os.getpid(), "runs": runs.stats()}
        if admission is not None:
            report["generations"] = admission.pending
        return report

    @router.get("/health/live", tags=["meta"])
    async def liveness() -> Liveness:
        """200 while the process serves (its event loop answers): Kubernetes' livenessProbe."""
        return Liveness()

    @router.get("/health/ready", tags=["meta"], response_model=Readiness,
                responses={503: {"model": Readiness, "description": "not ready: the reasons say why"}})
    async def readiness() -> JSONResponse:
        """200 when this replica can take new work; 503 naming why not: it drains after SIGTERM, the run
        store's Redis does not answer, no upstream is reachable, or the local model is not loaded."""
        details: dict[str, str] = {}
        if live is not None and live.draining:
            details["draining"] = DRAINING
        store = runs.unready()
        if store is not None:
            details["run_store_unreachable"] = store
        if model is not None and (unready := await model_unready(model)) is not None:
            details[unready[0]] = unready[1]
        answer = Readiness(ready=not details, reasons=list(details), details=details)
        return JSONResponse(answer.model_dump(), status_code=503 if details else 200,
                            headers={"Cache-Control": "no-store"})

    @router.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/playground/")

    return router
