"""Every chain through every LangServe endpoint over HTTP, against a live server with the scripted model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from chains.models.fake import scripted_tokens
from tests.support.sse import parse_sse

REPLY = "".join(scripted_tokens(20))  # the fake server's settings: FAKE_REPLY_TOKENS=20

CHAIN_INPUTS: dict[str, Any] = {
    "single-turn": "Tell me a joke",
    "system-prompt": {"message": "Tell me a joke", "system_prompt": "Be brief."},
    "conversation": {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好!"},
                                  {"role": "user", "content": "讲个笑话"}]},
}
CHAINS = list(CHAIN_INPUTS)


@pytest.fixture(scope="module")
def client(fake_server) -> httpx.Client:
    with httpx.Client(base_url=fake_server.url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("chain", CHAINS)
def test_invoke(client: httpx.Client, chain: str) -> None:
    response = client.post(f"/{chain}/invoke", json={"input": CHAIN_INPUTS[chain]})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == REPLY


@pytest.mark.parametrize("chain", CHAINS)
def test_batch(client: httpx.Client, chain: str) -> None:
    response = client.post(f"/{chain}/batch", json={"inputs": [CHAIN_INPUTS[chain]] * 3})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == [REPLY] * 3


@pytest.mark.parametrize("chain", CHAINS)
def test_stream(client: httpx.Client, chain: str) -> None:
    response = client.post(f"/{chain}/stream", json={"input": CHAIN_INPUTS[chain]})
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    assert events[0].event == "metadata" and "run_id" in events[0].json()
    chunks = [e.json() for e in events if e.event == "data"]
    assert len(chunks) >= 20, "each scripted token should arrive as its own chunk"
    assert "".join(chunks) == REPLY
    assert events[-1].event == "end"


@pytest.mark.parametrize("chain", CHAINS)
def test_stream_log(client: httpx.Client, chain: str) -> None:
    response = client.post(f"/{chain}/stream_log", json={"input": CHAIN_INPUTS[chain]})
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    ops = [op for e in events if e.event == "data" for op in e.json()["ops"]]
    streamed = "".join(op["value"] for op in ops if op["path"] == "/streamed_output/-")
    assert streamed == REPLY
    final = [op["value"] for op in ops if op["path"] == "/final_output"]
    assert final and final[-1] == REPLY
    assert events[-1].event == "end"


@pytest.mark.parametrize("chain", CHAINS)
def test_stream_events(client: httpx.Client, chain: str) -> None:
    response = client.post(f"/{chain}/stream_events", json={"input": CHAIN_INPUTS[chain]})
    assert response.status_code == 200, response.text
    events = [e.json() for e in parse_sse(response.text) if e.event == "data"]
    kinds = {e["event"] for e in events}
    assert {"on_chain_start", "on_chat_model_start", "on_chat_model_stream", "on_chat_model_end",
            "on_chain_end"} <= kinds
    model_tokens = "".join(e["data"]["chunk"]["content"] for e in events if e["event"] == "on_chat_model_stream")
    assert model_tokens == REPLY
    end = [e for e in events if e["event"] == "on_chat_model_end"][-1]
    usage = end["data"]["output"]["usage_metadata"]
    assert usage["output_tokens"] == 20 and usage["input_tokens"] > 0


@pytest.mark.parametrize("chain", CHAINS)
def test_schemas(client: httpx.Client, chain: str) -> None:
    input_schema = client.get(f"/{chain}/input_schema").json()
    assert client.get(f"/{chain}/output_schema").json()["type"] == "string"
    assert client.get(f"/{chain}/config_schema").status_code == 200
    if chain == "single-turn":
        assert input_schema["type"] == "string"
    elif chain == "system-prompt":
        assert set(input_schema["properties"]) == {"message", "system_prompt"}
        assert input_schema["properties"]["system_prompt"]["default"] == "你是一个有用的助手"
    else:
        assert input_schema["properties"]["messages"]["type"] == "array"


@pytest.mark.parametrize("chain", CHAINS)
def test_playground_page_is_served(client: httpx.Client, chain: str) -> None:
    response = client.get(f"/{chain}/playground/")
    assert response.status_code == 200
    assert "<script" in response.text


def test_openapi_documents_every_chain(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for chain in CHAINS:
        for endpoint in ("invoke", "batch", "stream", "stream_log", "stream_events"):
            assert f"/{chain}/{endpoint}" in paths
    assert client.get("/docs").status_code == 200


def test_health_reports_provider_and_model(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert {k: health[k] for k in ("status", "ready", "provider", "model")} == {
        "status": "ok", "ready": True, "provider": "fake", "model": "scripted"}
    assert health["tasks"] >= 1


@pytest.mark.parametrize("shape", [
    [{"role": "user", "content": "hi"}],
    [{"type": "human", "content": "hi"}],
    [{"type": "system", "content": "Be brief."}, {"type": "human", "content": "hi"},
     {"type": "ai", "content": "hello"}, {"type": "human", "content": "again"}],
])
def test_conversation_accepts_role_and_type_dicts(client: httpx.Client, shape: list[dict[str, str]]) -> None:
    response = client.post("/conversation/invoke", json={"input": {"messages": shape, "system_prompt": "Be kind."}})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == REPLY


@pytest.mark.parametrize("bad", [
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": "hi"},
    {"messages": [{"role": "user"}]},
])
def test_conversation_rejects_bad_messages_with_422(client: httpx.Client, bad: dict[str, Any]) -> None:
    response = client.post("/conversation/invoke", json={"input": bad})
    assert response.status_code == 422
    assert "messages" in response.text


def test_cors_allows_local_origins_only(client: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    local = client.options("/conversation/stream", headers={"Origin": "http://localhost:5173", **preflight})
    assert local.status_code == 200
    assert local.headers["access-control-allow-origin"] == "http://localhost:5173"
    other = client.options("/conversation/stream", headers={"Origin": "https://evil.example", **preflight})
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
