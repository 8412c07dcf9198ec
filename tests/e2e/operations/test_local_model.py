"""The embedded model as a LangChain chat model, in-process: streaming, determinism, usage, cancellation, queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from langchain_core.messages import (
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)

from chains.common.errors import ModelOverloadedError
from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from chains.models.local import LlamaCppChatModel, StopStrings

PROMPT = [HumanMessage("Write a short poem about the sea.")]
# At temperature 0 the embedded model writes on until max_tokens for this one (~20 s for 2,000 tokens).
LONG_PROMPT = [HumanMessage("Write a long story about a dragon who learns to bake bread. Make it at least 1000 words.")]


@pytest.fixture(scope="module")
def model(model_path: Path) -> LlamaCppChatModel:
    return LlamaCppChatModel(model_path=model_path, temperature=0, max_tokens=32, n_threads=2, queue_size=1)


async def test_astream_yields_one_chunk_per_token_and_matches_invoke(model: LlamaCppChatModel) -> None:
    chunks = [chunk async for chunk in model.astream(PROMPT)]
    text_chunks = [c for c in chunks if c.content]
    assert len(text_chunks) > 1
    streamed = "".join(c.content for c in text_chunks)
    invoked = await model.ainvoke(PROMPT)
    assert streamed == invoked.content
    assert model.invoke(PROMPT).content == streamed  # the sync path decodes the same text


async def test_usage_and_finish_reason_are_reported(model: LlamaCppChatModel) -> None:
    message = await model.ainvoke(PROMPT)
    usage = message.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] > 5
    assert 0 < usage["output_tokens"] <= 32
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["finish_reason"] in {"stop", "length"}


def test_sync_stream_works(model: LlamaCppChatModel) -> None:
    chunks = list(model.stream(PROMPT))
    assert sum(1 for c in chunks if c.content) > 1


async def test_abandoned_stream_stops_decoding_and_frees_the_model(model_path: Path) -> None:
    long_model = LlamaCppChatModel(model_path=model_path, temperature=0, max_tokens=2000, n_threads=2)
    stream = long_model.astream(LONG_PROMPT)
    first = await anext(stream)
    assert isinstance(first, AIMessageChunk)
    await stream.aclose()  # the consumer goes away after one token
    started = time.monotonic()
    reply = await long_model.ainvoke(PROMPT, max_tokens=4)
    waited = time.monotonic() - started
    # Had the abandoned 2,000-token generation gone on, this call would wait ~20 s behind it.
    assert reply.content
    assert waited < 5, f"the next request waited {waited:.1f}s behind an abandoned one"
    assert long_model.places.pending == 0


async def test_cancelled_task_stops_decoding(model_path: Path) -> None:
    long_model = LlamaCppChatModel(model_path=model_path, temperature=0, max_tokens=2000, n_threads=2)
    received: list[str] = []

    async def consume() -> None:
        async for chunk in long_model.astream(LONG_PROMPT):
            received.append(str(chunk.content))

    task = asyncio.create_task(consume())
    while len(received) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 2
    while long_model.places.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert long_model.places.pending == 0, "the decode thread is still running after its consumer was cancelled"


async def test_requests_beyond_the_queue_are_refused(model: LlamaCppChatModel) -> None:
    # queue_size=1: one generation running plus one waiting are allowed, a third is refused at once.
    running = model.astream(LONG_PROMPT, max_tokens=2000)
    await anext(running)
    waiting = asyncio.create_task(model.ainvoke(PROMPT, max_tokens=2))
    await asyncio.sleep(0.05)
    with pytest.raises(ModelOverloadedError):
        await model.ainvoke(PROMPT, max_tokens=2)
    await running.aclose()
    assert (await waiting).content is not None


CHINESE = [SystemMessage(DEFAULT_SYSTEM_PROMPT), HumanMessage("讲个笑话")]
EMOJI = [HumanMessage("Reply with a row of party emoji like 🎉🥳🎊 and nothing else.")]


@pytest.mark.parametrize("prompt", [CHINESE, EMOJI], ids=["chinese", "emoji"])
async def test_usage_counts_the_models_tokens_not_the_pieces_of_text(model: LlamaCppChatModel,
                                                                     prompt: list[BaseMessage]) -> None:
    """llama.cpp holds back an incomplete UTF-8 character, so one piece of text can be several tokens."""
    chunks = [chunk async for chunk in model.astream(prompt, max_tokens=64)]
    pieces = [str(c.content) for c in chunks if c.content]
    text = "".join(pieces)
    usage, finish_reason = chunks[-1].usage_metadata, chunks[-1].response_metadata["finish_reason"]
    assert usage is not None
    assert len(text.encode()) > len(text), "the reply should hold multibyte characters"
    assert len(pieces) < usage["output_tokens"], "some characters should span several tokens"
    if finish_reason == "length":
        assert usage["output_tokens"] == 64
    # The model's tokenizer on the reply gives the same count (one less when the 64th token was the first part
    # of a character that the limit cut off: those bytes are not text).
    retokenized = len(model._llama.tokenize(text.encode(), add_bos=False, special=False))
    assert usage["output_tokens"] - retokenized in ((0, 1) if finish_reason == "length" else (0,))
    assert "\ufffd" not in text


def test_stop_strings_cut_the_text_and_hold_back_only_what_could_begin_one() -> None:
    stops = StopStrings(["<|im_end|>", "\n\nUser:"])
    assert stops.feed("Hello") == ("Hello", False)
    assert stops.feed(" <|im") == (" ", False)  # "<|im" might begin a stop string: held
    assert stops.feed("age|> more\n") == ("<|image|> more", False)  # it did not; "\n" might begin the other
    assert stops.feed("\nUser: hi") == ("", True)
    assert StopStrings([]).feed("<|im_end|>") == ("<|im_end|>", False)
    tail = StopStrings(["END"])
    assert tail.feed("the EN") == ("the ", False)
    assert tail.flush("") == "EN"  # the reply ended: a held tail that never became a stop string is sent
