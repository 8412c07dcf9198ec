"""What the tests' scripted OpenAI-compatible upstreams share (`fault_upstream`, `markdown_upstream`): a streamed
chunk as OpenAI's API encodes it, the stream's end, an error body, and the one-model `/v1/models` route (what
`start_upstream` polls until the server is up)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DONE = b"data: [DONE]\n\n"


def chunk(model: str, delta: dict[str, Any], finish: str | None = None,
          usage: dict[str, int] | None = None) -> bytes:
    """One `chat.completion.chunk` event; with `usage`, the usage chunk (no choices) that ends a stream asked for
    `stream_options.include_usage`."""
    body: dict[str, Any] = {"id": f"chatcmpl-{model}", "object": "chat.completion.chunk", "created": 0,
                            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["choices"], body["usage"] = [], usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def usage_chunk(model: str, request_body: dict[str, Any], prompt: int, completion: int) -> bytes:
    """The usage chunk if the request asked for one (`stream_options.include_usage`), else nothing."""
    if not (request_body.get("stream_options") or {}).get("include_usage"):
        return b""
    return chunk(model, {}, usage={"prompt_tokens": prompt, "completion_tokens": completion,
                                   "total_tokens": prompt + completion})


def error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error body: what its client turns into `APIStatusError` subclasses."""
    return JSONResponse({"error": {"message": message, "type": code, "code": code}}, status, headers=headers)


def models_route(model: str) -> Route:
    """`GET /v1/models`, listing `model` only."""
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})
    return Route("/v1/models", models)
