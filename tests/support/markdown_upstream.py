"""An OpenAI-compatible upstream whose every reply is one markdown text, for the front-end markdown tests; served by
uvicorn on 127.0.0.1 (tests/e2e/front_ends/test_front_end_markdown.py starts it).

`/v1/chat/completions` streams `REPLY` in `PIECE`-character pieces, `DELAY` seconds apart, so a browser sees many
intermediate states: a fence opened but not closed, a list item half written, `**` before its closing pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.openai_upstream import DONE, chunk, models_route, usage_chunk

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

MODEL = "markdown"
PIECE = 3
DELAY = 0.012


def pieces(text: str = REPLY, size: int = PIECE) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


async def completions(request: Request) -> Response:
    body = await request.json()
    parts = pieces()

    async def events() -> AsyncIterator[bytes]:
        yield chunk(MODEL, {"role": "assistant", "content": ""})
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(DELAY)
            yield chunk(MODEL, {"content": part})
        yield chunk(MODEL, {}, finish="stop")
        yield usage_chunk(MODEL, body, prompt=5, completion=len(parts))
        yield DONE

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(routes=[
    Route("/v1/chat/completions", completions, methods=["POST"]),
    models_route(MODEL),
])
