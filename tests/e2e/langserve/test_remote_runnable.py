"""`langserve.RemoteRunnable` against the default deployment (embedded model) on a live uvicorn."""

from __future__ import annotations

from typing import Any

import pytest
from langserve import RemoteRunnable

CHAIN_INPUTS: dict[str, Any] = {
    "single-turn": "What is the capital of France?",
    "system-prompt": {"message": "What is the capital of France?", "system_prompt": "Answer in one sentence."},
    "conversation": {"messages": [{"role": "user", "content": "Hi, I am Ana."},
                                  {"role": "assistant", "content": "Hello Ana!"},
                                  {"role": "user", "content": "What is the capital of France?"}]},
}
CHAINS = list(CHAIN_INPUTS)


@pytest.fixture(scope="module")
def remotes(local_server) -> dict[str, RemoteRunnable]:
    return {name: RemoteRunnable(f"{local_server.url}/{name}/", timeout=60) for name in CHAINS}


@pytest.mark.parametrize("chain", CHAINS)
def test_invoke_batch_and_stream_agree(remotes: dict[str, RemoteRunnable], chain: str) -> None:
    remote, given = remotes[chain], CHAIN_INPUTS[chain]
    invoked = remote.invoke(given)
    assert isinstance(invoked, str) and invoked.strip()
    # The server runs at temperature 0: the same input gives the same text on every path.
    assert remote.batch([given, given]) == [invoked, invoked]
    chunks = list(remote.stream(given))
    assert len(chunks) > 1 and "".join(chunks) == invoked


@pytest.mark.parametrize("chain", CHAINS)
async def test_astream_and_astream_events(remotes: dict[str, RemoteRunnable], chain: str) -> None:
    remote, given = remotes[chain], CHAIN_INPUTS[chain]
    chunks = [chunk async for chunk in remote.astream(given)]
    assert len(chunks) > 1
    events = [event async for event in remote.astream_events(given, version="v2")]
    tokens = [e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream"]
    assert len(tokens) > 1 and "".join(tokens) == "".join(chunks)
    model_end = [e for e in events if e["event"] == "on_chat_model_end"][-1]
    usage = model_end["data"]["output"].usage_metadata
    assert usage["output_tokens"] > 0 and usage["input_tokens"] > 0
    assert events[-1]["event"] == "on_chain_end" and events[-1]["data"]["output"] == "".join(chunks)


def test_conversation_takes_langchain_message_objects(remotes: dict[str, RemoteRunnable]) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    reply = remotes["conversation"].invoke({"messages": [
        SystemMessage("Answer in one sentence."), HumanMessage("Hi, I am Ana."), AIMessage("Hello Ana!"),
        HumanMessage("What is the capital of France?"),
    ]})
    assert isinstance(reply, str) and reply.strip()
