"""What the embedded and the scripted models share: a chat model defined by its token streams."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import OutputTokenDetails, UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from chains.common.errors import ModelOverloadedError, ModelRefusal, ModelShareExceeded


@dataclass(frozen=True, slots=True)
class ModelClient:
    """Who asks the model: the client address and the API key's fingerprint (None when unknown or without keys).
    Each holds a share of a queued model's places."""

    address: str | None = None
    key: str | None = None

    def slots(self) -> tuple[tuple[str, str], ...]:
        """(who, ledger key) for each identity this client has."""
        return tuple((who, f"{kind}:{value}") for who, kind, value in (
            ("client address", "a", self.address), ("API key", "k", self.key)) if value is not None)


class ModelPlaces:
    """The places of a model that runs a bounded number of generations at once: running or waiting (the local
    model: one running and `queue_size` waiting), and how many of them each client holds. With `per_client`, a
    client (an address, or a key) may hold at most that share of them, never all when there are two or more, so
    that one client cannot lock the others out. `busy` is the refusal when they are all taken. Thread-safe:
    generations give their places back from the decode thread."""

    def __init__(self, places: int, per_client: int | None = None,
                 busy: type[ModelOverloadedError] = ModelOverloadedError, running: int = 1) -> None:
        self.places = places
        self.running = running  # of the places, those that run (the others wait)
        self.share = places if per_client is None else max(1, min(per_client, places - 1))
        self.busy = busy
        self.pending = 0
        self.held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def free_places(self) -> int:
        return self.places - self.pending

    def refusal(self, client: ModelClient | None, runs: int = 1) -> ModelRefusal | None:
        """Why `runs` more generations of `client` would not fit now, or None when they would."""
        if runs > self.free_places():
            return self.busy(max(self.pending - self.running, 0))
        for who, slot in client.slots() if client is not None else ():
            held = self.held[slot]
            if held + runs > self.share:
                return ModelShareExceeded(who, held, self.share, self.places, runs)
        return None

    def reserve(self, client: ModelClient | None, runs: int = 1) -> Reservation:
        """`runs` places held in `client`'s name from now, for its generations to claim (raises the refusal
        when they do not fit)."""
        with self._lock:
            refusal = self.refusal(client, runs)
            if refusal is not None:
                raise refusal
            self.pending += runs
            slots = tuple(slot for _, slot in client.slots()) if client is not None else ()
            for slot in slots:
                self.held[slot] += runs
            return Reservation(self, client, slots, runs)

    def take(self, client: ModelClient | None) -> tuple[str, ...]:
        """One place for a generation that had none reserved; returns what to give back."""
        return self.reserve(client).claimed()

    def give_back(self, slots: tuple[str, ...], places: int = 1) -> None:
        with self._lock:
            self.pending -= places
            for slot in slots:
                self.held[slot] -= places
                if not self.held[slot]:
                    del self.held[slot]


class Reservation:
    """Places a request holds from its admission until its generations claim them: the check and the place are
    one step, so that requests arriving together cannot all pass the check before any generation starts."""

    __slots__ = ("client", "left", "places", "slots")

    def __init__(self, places: ModelPlaces, client: ModelClient | None, slots: tuple[str, ...], runs: int) -> None:
        self.places, self.client, self.slots, self.left = places, client, slots, runs

    def claim(self) -> bool:
        """One of the places for a generation starting now; False when none is left."""
        with self.places._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    def claimed(self) -> tuple[str, ...]:
        self.claim()
        return self.slots

    def release(self) -> None:
        """The places no generation claimed go back (the request was refused later, or joined a run instead)."""
        with self.places._lock:
            left, self.left = self.left, 0
        if left:
            self.places.give_back(self.slots, left)


# Set by the admission middleware for each request to a queued model; the generations it starts inherit it and
# claim its places.
admitted: ContextVar[Reservation | None] = ContextVar("admitted", default=None)


@runtime_checkable
class AdmissionQueue(Protocol):
    """The places of a model that runs a bounded number of generations at once behind a bounded wait queue (the
    local one; the upstreams when capped): the server asks before a request starts, and refuses what would not
    fit. `ModelPlaces` is one."""

    @property
    def pending(self) -> int:
        """Generations running or waiting."""
        ...

    def free_places(self) -> int:
        """How many more generations would be accepted now."""
        ...

    def reserve(self, client: ModelClient | None, runs: int = 1) -> Reservation:
        """`runs` places held for `client`'s generations; raises ModelOverloadedError when the queue is full, or
        ModelShareExceeded when this client holds its share."""
        ...


def admission_queue(model: BaseChatModel) -> AdmissionQueue | None:
    """The model's places (its `places`), when it has a bounded number."""
    places = getattr(model, "places", None)
    return places if isinstance(places, AdmissionQueue) else None


@dataclass(slots=True)
class UsageMeter:
    """Tokens used so far by the generation in progress. A model that can count (the local and the scripted one)
    keeps it up to date, so that a generation stopped early still reports what it used: its usage chunk comes
    only at the end, and a stopped stream has no end."""

    prompt_tokens: int | None = None
    completion_tokens: int = 0
    upstream: str | None = None  # which of the upstreams answered (chains.models.upstreams), once one has


# Set by the streaming core in each generation's task; models read it when their stream starts (None: nobody asks).
usage_meter: ContextVar[UsageMeter | None] = ContextVar("usage_meter", default=None)


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a text stream: why the reply ended and what it used (None: not reported)."""

    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None  # of the completion tokens, those the model reasoned with


class Reasoning(str):
    """A piece of the model's reasoning (a reasoning model's `reasoning_content`), streamed apart from the answer:
    a `str` whose type says it is not the answer's text."""

    __slots__ = ()


# What the streaming core reads of a model: each token's text as a plain `str` (a `Reasoning` piece, when the
# model thinks aloud first), then one `StreamEnd`. LangChain's chunk objects are pydantic models (~8 µs each to
# build): on a path that only needs the text they are most of what a paced token costs.
TextStream = AsyncGenerator[str | StreamEnd, None]

T = TypeVar("T")


@asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncGenerator[AsyncIterator[T], None]:
    """`contextlib.aclosing` for what LangChain types as a plain `AsyncIterator` (in fact an async generator, or an
    SDK stream): closed on exit, however the block ends, so that a model stops when its reader stops."""
    try:
        yield stream
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()


class StreamedChatModel(BaseChatModel):
    """A reply is its concatenated stream: `astream_text` is the model, and LangChain's `_astream` and `_agenerate`
    are built on it; `_stream` (each model's own, sync) is what `_generate` and `invoke` are built on."""

    @property
    def reported_model_name(self) -> str:
        """`model_name` in the last chunk's response metadata."""
        return self._llm_type

    async def astream_text(self, messages: list[BaseMessage], stop: list[str] | None = None,
                           **kwargs: Any) -> TextStream:
        """The reply's text, token by token (each a non-empty `str`: the streaming core sends each as a token
        event), then its `StreamEnd`. `kwargs`: what LangChain passes per call."""
        raise NotImplementedError
        yield  # pragma: no cover - makes this an async generator for type checkers

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        async with aclosing(self.astream_text(messages, stop, **kwargs)) as items:
            async for item in items:
                if isinstance(item, StreamEnd):
                    yield final_chunk(item.prompt_tokens or 0, item.completion_tokens or 0,
                                      item.finish_reason or "stop", self.reported_model_name, item.reasoning_tokens)
                    continue
                chunk = token_chunk(item)
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))


def token_chunk(text: str) -> ChatGenerationChunk:
    """A piece of the reply as LangChain's chunk; a `Reasoning` piece where LangChain's integrations for reasoning
    models put it (`additional_kwargs["reasoning_content"]`), the content empty."""
    if isinstance(text, Reasoning):
        return ChatGenerationChunk(message=AIMessageChunk(content="", additional_kwargs={
            "reasoning_content": str(text)}))
    return ChatGenerationChunk(message=AIMessageChunk(content=text))


def final_chunk(prompt_tokens: int, completion_tokens: int, finish_reason: str, model_name: str,
                reasoning_tokens: int | None = None) -> ChatGenerationChunk:
    """The empty last chunk that carries usage and why the reply ended."""
    usage = UsageMetadata(input_tokens=prompt_tokens, output_tokens=completion_tokens,
                          total_tokens=prompt_tokens + completion_tokens)
    if reasoning_tokens is not None:
        usage["output_token_details"] = OutputTokenDetails(reasoning=reasoning_tokens)
    message = AIMessageChunk(
        content="", usage_metadata=usage,
        response_metadata={"finish_reason": finish_reason, "model_name": model_name}, chunk_position="last",
    )
    return ChatGenerationChunk(message=message)
