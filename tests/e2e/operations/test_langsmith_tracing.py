"""LANGSMITH_TRACING=true: the chains' runs reach LangSmith with their inputs and outputs. LangSmith is a
loopback receiver (tests/support/langsmith_receiver.py) named by LANGSMITH_ENDPOINT.

In-process, with a callback handler in the config (what LangChain's tracer is): a stream that stops early —
closed by its consumer, or its task cancelled — still ends the chain's run, with an error."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Any
from uuid import UUID

import httpx
import pytest
from langchain_core.callbacks import AsyncCallbackHandler

from chains.models.base import StreamEnd
from chains.models.fake import ScriptedChatModel, scripted_tokens
from chains.runnables.chat import system_prompt_chain
from tests.support.servers import running_app, running_upstream

MESSAGE = "langsmith-probe-question"
INVOKED = "langsmith-probe-invoked"


def wait_for_runs(receiver_url: str, done: Any, seconds: float = 20) -> dict[str, dict[str, Any]]:
    """The receiver's runs once `done(runs)` holds (the client sends in the background, batched)."""
    deadline = time.monotonic() + seconds
    runs: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        runs = httpx.get(receiver_url + "/_runs").json()
        if done(runs):
            break
        time.sleep(0.3)
    return runs


def ended_root(runs: dict[str, dict[str, Any]], name: str, text: str) -> dict[str, Any] | None:
    """The finished root run named `name` whose inputs hold `text`."""
    return next((run for run in runs.values() if run.get("name") == name and run.get("parent_run_id") is None
                 and text in str(run.get("inputs")) and "outputs" in run and run.get("end_time")), None)


def children(runs: dict[str, dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [run for run in runs.values() if run.get("parent_run_id") == parent["id"]]


def test_langsmith_receives_the_chains_runs_with_inputs_and_outputs() -> None:
    with running_upstream("tests.support.langsmith_receiver:app", "langsmith-receiver") as receiver, running_app(
            "langsmith-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="5", LANGSMITH_TRACING="true",
            LANGSMITH_ENDPOINT=receiver.url, LANGSMITH_API_KEY="lsv2-test", LANGSMITH_PROJECT="chains-test") as server:
        response = httpx.post(server.url + "/chat", json={"message": MESSAGE}, timeout=20)
        assert "event: done" in response.text
        reply = response.text.split('"full_response":"', 1)[1].split('"', 1)[0].replace("\\n", "\n")
        invoked = httpx.post(server.url + "/system-prompt/invoke", json={"input": {"message": INVOKED}}, timeout=20)
        assert invoked.status_code == 200, invoked.text
        runs = wait_for_runs(receiver.url, lambda runs: ended_root(runs, "system_prompt", MESSAGE) is not None
                             and ended_root(runs, "/system-prompt", INVOKED) is not None
                             and all("outputs" in run for run in runs.values()))

        # /chat: the chain's run (its name, the chain input in, the reply text out), the model's run its child.
        chain = ended_root(runs, "system_prompt", MESSAGE)
        assert chain is not None, runs
        assert chain["run_type"] == "chain" and chain["inputs"]["message"] == MESSAGE
        assert chain["outputs"] == {"output": reply} and not chain.get("error")
        [model] = children(runs, chain)
        assert model["run_type"] == "llm" and model["trace_id"] == chain["trace_id"] == chain["id"]
        assert MESSAGE in str(model["inputs"]["messages"])  # the messages, system prompt included
        assert "你是一个有用的助手" in str(model["inputs"]["messages"])
        [[generation]] = model["outputs"]["generations"]
        assert generation["text"] == reply

        # A LangServe route: its run (named by LangServe after the path), the sequence's steps its children.
        served = ended_root(runs, "/system-prompt", INVOKED)
        assert served is not None, runs
        assert served["inputs"]["message"] == INVOKED and served["outputs"] == {"output": invoked.json()["output"]}
        steps = {run["name"]: run for run in children(runs, served)}
        assert {"system_prompt_prompt", "ScriptedChatModel", "StrOutputParser"} <= set(steps)
        assert steps["ScriptedChatModel"]["trace_id"] == served["id"]
        assert INVOKED in str(steps["ScriptedChatModel"]["inputs"])


class Recorder(AsyncCallbackHandler):
    """Each run's start, end or error, by run id, as a tracer sees them."""

    def __init__(self) -> None:
        self.runs: dict[UUID, dict[str, Any]] = {}

    async def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                             **kwargs: Any) -> None:
        self.runs[run_id] = {"kind": "chain", "name": kwargs.get("name"), "parent": parent_run_id, "inputs": inputs}

    async def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.runs[run_id]["outputs"] = outputs

    async def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.runs[run_id]["error"] = error

    async def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID,
                                  parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self.runs[run_id] = {"kind": "llm", "parent": parent_run_id}

    async def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.runs[run_id]["outputs"] = response

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.runs[run_id]["error"] = error

    def one(self, kind: str) -> dict[str, Any]:
        [run] = [run for run in self.runs.values() if run["kind"] == kind]
        return run


def observed_chain(tokens: int, delay_ms: float = 0) -> Any:
    return system_prompt_chain(ScriptedChatModel(reply_tokens=tokens, token_delay_ms=delay_ms))


async def test_an_observed_stream_is_one_chain_run_with_the_model_run_inside() -> None:
    recorder = Recorder()
    items: list[str | StreamEnd] = []
    async with aclosing(observed_chain(4).astream_text({"message": "hi"}, {"callbacks": [recorder]})) as stream:
        async for item in stream:
            items.append(item)
    chain, model = recorder.one("chain"), recorder.one("llm")
    assert chain["name"] == "system_prompt" and chain["parent"] is None and chain["inputs"] == {"message": "hi"}
    *texts, end = items
    assert chain["outputs"] == "".join(texts) == "".join(scripted_tokens(4)) and "error" not in chain
    assert model["parent"] in recorder.runs and recorder.runs[model["parent"]] is chain and "outputs" in model
    # The stream still ends with the usage and the finish reason, as on the unobserved path.
    assert end == StreamEnd("stop", end.prompt_tokens, 4) and end.prompt_tokens


async def test_a_closed_observed_stream_ends_its_chain_run_with_an_error() -> None:
    recorder = Recorder()
    async with aclosing(observed_chain(50).astream_text({"message": "hi"}, {"callbacks": [recorder]})) as stream:
        async for item in stream:
            if isinstance(item, str):
                break  # the consumer leaves: aclosing closes the stream, and the model's with it
    chain, model = recorder.one("chain"), recorder.one("llm")
    assert isinstance(chain.get("error"), GeneratorExit) and "outputs" not in chain
    assert "error" in model and "outputs" not in model


async def test_a_cancelled_observed_stream_ends_its_chain_run_with_an_error() -> None:
    recorder = Recorder()
    started = asyncio.Event()

    async def consume() -> None:
        async with aclosing(observed_chain(50, delay_ms=20).astream_text(
                {"message": "hi"}, {"callbacks": [recorder]})) as stream:
            async for _ in stream:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    chain, model = recorder.one("chain"), recorder.one("llm")
    assert isinstance(chain.get("error"), asyncio.CancelledError) and "outputs" not in chain
    assert isinstance(model.get("error"), asyncio.CancelledError)
