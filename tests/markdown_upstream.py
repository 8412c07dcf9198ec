"""An OpenAI-compatible upstream whose every reply is one markdown text, for the front-end markdown tests; served by
uvicorn on 127.0.0.1 (tests/test_front_end_markdown.py starts it).

`/v1/chat/completions` streams `REPLY` in `PIECE`-character pieces, `DELAY` seconds apart, so a browser sees many
intermediate states: a fence opened but not closed, a list item half written, `**` before its closing pair.
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

CODE = '''def greet(name):
    return f"Hello, {name} & <friends>!"

for who in ["world", "世界"]:
    print(greet(who))'''

# What each XSS payload would set, were it ever run: the tests check these stay unset in the page.
XSS_FLAGS = ("__xssImg", "__xssScript", "__xssLink")

REPLY = f"""## Markdown, streamed

Three things to know:

- **Bold** text stays bold
- an inline `code` span
- a [link](https://example.com/docs) too

```python
{CODE}
```

An inline <img src=x onerror="window.__xssImg = 1"> tag and [a javascript link](javascript:window.__xssLink=1).
<script>window.__xssScript = 1</script>
That is all."""

PIECE = 3
DELAY = 0.012


def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-markdown", "object": "chat.completion.chunk", "created": 0,
                            "model": "markdown", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["choices"], body["usage"] = [], usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def pieces(text: str = REPLY, size: int = PIECE) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


async def completions(request: Request) -> Response:
    body = await request.json()
    parts = pieces()

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(DELAY)
            yield chunk({"content": part})
        yield chunk({}, finish="stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            yield chunk({}, usage={"prompt_tokens": 5, "completion_tokens": len(parts),
                                   "total_tokens": 5 + len(parts)})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "markdown", "object": "model"}]})


app = Starlette(routes=[
    Route("/v1/chat/completions", completions, methods=["POST"]),
    Route("/v1/models", models),
])
