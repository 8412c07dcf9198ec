"""A loopback stand-in for LangSmith's API: accepts whatever the client posts and keeps it. `GET /_received`: the
requests as they came; `GET /_runs`: the runs they carried, each merged from its parts (LangSmith's multipart
ingest: `post.<id>` / `patch.<id>` with the run's fields, `post.<id>.inputs`, `patch.<id>.outputs`, …), by id."""

from __future__ import annotations

import base64
import email.parser
import email.policy
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

received: list[dict[str, str]] = []
runs: dict[str, dict[str, Any]] = {}


async def info(request: Request) -> JSONResponse:
    return JSONResponse({"version": "0.0.0", "batch_ingest_config": {"size_limit": 100, "scale_up_nthreads_limit": 1,
                                                                        "scale_up_qsize_trigger": 1000,
                                                                        "scale_down_nempty_trigger": 4,
                                                                        "size_limit_bytes": 20_971_520}})


def decoded(encoding: str, body: bytes) -> bytes:
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


def keep_runs(content_type: str, body: bytes) -> None:
    """Merges the runs of one request into `runs`: multipart parts named `<post|patch>.<id>[.<field>]`, or a JSON
    batch (`{"post": [...], "patch": [...]}`) or a single run."""
    if content_type.startswith("multipart/"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition") or ""
            _, _, rest = str(name).partition(".")
            run_id, _, field = rest.partition(".")
            value = orjson.loads(part.get_payload(decode=True) or b"null")
            run = runs.setdefault(run_id, {"id": run_id})
            if field:
                run[field] = value
            elif isinstance(value, dict):
                run.update(value)
        return
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    batch = parsed if isinstance(parsed, dict) and ("post" in parsed or "patch" in parsed) else {"post": [parsed]}
    for one in [*batch.get("post", []), *batch.get("patch", [])]:
        if isinstance(one, dict) and "id" in one:
            runs.setdefault(str(one["id"]), {}).update(one)


async def accept(request: Request) -> JSONResponse:
    body = decoded(request.headers.get("content-encoding", ""), await request.body())
    received.append({"path": request.url.path, "content_type": request.headers.get("content-type", ""),
                     "body": base64.b64encode(body).decode()})
    keep_runs(request.headers.get("content-type", ""), body)
    return JSONResponse({}, status_code=202)


async def get_received(request: Request) -> JSONResponse:
    return JSONResponse(received)


async def get_runs(request: Request) -> JSONResponse:
    return JSONResponse(runs)


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"data": []})


app = Starlette(routes=[
    Route("/info", info), Route("/_received", get_received), Route("/_runs", get_runs), Route("/v1/models", ready),
    Route("/{path:path}", accept, methods=["POST", "PATCH", "PUT"]),
])
