"""An OpenAI-compatible upstream that answers like a reasoning model behind vLLM, for the reasoning tests; served by
uvicorn on 127.0.0.1 (`upstream_fixture("tests.support.reasoning_upstream:app", name)`).

A stream is what vLLM documents for its reasoning parsers: a role chunk `{"role": "assistant", "content": ""}`,
one chunk per `REASONING` piece whose delta holds the reasoning field only, one chunk per `ANSWER` piece
(`content`), the finish chunk, and — with `stream_options.include_usage` — a usage chunk whose
`completion_tokens_details.reasoning_tokens` counts the reasoning pieces. The reasoning field is named by the
request's model: `reasoner` → `reasoning_content` (vLLM, llama.cpp, DeepSeek), `reasoner-r` → `reasoning` (newer
vLLM, OpenRouter); `plain` is a model without reasoning (no reasoning chunk, `completion_tokens_details` null). A
non-streamed request gets both texts in `choices[0].message` and the same usage.

Test controls:
- `POST /_pace {"gap_ms": 20, "fail_after_reasoning": false}`: the silence before each reasoning piece, and whether
  the connection is cut once the reasoning is sent (no answer; a non-streamed request gets a 500). A field left
  out takes its default, so `{}` restores them; the request log is cleared too. With `gap_ms` 400 the reasoning
  takes 3.2 s, each gap far below a 2 s idle timeout.
- `GET /_log`: the JSON bodies of the `/v1/chat/completions` requests since the last `/_pace`, oldest first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.openai_upstream import DONE, chunk, error, models_route

# model → the delta / message field its reasoning arrives in (None: a model that does not reason)
FIELDS: dict[str, str | None] = {"reasoner": "reasoning_content", "reasoner-r": "reasoning", "plain": None}
MODEL = "reasoner"  # what `/v1/models` lists (start_upstream polls it)

# A newline, CJK text and markup a front end must show as text, never run: its sanitizing is tested on reasoning.
REASONING = ["Let me think", " about the question.", "\n", "用户问的是生命的意义。",
             " <img src=x onerror=alert(1)>", " Check: 6×7", " = 42.", "\nSo the answer is 42."]
ANSWER = ["The", " answer", " is", " **42**", ".\n", "答案是四十二。"]
PROMPT_TOKENS = 13  # the upstream's own count, whatever the prompt: tests see that it is passed on

DEFAULT_PACE: dict[str, Any] = {"gap_ms": 20, "fail_after_reasoning": False}
pace: dict[str, Any] = dict(DEFAULT_PACE)
log: list[dict[str, Any]] = []


def usage(model: str = MODEL) -> dict[str, Any]:
    """What the upstream reports for one reply of `model`: one token per piece."""
    reasons = FIELDS.get(model) is not None
    completion = len(ANSWER) + (len(REASONING) if reasons else 0)
    details = {"reasoning_tokens": len(REASONING)} if reasons else None  # vLLM: null for a model that does not reason
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion, "completion_tokens_details": details}


def usage_chunk(model: str) -> bytes:
    # openai_upstream.chunk's `usage` is flat (dict[str, int]): this one nests completion_tokens_details.
    body = {"id": f"chatcmpl-{model}", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [], "usage": usage(model)}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def completions(request: Request) -> Response:
    body: dict[str, Any] = await request.json()
    log.append(body)
    model = body.get("model")
    if not isinstance(model, str) or model not in FIELDS:
        return error(404, f"The model `{model}` does not exist.", "model_not_found")
    field = FIELDS[model]
    reasoning = [(field, piece) for piece in REASONING] if field is not None else []  # (delta field, piece)
    gap, fail = pace["gap_ms"] / 1000, pace["fail_after_reasoning"]

    if not body.get("stream"):
        await asyncio.sleep(gap * len(reasoning))  # as long as the streamed reasoning takes
        if fail:
            return error(500, "scripted failure after the reasoning", "server_error")
        message = {"role": "assistant", "content": "".join(ANSWER)}
        if field is not None:
            message[field] = "".join(REASONING)
        return JSONResponse({"id": f"chatcmpl-{model}", "object": "chat.completion", "created": 0, "model": model,
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                             "usage": usage(model)})

    async def events() -> AsyncIterator[bytes]:
        yield chunk(model, {"role": "assistant", "content": ""})
        for name, piece in reasoning:
            await asyncio.sleep(gap)
            yield chunk(model, {name: piece})  # the reasoning field only, as vLLM sends it
        if fail:
            raise ConnectionAbortedError("scripted drop after the reasoning")  # uvicorn cuts the connection
        for piece in ANSWER:
            await asyncio.sleep(0.005)
            yield chunk(model, {"content": piece})
        yield chunk(model, {}, finish="stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield usage_chunk(model)
        yield DONE

    return StreamingResponse(events(), media_type="text/event-stream")


async def set_pace(request: Request) -> JSONResponse:
    given = await request.json()
    if not isinstance(given, dict):
        given = {"": given}  # refused below
    unknown = set(given) - set(DEFAULT_PACE)
    gap = given.get("gap_ms", DEFAULT_PACE["gap_ms"])
    fail = given.get("fail_after_reasoning", DEFAULT_PACE["fail_after_reasoning"])
    if unknown or not isinstance(gap, int) or isinstance(gap, bool) or not 0 <= gap <= 60_000 \
            or not isinstance(fail, bool):
        return JSONResponse({"error": f"give gap_ms (0–60000) and fail_after_reasoning (bool), not {given!r}"}, 400)
    pace.update(gap_ms=gap, fail_after_reasoning=fail)
    log.clear()
    return JSONResponse(pace)


async def get_log(request: Request) -> JSONResponse:
    return JSONResponse(log)


app = Starlette(routes=[
    Route("/v1/chat/completions", completions, methods=["POST"]),
    models_route(MODEL),
    Route("/_pace", set_pace, methods=["POST"]),
    Route("/_log", get_log),
])
