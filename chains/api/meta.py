"""`/health` and the front door."""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from chains.common.settings import Settings
from chains.models.base import AdmissionQueue
from chains.streaming.store import RunStore


def meta_router(settings: Settings, admission: AdmissionQueue | None, runs: RunStore) -> APIRouter:
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

    @router.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/playground/")

    return router
