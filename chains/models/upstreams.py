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
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import suppress
from typing import Any, Protocol
from urllib.parse import urlsplit

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
from chains.common.settings import redacted_url
from chains.models.base import ModelPlaces, admitted, closing, usage_meter

# What moves a request to the next upstream, before its first chunk: the upstream is down, refuses to serve now, or
# its stream broke off before it said anything. (APITimeoutError is an APIConnectionError; a 4xx other than 429 is
# the request's fault, the same everywhere.)
FAILOVER_ERRORS: tuple[type[BaseException], ...] = (
    openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError, httpx.TransportError)
# The field names servers put a reasoning model's thinking under, in a delta or a message.
REASONING_FIELDS = ("reasoning_content", "reasoning")


def upstream_label(url: str | None) -> str:
    """An upstream as logs, metrics and traces name it: its URL without credentials, query or fragment."""
    return redacted_url(url or "https://api.openai.com/v1")


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


OPENAI_URL = "https://api.openai.com/v1"  # what the SDK calls when no base URL is given
REACH_TIMEOUT = 1.0  # a readiness probe's connect to an upstream
REACH_CACHE = 2.0  # seconds a reachability answer is reused: probes come every second or so, from several places


async def can_connect(url: str, timeout: float = REACH_TIMEOUT) -> bool:
    """Whether a TCP connection to the URL's host and port opens within `timeout` (no request is sent: a probe
    costs an upstream nothing, and needs no key)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(parts.hostname or "", port)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return True


class Upstream:
    """One server of the list: its chat model (and the same with the SDK's retries, for when it is tried last), its
    calls in flight (at most `max_concurrency` when capped) and until when it cools down after a failure."""

    def __init__(self, url: str | None, model: OpenAICompatibleChat, retrying: OpenAICompatibleChat,
                 max_concurrency: int, rank: int) -> None:
        self.label = upstream_label(url)
        self.url = url or OPENAI_URL
        self.model = model
        self.retrying = retrying
        self.rank = rank
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.cooling_until = 0.0

    def full(self) -> bool:
        return bool(self.max_concurrency) and self.in_flight >= self.max_concurrency


def _says_something(chunk: ChatGenerationChunk) -> bool:
    """Whether a chunk is more than the empty role chunk servers send first: text, reasoning, usage, an end."""
    message = chunk.message
    return bool(message.content or message.additional_kwargs or getattr(message, "usage_metadata", None)
                or (chunk.generation_info or {}).get("finish_reason"))


class UpstreamCall(Runnable[list[BaseMessage], ChatGenerationChunk]):
    """One attempt at one upstream, as a runnable for `with_fallbacks`, made for one request.

    `with_fallbacks` moves on when an attempt fails before its first chunk, and commits to it after. Servers send an
    empty role chunk at once, so the attempt holds chunks back until one says something: a stream that breaks after
    its role chunk still fails over. Around the call: its slot (taken already for the first attempt, else waited for),
    the cool-down of an upstream that failed, which upstream answered, and its failure kept (`with_fallbacks` raises
    the first attempt's; the last is the one to tell). `aclose` ends the attempt, however its stream was left:
    `with_fallbacks` does not close the stream of the attempt it followed."""

    def __init__(self, upstream: Upstream, pool: Upstreams, retries: bool, holds_slot: bool = False) -> None:
        self.upstream, self.pool, self.retries = upstream, pool, retries
        self.holds_slot = holds_slot
        self.chunks: AsyncIterator[ChatGenerationChunk] | None = None
        self.error: BaseException | None = None

    def invoke(self, input: list[BaseMessage], config: RunnableConfig | None = None,
               **kwargs: Any) -> ChatGenerationChunk:
        raise NotImplementedError("upstream calls stream (Upstreams._generate calls the models directly)")

    async def astream(self, input: list[BaseMessage], config: RunnableConfig | None = None,
                      **kwargs: Any | None) -> AsyncIterator[ChatGenerationChunk]:
        upstream, pool = self.upstream, self.pool
        if not self.holds_slot:
            await pool.take(upstream)
            self.holds_slot = True
        held: list[ChatGenerationChunk] = []
        answered = False
        try:
            model = upstream.retrying if self.retries else upstream.model
            self.chunks = model._astream(input, **kwargs)
            async for chunk in self.chunks:
                if not answered:
                    if not _says_something(chunk):
                        held.append(chunk)
                        continue
                    answered = True
                    pool.answered_by(upstream)
                    for early in held:
                        yield early
                yield chunk
            if not answered:  # an empty reply: it answered all the same
                pool.answered_by(upstream)
                for early in held:
                    yield early
        except (openai.APIError, httpx.HTTPError) as exc:
            self.error = exc
            # Down or refusing (FAILOVER_ERRORS), or its stream broke off: cooled down. A 4xx is the request's.
            if isinstance(exc, FAILOVER_ERRORS) or answered:
                pool.failed(upstream, before_first_chunk=not answered)
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """The upstream's stream closed (its HTTP response with it) and the slot given back, once."""
        chunks, self.chunks = self.chunks, None
        if chunks is not None:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        if self.holds_slot:
            self.holds_slot = False
            await self.pool.give_back(self.upstream)


class Upstreams(BaseChatModel):
    """The chat model over OPENAI_BASE_URL's list: each request tries the upstreams in order of preference, those
    cooling down last, those at their cap after the free ones; with caps, a request waits for the first upstream
    that has a free slot, whichever it is."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    upstreams: list[Upstream]
    model_name: str
    cooldown_seconds: float = 30.0
    queue_size: int = 0
    _places: ModelPlaces | None = PrivateAttr(None)
    _observer: UpstreamsObserver | None = PrivateAttr(None)
    _freed: asyncio.Condition | None = PrivateAttr(None)  # notified when a slot is given back
    _reach: tuple[float, str | None] | None = PrivateAttr(None)  # when reachability was last checked, and its answer

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        running = sum(u.max_concurrency for u in self.upstreams)
        if all(u.max_concurrency for u in self.upstreams):  # running (the caps) and waiting: what admission hands out
            self._places = ModelPlaces(running + self.queue_size, busy=UpstreamBusy, running=running)

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

    async def unreachable(self) -> str | None:
        """Why no upstream can take a request now (each is cooling down after a failure, or refuses connections),
        or None when one can; the answer is reused for REACH_CACHE seconds."""
        now = time.monotonic()
        if self._reach is not None and now - self._reach[0] < REACH_CACHE:
            return self._reach[1]
        reason: str | None = f"none of the {len(self.upstreams)} upstream(s) is reachable: each is cooling down " \
                             "after a failure or refuses connections"
        for upstream in self.ordered(now):
            if upstream.cooling_until <= now and await can_connect(upstream.url):
                reason = None
                break
        self._reach = (time.monotonic(), reason)
        return reason

    def ordered(self, now: float | None = None) -> list[Upstream]:
        """The order this request tries them in: preference, but those cooling down last and, among the others,
        those with a free slot first."""
        now = time.monotonic() if now is None else now
        return sorted(self.upstreams, key=lambda u: (u.cooling_until > now, u.full(), u.rank))

    # -- slots: calls in flight per upstream, and one wait for whichever frees first --------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._freed is None:  # made in the event loop that uses it
            self._freed = asyncio.Condition()
        return self._freed

    async def take_first(self) -> Upstream:
        """A slot on the first upstream in order that has one, waiting until one has."""
        freed = self._condition()
        async with freed:
            while True:
                first = self.ordered()[0]
                if not first.full():
                    first.in_flight += 1
                    return first
                await freed.wait()

    async def take(self, upstream: Upstream) -> None:
        """A slot on this upstream (a fallback's), waiting until it has one."""
        freed = self._condition()
        async with freed:
            while upstream.full():
                await freed.wait()
            upstream.in_flight += 1

    async def give_back(self, upstream: Upstream) -> None:
        freed = self._condition()
        async with freed:
            upstream.in_flight -= 1
            freed.notify_all()

    # -- what happened -----------------------------------------------------------------------------------------

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

    # -- LangChain's interface -------------------------------------------------------------------------------

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        release = self._claim()
        calls: list[UpstreamCall] = []
        try:
            first = await self.take_first()
            order = [first, *(u for u in self.ordered() if u is not first)]
            # Only the last tried retries (OPENAI_MAX_RETRIES): for the others the next upstream is the retry.
            calls = [UpstreamCall(u, self, retries=i == len(order) - 1, holds_slot=u is first)
                     for i, u in enumerate(order)]
            runnable = calls[0].with_fallbacks(calls[1:], exceptions_to_handle=FAILOVER_ERRORS) if len(calls) > 1 \
                else calls[0]
            try:
                # LangChain's astream reports each chunk to the callbacks (run_manager) itself.
                async with closing(runnable.astream(messages, stop=stop, **kwargs)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            except FAILOVER_ERRORS as exc:
                last = next((call.error for call in reversed(calls) if call.error is not None), exc)
                if last is not exc:  # every upstream failed: tell the last one's failure (with_fallbacks: the first)
                    raise last from None
                raise
        finally:
            for call in calls:  # an attempt left suspended by with_fallbacks, or never started
                await call.aclose()
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
        order = self.ordered()
        first, *rest = [u.model for u in order[:-1]] + [order[-1].retrying]
        model = first.with_fallbacks(rest, exceptions_to_handle=FAILOVER_ERRORS) if rest else first
        message = model.invoke(messages, stop=stop, **kwargs)
        assert isinstance(message, AIMessage)
        return ChatResult(generations=[ChatGeneration(message=message)])


def build_upstreams(urls: Sequence[str | None],
                    make_models: Callable[[str | None], tuple[OpenAICompatibleChat, OpenAICompatibleChat]],
                    model_name: str, cooldown_seconds: float, max_concurrency: int, queue_size: int) -> Upstreams:
    """The pool over `urls`; `make_models(url)` builds each one's chat model without retries and with the SDK's
    (OPENAI_MAX_RETRIES), for when it is the last tried."""
    upstreams = [Upstream(url, *make_models(url), max_concurrency, i) for i, url in enumerate(urls)]
    return Upstreams(upstreams=upstreams, model_name=model_name, cooldown_seconds=cooldown_seconds,
                     queue_size=queue_size)
