"""A deterministic scripted chat model: protocol tests and benchmarks, never the default.

Its tokens deliberately include what breaks naive SSE code: newlines, a carriage return, Chinese and emoji; with
`reasoning_tokens` it thinks aloud first, like a reasoning model (its thinking includes markup a page must not run).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from chains.models.base import (
    Reasoning,
    StreamedChatModel,
    StreamEnd,
    TextStream,
    UsageMeter,
    final_chunk,
    token_chunk,
    usage_meter,
)

SCRIPT: tuple[str, ...] = ("Hello", ",", " world", "!", "\n", "你好", "，", "世界", " 🙂", "\r\n", "line", " two", ".")
REASONING_SCRIPT: tuple[str, ...] = ("Let", " me", " think", ".", "\n", "<img src=x onerror=alert(1)>", " 想",
                                     "一想", ".")


def scripted_tokens(count: int) -> list[str]:
    """The reply of the fake model: `count` tokens cycling through SCRIPT."""
    return [SCRIPT[i % len(SCRIPT)] for i in range(count)]


def scripted_reasoning(count: int) -> list[str]:
    """The reasoning of the fake model before its reply: `count` pieces cycling through REASONING_SCRIPT."""
    return [REASONING_SCRIPT[i % len(REASONING_SCRIPT)] for i in range(count)]


class ScriptedFailure(RuntimeError):
    """The failure `fail_after` asks for."""


class ScriptedChatModel(StreamedChatModel):
    """Streams `reasoning_tokens` pieces of scripted reasoning, then `reply_tokens` scripted tokens, each
    `token_delay_ms` apart, whatever the prompt."""

    reply_tokens: int = 20
    reasoning_tokens: int = 0
    token_delay_ms: float = 0.0
    fail_after: int | None = None  # raise after this many tokens: error paths in tests and front ends

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"reply_tokens": self.reply_tokens, "reasoning_tokens": self.reasoning_tokens,
                "token_delay_ms": self.token_delay_ms}

    def _maybe_fail(self, produced: int) -> None:
        if self.fail_after is not None and produced >= self.fail_after:
            raise ScriptedFailure(f"scripted failure after {produced} tokens")

    @staticmethod
    def _prompt_tokens(messages: list[BaseMessage]) -> int:
        return sum(len(str(m.content).split()) for m in messages)

    def _final_chunk(self, messages: list[BaseMessage]) -> ChatGenerationChunk:
        return final_chunk(self._prompt_tokens(messages), self.reasoning_tokens + self.reply_tokens, "stop",
                           "scripted", self.reasoning_tokens or None)

    def _script(self) -> list[str]:
        """Every piece in order: the reasoning (as `Reasoning`), then the reply."""
        return [*map(Reasoning, scripted_reasoning(self.reasoning_tokens)), *scripted_tokens(self.reply_tokens)]

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        delay = self.token_delay_ms / 1000
        for i, piece in enumerate(self._script()):
            self._maybe_fail(i)
            if delay and i:
                time.sleep(delay)
            chunk = token_chunk(piece)
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
        yield self._final_chunk(messages)

    async def astream_text(self, messages: list[BaseMessage], stop: list[str] | None = None,
                           **kwargs: Any) -> TextStream:
        delay = self.token_delay_ms / 1000
        meter = usage_meter.get() or UsageMeter()
        meter.prompt_tokens = self._prompt_tokens(messages)
        for i, piece in enumerate(self._script()):
            self._maybe_fail(i)
            if delay and i:
                await asyncio.sleep(delay)
            meter.completion_tokens = i + 1
            yield piece
        yield StreamEnd("stop", meter.prompt_tokens, meter.completion_tokens, self.reasoning_tokens or None)
