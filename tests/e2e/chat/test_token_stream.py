"""
Token 流式单元测试
文件: tests/e2e/chat/test_token_stream.py

The tutorial's own test (section 6.1), adapted only as httpx 0.28 requires: `AsyncClient(app=app)` became
`AsyncClient(transport=ASGITransport(app=app))`, and the app is this project's. It runs in-process against
the default deployment (the embedded model).

Beyond the tutorial: it counted `data:` lines, and the start event has one, so it passed with no token at all.
It now counts token events and checks that they make up the reply that `done` reports.
"""

import pytest
from httpx import ASGITransport, AsyncClient

from server import app
from tests.support.sse import parse_sse


@pytest.mark.asyncio
async def test_token_stream():
    """测试 Token 流式输出"""
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        async with client.stream(
            "POST",
            "/chat?message=讲个笑话"
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"

            text = "".join([chunk async for chunk in response.aiter_text()])
            events = parse_sse(text)
            tokens = [event.json()["token"] for event in events if event.event == "message"]
            done = events[-1].json() if events and events[-1].event == "done" else None

            # 验证收到了 Token
            assert len(tokens) > 0
            assert all(isinstance(token, str) and token for token in tokens)
            assert done is not None, "the stream did not end with event: done"
            assert "".join(tokens) == done["full_response"]
            assert done["token_count"] == len(tokens)
