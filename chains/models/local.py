"""The embedded default model: a GGUF run in-process by llama-cpp-python, as a LangChain chat model.

Why not LangChain's `ChatLlamaCpp`: it has only a sync `_stream` (a thread hop per token through the default
executor) and no way to stop decoding when the consumer goes away. Here one decode thread owns the `Llama`
object (which is not thread-safe) and feeds each token to the event loop; a stop flag checked between tokens
ends decoding as soon as the consumer stops iterating; callers beyond a bounded wait queue are refused.
"""

from __future__ import annotations

import asyncio
import codecs
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, cast

import llama_cpp
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_types import ChatCompletionRequestMessage
from pydantic import ConfigDict, PrivateAttr

from chains.models.base import (
    ModelPlaces,
    StreamedChatModel,
    StreamEnd,
    TextStream,
    UsageMeter,
    admitted,
    final_chunk,
    token_chunk,
    usage_meter,
)

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "chat": "user", "tool": "tool"}


class QueueObserver(Protocol):
    """Told of each generation's way through the decode queue (the metrics, chains.observability)."""

    def queued(self) -> None: ...

    def decode_started(self, waited: float) -> None: ...

    def decode_ended(self) -> None: ...


class LlamaCppChatModel(StreamedChatModel):
    """A GGUF chat model decoded in-process, one generation at a time, cancellable between tokens."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: Path
    temperature: float = 0.7
    max_tokens: int = 256
    n_threads: int = 2
    n_ctx: int = 2048
    queue_size: int = 32
    queue_per_client: int = 8  # places one client (an address, or a key) may hold: ModelPlaces
    seed: int = -1
    # Sampling (the settings LOCAL_REPEAT_PENALTY and friends; see docs/models.md, the embedded model).
    repeat_penalty: float = 1.2
    repeat_last_n: int = 64
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.05

    _llama: Llama = PrivateAttr()
    _formatter: Jinja2ChatFormatter = PrivateAttr()
    _sampling: dict[str, Any] = PrivateAttr()  # keyword arguments of Llama.generate
    # One worker thread is the lock: every use of `_llama` runs on it, in submission order.
    _executor: ThreadPoolExecutor = PrivateAttr()
    _places: ModelPlaces = PrivateAttr()
    _queue_observer: QueueObserver | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._places = ModelPlaces(self.queue_size + 1, self.queue_per_client)
        self._llama = Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            seed=self.seed if self.seed >= 0 else 0xFFFFFFFF,
            last_n_tokens_size=self.repeat_last_n,
            verbose=False,
        )
        self._sampling = {"repeat_penalty": self.repeat_penalty, "top_k": self.top_k, "top_p": self.top_p,
                          "min_p": self.min_p}
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{self.model_path.name} has no chat template in its metadata")
        model = self._llama._model
        eos_id = self._llama.token_eos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id),
            bos_token=model.token_get_text(self._llama.token_bos()),
            stop_token_ids=[eos_id],
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-decode")

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (they load before the server listens; the readiness probe asks)."""
        return getattr(self, "_llama", None) is not None

    @property
    def _llm_type(self) -> str:
        return "llama-cpp-in-process"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model_path.name, "temperature": self.temperature, "max_tokens": self.max_tokens}

    @property
    def places(self) -> ModelPlaces:
        """Generations running or waiting for the decode thread: one running and `queue_size` waiting fill it."""
        return self._places

    def observe_queue(self, observer: QueueObserver) -> None:
        self._queue_observer = observer

    # -- the decode thread -------------------------------------------------------------------------------

    def _decode(self, messages: list[dict[str, str]], params: dict[str, Any], stop_flag: threading.Event,
                emit: Callable[[object], None], submitted: float = 0.0) -> None:
        """Runs on the decode thread: emits text as it becomes whole characters, then a `StreamEnd`, or the exception.

        Our own loop over `Llama.generate` rather than `create_completion`: it counts the tokens themselves (llama.cpp
        holds back an incomplete UTF-8 character, so one piece of text can be several tokens), decodes each token's
        bytes once (create_completion re-detokenizes the whole reply per token), and stops between tokens.
        """
        terminal: object = None  # the StreamEnd or the exception, sent once the model is free again
        observer = self._queue_observer
        if observer is not None:
            observer.decode_started(time.perf_counter() - submitted)
        try:
            if stop_flag.is_set():  # abandoned while it waited in the queue
                return
            # Our dicts have the fields of llama.cpp's message TypedDicts (role, content).
            prompt = self._formatter(messages=cast(list[ChatCompletionRequestMessage], messages))
            tokens = self._llama.tokenize(prompt.prompt.encode("utf-8"), add_bos=not prompt.added_special,
                                          special=True)
            if len(tokens) >= self.n_ctx:
                raise ValueError(f"the prompt is {len(tokens)} tokens, more than the model's context of {self.n_ctx}")
            meter: UsageMeter = params["meter"]
            meter.prompt_tokens = len(tokens)
            max_tokens = min(params["max_tokens"], self.n_ctx - len(tokens))
            template_stops = [prompt.stop] if isinstance(prompt.stop, str) else list(prompt.stop or ())
            stops = StopStrings([*template_stops, *params["stop"]])
            if params["seed"] is not None:
                self._llama.set_seed(params["seed"])
            # Evaluate the whole prompt every time: reusing a cached prefix changes the batch shapes, and with
            # them the float rounding, so temperature 0 would not give the same text for the same prompt.
            self._llama.reset()
            utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")  # as llama.cpp: drop invalid bytes
            produced, finish_reason = 0, "length"
            generation = self._llama.generate(tokens, temp=params["temperature"], **self._sampling)
            for token in closing_generator(generation):
                if stop_flag.is_set():
                    finish_reason = "cancelled"
                    break
                if self._is_end(token):
                    finish_reason = "stop"
                    break
                produced += 1
                meter.completion_tokens = produced
                text, stopped = stops.feed(utf8.decode(self._llama.detokenize([token])))
                if text:
                    emit(text)
                if stopped:
                    finish_reason = "stop"
                    break
                if produced >= max_tokens:
                    break
            if finish_reason != "cancelled":
                tail = stops.flush(utf8.decode(b"", final=True))
                if tail:
                    emit(tail)
            terminal = StreamEnd(finish_reason, len(tokens), produced)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            terminal = exc
        finally:
            # Released before the consumer hears of the end, so that whoever it tells finds the model free.
            self._places.give_back(params["slots"])
            if observer is not None:
                observer.decode_ended()
            if terminal is not None:
                emit(terminal)

    def _is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._llama._model.vocab, token))

    def _submit(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                stop_flag: threading.Event, emit: Callable[[object], None]) -> Future[None]:
        reservation = admitted.get()  # the places its request was admitted with, if it came through one
        if reservation is not None and reservation.places is self._places and reservation.claim():
            slots = reservation.slots
        else:  # raises when the queue, or this client's share, is full
            slots = self._places.take(reservation.client if reservation is not None else None)
        if self._queue_observer is not None:
            self._queue_observer.queued()
        params = {
            "temperature": kwargs.get("temperature", self.temperature),
            "max_tokens": kwargs.get("max_tokens", self.max_tokens),
            "seed": kwargs.get("seed"),
            "stop": stop or [],
            # The core's meter when it asks (a stopped generation reports what it used), else a private one.
            "meter": usage_meter.get() or UsageMeter(),
            "slots": slots,
        }
        prompt = [{"role": _ROLES.get(m.type, "user"), "content": m.text} for m in messages]
        return self._executor.submit(self._decode, prompt, params, stop_flag, emit, time.perf_counter())

    # -- LangChain interface ------------------------------------------------------------------------------

    def _chunk_of(self, item: object) -> ChatGenerationChunk:
        """What the decode thread sent, as a chunk: text, or the last (usage, finish reason); its failure raised."""
        if isinstance(item, str):
            return token_chunk(item)
        if isinstance(item, StreamEnd):
            return final_chunk(item.prompt_tokens or 0, item.completion_tokens or 0, item.finish_reason or "stop",
                               self.reported_model_name)
        assert isinstance(item, BaseException)  # the decode thread sends text, the end, or its failure
        raise item

    @property
    def reported_model_name(self) -> str:
        return self.model_path.name

    async def astream_text(self, messages: list[BaseMessage], stop: list[str] | None = None,
                           **kwargs: Any) -> TextStream:
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[object] = asyncio.Queue()
        stop_flag = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, item)

        self._submit(messages, stop, kwargs, stop_flag, emit)
        try:
            while True:
                item = await tokens.get()
                if isinstance(item, str):
                    yield item
                elif isinstance(item, StreamEnd):
                    yield item
                    return
                else:
                    assert isinstance(item, BaseException)  # the decode thread's failure
                    raise item
        finally:
            # The consumer stopped (finished, broke off, or was cancelled): decoding stops at the next token.
            stop_flag.set()

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        tokens: queue.SimpleQueue[object] = queue.SimpleQueue()
        stop_flag = threading.Event()
        self._submit(messages, stop, kwargs, stop_flag, tokens.put)
        try:
            while True:
                item = tokens.get()
                chunk = self._chunk_of(item)
                if run_manager and isinstance(item, str):
                    run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
                if isinstance(item, StreamEnd):
                    return
        finally:
            stop_flag.set()


class StopStrings:
    """Cuts a stream of text at the first stop string, holding back only a tail that might begin one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to send now, and whether a stop string was reached."""
        if not self.stops:
            return text, False
        text, self.held = self.held + text, ""
        cut = min((i for i in (text.find(stop) for stop in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut], True
        for size in range(min(len(text), max(map(len, self.stops)) - 1), 0, -1):
            if any(stop.startswith(text[-size:]) for stop in self.stops):
                text, self.held = text[:-size], text[-size:]
                break
        return text, False

    def flush(self, text: str) -> str:
        """What is left at the end (a held tail that never became a stop string)."""
        rest, self.held = self.held + text, ""
        return rest


def closing_generator(generator: Generator[int, Any, None]) -> Iterator[int]:
    """Iterates `generator` and closes it however the loop ends (a `break` would leave it suspended)."""
    try:
        yield from generator
    finally:
        generator.close()
