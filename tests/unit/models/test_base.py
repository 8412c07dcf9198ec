"""chains.models.base: a chat model defined by its text stream — LangChain's streaming and whole-reply calls built
on it (tokens, then one last chunk with the usage and why the reply ended), the closing of a stream however its
reader stops, and which models have an admission queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from pydantic import Field

from chains.models.base import (
    ModelPlaces,
    StreamedChatModel,
    StreamEnd,
    TextStream,
    admission_queue,
    closing,
    final_chunk,
)


class Scripted(StreamedChatModel):
    """A model that is nothing but `astream_text`: three tokens, then its end."""

    closed: list[bool] = Field(default_factory=list)  # one True each time its stream was closed

    @property
    def _llm_type(self) -> str:
        return "three-tokens"

    def _stream(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        raise NotImplementedError  # the async path only

    async def astream_text(self, messages: Any, stop: Any = None, **kwargs: Any) -> TextStream:
        try:
            for token in ("one", " two", " three"):
                yield token
            yield StreamEnd("length", 4, 3)
        finally:
            self.closed.append(True)


async def test_the_stream_is_a_chunk_per_token_then_one_last_chunk_with_usage_and_the_reason() -> None:
    chunks = [chunk async for chunk in Scripted().astream([HumanMessage("hi")])]
    assert [chunk.content for chunk in chunks] == ["one", " two", " three", ""]
    last = chunks[-1]
    assert last.usage_metadata == {"input_tokens": 4, "output_tokens": 3, "total_tokens": 7}
    assert last.response_metadata["finish_reason"] == "length"
    assert last.response_metadata["model_name"] == "three-tokens"


async def test_the_whole_reply_is_the_concatenated_stream() -> None:
    reply = await Scripted().ainvoke([HumanMessage("hi")])
    assert isinstance(reply, AIMessage) and reply.content == "one two three"
    assert reply.usage_metadata is not None and reply.usage_metadata["total_tokens"] == 7
    assert reply.response_metadata["finish_reason"] == "length"


async def test_a_reader_that_stops_closes_the_models_stream() -> None:
    model = Scripted()
    chunks = model._astream([HumanMessage("hi")])  # what LangChain's astream reads
    await anext(chunks)
    await chunks.aclose()  # type: ignore[attr-defined]
    assert model.closed == [True]
    stream = model.astream_text([HumanMessage("hi")])
    with pytest.raises(RuntimeError):
        async with closing(stream) as items:
            await anext(items)
            raise RuntimeError("the reader failed")
    assert model.closed[-1] is True and len(model.closed) == 2


async def test_closing_takes_an_iterator_that_cannot_be_closed() -> None:
    class Plain:
        def __init__(self) -> None:
            self.items = iter([1, 2])

        def __aiter__(self) -> AsyncIterator[int]:
            return self  # type: ignore[return-value]

        async def __anext__(self) -> int:
            try:
                return next(self.items)
            except StopIteration:
                raise StopAsyncIteration from None

    async with closing(Plain()) as items:  # type: ignore[arg-type]
        assert [item async for item in items] == [1, 2]


def test_the_last_chunk_carries_the_usage_and_the_model_name() -> None:
    chunk = final_chunk(2, 5, "stop", "m")
    assert chunk.message.content == "" and chunk.message.usage_metadata == {  # type: ignore[attr-defined]
        "input_tokens": 2, "output_tokens": 5, "total_tokens": 7}
    assert chunk.message.response_metadata == {"finish_reason": "stop", "model_name": "m"}


def test_only_a_model_with_places_has_admission() -> None:
    ledger = ModelPlaces(3)

    class Queued(Scripted):
        @property
        def places(self) -> ModelPlaces:
            return ledger

    assert admission_queue(Queued()) is ledger and admission_queue(Scripted()) is None
