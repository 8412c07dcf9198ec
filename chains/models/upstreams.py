"""The openai provider: one or more OpenAI-compatible servers (vLLM, llama.cpp's server, Ollama, a hosted API).

- `OpenAICompatibleChat` — LangChain's `ChatOpenAI`, made to read what real model servers send beyond OpenAI's
  own fields: usage in streams (asked of every server, not only OpenAI's: `stream_options.include_usage`, which
  vLLM, llama.cpp's server, Ollama and LiteLLM answer), and a reasoning model's thinking, `delta.reasoning_content`
  (vLLM, llama.cpp, DeepSeek) or `delta.reasoning` (newer vLLM, OpenRouter). ChatOpenAI drops both fields;
  `langchain-deepseek`'s ChatDeepSeek reads the first only. Either lands where LangChain's integrations put it,
  `additional_kwargs["reasoning_content"]`, which the chains stream apart from the answer.
- `Upstreams` — the chat model over the list OPENAI_BASE_URL gives, in order of preference. LangChain's
  `with_fallbacks` does the failing over: before the first chunk, a refused connection, a timeout, a 5xx or a 429
  moves the request to the next upstream; after it, a failure is the stream's error (two upstreams' texts are
  never spliced). What `with_fallbacks` does not do is added around each call (`UpstreamCall`): an upstream that
  failed is tried last for OPENAI_COOLDOWN_SECONDS, and with OPENAI_MAX_CONCURRENCY each upstream takes at most
  that many calls at once, the others waiting (in a queue the admission bounds: OPENAI_QUEUE_SIZE, past which
  `upstream_busy`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Protocol

import httpx
import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_openai import ChatOpenAI
from pydantic import ConfigDict, PrivateAttr

from chains.common.errors import UpstreamBusy
from chains.models.base import ModelPlaces, admitted, closing, usage_meter

# What moves a request to the next upstream, before its first chunk: the upstream is down or refuses to serve now.
# (APITimeoutError is an APIConnectionError; a 4xx other than 429 is the request's fault, the same everywhere.)
FAILOVER_ERRORS: tuple[type[BaseException], ...] = (
    openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)
# The field names servers put a reasoning model's thinking under, in a delta or a message.
REASONING_FIELDS = ("reasoning_content", "reasoning")


def upstream_label(url: str | None) -> str:
    """An upstream as logs, metrics and traces name it: its URL without credentials, query or fragment."""
    if url is None:
        return "https://api.openai.com/v1"
    return re.sub(r"//[^/@]*@", "//", url).split("?")[0].split("#")[0].rstrip("/")


def _reasoning_of(fields: dict[str, Any] | None) -> str | None:
    for name in REASONING_FIELDS:
        value = (fields or {}).get(name)
        if isinstance(value, str) and value:
            return value
    return None


class OpenAICompatibleChat(ChatOpenAI):
    """ChatOpenAI that asks any server for streamed usage and keeps a reasoning model's thinking, over Chat
    Completions always (every compatible server has it; ChatOpenAI would switch some model names to OpenAI's
    Responses API)."""

    stream_usage: bool | None = True  # ChatOpenAI turns it on only for OpenAI's own URL
    use_responses_api: bool | None = False

    def _get_request_payload(self, input_: Any, *, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        payload: dict[str, Any] = super()._get_request_payload(input_, stop=stop, **kwargs)
        # ChatOpenAI sends the cap as `max_completion_tokens` only; servers of the older API (llama-cpp-python's)
        # read `max_tokens` only, and would generate until the context is full. OpenAI's own URL gets the new name
        # alone (its reasoning models refuse the old one).
        base = self.openai_api_base
        if base and "api.openai.com" not in base and "max_completion_tokens" in payload:
            payload.setdefault("max_tokens", payload["max_completion_tokens"])
        return payload

    def _convert_chunk_to_generation_chunk(self, chunk: dict[str, Any], default_chunk_class: type,
                                           base_generation_info: dict[str, Any] | None) -> ChatGenerationChunk | None:
        generation = super()._convert_chunk_to_generation_chunk(chunk, default_chunk_class, base_generation_info)
        choices = chunk.get("choices") or ()
        if generation is not None and choices:
            reasoning = _reasoning_of(choices[0].get("delta"))
            if reasoning is not None:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return generation

    def _create_chat_result(self, response: dict[str, Any] | openai.BaseModel,
                            generation_info: dict[str, Any] | None = None) -> ChatResult:
        result = super()._create_chat_result(response, generation_info)
        body = response if isinstance(response, dict) else response.model_dump()
        for generation, choice in zip(result.generations, body.get("choices") or (), strict=False):
            reasoning = _reasoning_of(choice.get("message"))
            if reasoning is not None:
                generation.message.additional_kwargs["reasoning_content"] = reasoning
        return result


class UpstreamsObserver(Protocol):
    """What metrics hear of the upstreams (chains.observability): which answered, which a request moved past."""

    def answered(self, upstream: str) -> None: ...

    def failed_over(self, upstream: str) -> None: ...


class Upstream:
    """One server of the list: its chat model, its calls in flight (bounded by a semaphore when capped), and until
    when it cools down after a failure."""

    def __init__(self, url: str | None, model: OpenAICompatibleChat, max_concurrency: int, rank: int) -> None:
        self.label = upstream_label(url)
        self.model = model
        self.rank = rank
        self.max_concurrency = max_concurrency
        self.slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self.cooling_until = 0.0

    def slot(self) -> AbstractAsyncContextManager[Any]:
        return self.slots if self.slots is not None else nullcontext()

    def full(self) -> bool:
        return self.slots is not None and self.slots.locked()


class UpstreamCall(Runnable[list[BaseMessage], ChatGenerationChunk]):
    """One attempt at one upstream, as a runnable for `with_fallbacks`: waits for a slot when the upstream is capped,
    cools the upstream down when it fails, and says which upstream answered (the streaming core's meter, the
    observer) once its first chunk is in."""

    def __init__(self, upstream: Upstream, pool: Upstreams) -> None:
        self.upstream = upstream
        self.pool = pool

    def invoke(self, input: list[BaseMessage], config: RunnableConfig | None = None,
               **kwargs: Any) -> ChatGenerationChunk:
        raise NotImplementedError("upstream calls stream (Upstreams._generate calls the models directly)")

    async def astream(self, input: list[BaseMessage], config: RunnableConfig | None = None,
                      **kwargs: Any | None) -> AsyncIterator[ChatGenerationChunk]:
        upstream, pool = self.upstream, self.pool
        async with upstream.slot():
            first = True
            try:
                async with closing(upstream.model._astream(input, **kwargs)) as chunks:
                    async for chunk in chunks:
                        if first:
                            first = False
                            pool.answered_by(upstream)
                        yield chunk
            except (openai.APIError, httpx.HTTPError) as exc:
                # Down or refusing (FAILOVER_ERRORS), or its stream broke off: cooled down. A 4xx is the request's.
                if isinstance(exc, FAILOVER_ERRORS) or not first:
                    pool.failed(upstream, before_first_chunk=first)
                raise


class Upstreams(BaseChatModel):
    """The chat model over OPENAI_BASE_URL's list: each request tries the upstreams in order of preference, those
    cooling down last, those at their cap after the free ones."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    upstreams: list[Upstream]
    model_name: str
    cooldown_seconds: float = 30.0
    queue_size: int = 0
    _places: ModelPlaces | None = PrivateAttr(None)
    _observer: UpstreamsObserver | None = PrivateAttr(None)

    def model_post_init(self, context: Any) -> None:
        running = sum(u.max_concurrency for u in self.upstreams)
        if all(u.max_concurrency for u in self.upstreams):  # running (the caps) and waiting: what admission hands out
            self._places = ModelPlaces(running + self.queue_size, busy=UpstreamBusy)

    @property
    def _llm_type(self) -> str:
        return "openai-compatible-upstreams"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model_name, "upstreams": [u.label for u in self.upstreams]}

    @property
    def places(self) -> ModelPlaces | None:
        """The admission's places when the upstreams are capped (OPENAI_MAX_CONCURRENCY), else None."""
        return self._places

    def observe_upstreams(self, observer: UpstreamsObserver) -> None:
        self._observer = observer

    def ordered(self, now: float | None = None) -> list[Upstream]:
        """The order this request tries them in: preference, but those cooling down last and, among the others,
        those with a free slot first."""
        now = time.monotonic() if now is None else now
        return sorted(self.upstreams, key=lambda u: (u.cooling_until > now, u.full(), u.rank))

    def answered_by(self, upstream: Upstream) -> None:
        upstream.cooling_until = 0.0
        meter = usage_meter.get()
        if meter is not None:
            meter.upstream = upstream.label
        if self._observer is not None:
            self._observer.answered(upstream.label)

    def failed(self, upstream: Upstream, before_first_chunk: bool) -> None:
        if len(self.upstreams) > 1:
            upstream.cooling_until = time.monotonic() + self.cooldown_seconds
        if before_first_chunk and self._observer is not None:
            self._observer.failed_over(upstream.label)

    def _runnable(self) -> Runnable[list[BaseMessage], ChatGenerationChunk]:
        first, *rest = (UpstreamCall(upstream, self) for upstream in self.ordered())
        if not rest:
            return first
        return first.with_fallbacks(rest, exceptions_to_handle=FAILOVER_ERRORS)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        release = self._claim()
        try:
            # LangChain's astream reports each chunk to the callbacks (run_manager) itself.
            async with closing(self._runnable().astream(messages, stop=stop, **kwargs)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            release()

    def _claim(self) -> Callable[[], None]:
        """The place this generation runs in (its request's, when the admission reserved one); what gives it back."""
        places = self._places
        if places is None:
            return lambda: None
        reservation = admitted.get()
        if reservation is not None and reservation.places is places and reservation.claim():
            slots = reservation.slots
        else:  # raises UpstreamBusy when every place is taken
            slots = places.take(reservation.client if reservation is not None else None)
        return lambda: places.give_back(slots)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        # The synchronous path (nothing in the server takes it): the same order and failover, without the caps.
        first, *rest = (upstream.model for upstream in self.ordered())
        model = first.with_fallbacks(rest, exceptions_to_handle=FAILOVER_ERRORS) if rest else first
        message = model.invoke(messages, stop=stop, **kwargs)
        assert isinstance(message, AIMessage)
        return ChatResult(generations=[ChatGeneration(message=message)])


def build_upstreams(urls: Sequence[str | None], make_model: Callable[[str | None, bool], OpenAICompatibleChat],
                    model_name: str, cooldown_seconds: float, max_concurrency: int, queue_size: int) -> Upstreams:
    """The pool over `urls`; `make_model(url, retries)` builds each one's chat model. Only the last upstream retries
    (OPENAI_MAX_RETRIES): for the others the next upstream is the retry."""
    last = len(urls) - 1
    upstreams = [Upstream(url, make_model(url, i == last), max_concurrency, i) for i, url in enumerate(urls)]
    return Upstreams(upstreams=upstreams, model_name=model_name, cooldown_seconds=cooldown_seconds,
                     queue_size=queue_size)
