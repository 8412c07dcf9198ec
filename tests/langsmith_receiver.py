"""A loopback stand-in for LangSmith's API: accepts whatever the client posts and keeps it (`GET /_received`)."""

from __future__ import annotations

import base64

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

received: list[dict[str, str]] = []


async def info(request: Request) -> JSONResponse:
    return JSONResponse({"version": "0.0.0", "batch_ingest_config": {"size_limit": 100, "scale_up_nthreads_limit": 1,
                                                                        "scale_up_qsize_trigger": 1000,
                                                                        "scale_down_nempty_trigger": 4,
                                                                        "size_limit_bytes": 20_971_520}})


async def accept(request: Request) -> JSONResponse:
    received.append({"path": request.url.path, "encoding": request.headers.get("content-encoding", ""),
                     "body": base64.b64encode(await request.body()).decode()})
    return JSONResponse({}, status_code=202)


async def get_received(request: Request) -> JSONResponse:
    return JSONResponse(received)


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"data": []})


app = Starlette(routes=[
    Route("/info", info), Route("/_received", get_received), Route("/v1/models", ready),
    Route("/{path:path}", accept, methods=["POST", "PATCH", "PUT"]),
])
