"""
Token 流式单元测试
文件: tests/test_token_stream.py

The tutorial's own test (section 6.1), adapted only as httpx 0.28 requires: `AsyncClient(app=app)` became
`AsyncClient(transport=ASGITransport(app=app))`, and the app is this project's. It runs in-process against
the default deployment (the embedded model).
"""

import pytest
from httpx import ASGITransport, AsyncClient

from server import app


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

            tokens = []
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    tokens.append(line)

            # 验证收到了 Token
            assert len(tokens) > 0
