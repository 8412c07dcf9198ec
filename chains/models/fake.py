"""A deterministic scripted chat model: protocol tests and benchmarks, never the default.

Its tokens deliberately include what breaks naive SSE code: newlines, a carriage return, Chinese and emoji.
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
    StreamedChatModel,
    StreamEnd,
    TextStream,
    UsageMeter,
    final_chunk,
    token_chunk,
    usage_meter,
)

SCRIPT: tuple[str, ...] = ("Hello", ",", " world", "!", "\n", "你好", "，", "世界", " 🙂", "\r\n", "line", " two", ".")


def scripted_tokens(count: int) -> list[str]:
    """The reply of the fake model: `count` tokens cycling through SCRIPT."""
    return [SCRIPT[i % len(SCRIPT)] for i in range(count)]


class ScriptedFailure(RuntimeError):
    """The failure `fail_after` asks for."""


class ScriptedChatModel(StreamedChatModel):
    """Streams `reply_tokens` scripted tokens, `token_delay_ms` apart, whatever the prompt."""

    reply_tokens: int = 20
    token_delay_ms: float = 0.0
    fail_after: int | None = None  # raise after this many tokens: error paths in tests and front ends

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"reply_tokens": self.reply_tokens, "token_delay_ms": self.token_delay_ms}

    def _maybe_fail(self, produced: int) -> None:
        if self.fail_after is not None and produced >= self.fail_after:
            raise ScriptedFailure(f"scripted failure after {produced} tokens")

    @staticmethod
    def _prompt_tokens(messages: list[BaseMessage]) -> int:
        return sum(len(str(m.content).split()) for m in messages)

    def _final_chunk(self, messages: list[BaseMessage]) -> ChatGenerationChunk:
        return final_chunk(self._prompt_tokens(messages), self.reply_tokens, "stop", "scripted")

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        delay = self.token_delay_ms / 1000
        for i, token in enumerate(scripted_tokens(self.reply_tokens)):
            self._maybe_fail(i)
            if delay and i:
                time.sleep(delay)
            chunk = token_chunk(token)
            if run_manager:
                run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk
        yield self._final_chunk(messages)

    async def astream_text(self, messages: list[BaseMessage], stop: list[str] | None = None,
                           **kwargs: Any) -> TextStream:
        delay = self.token_delay_ms / 1000
        meter = usage_meter.get() or UsageMeter()
        meter.prompt_tokens = self._prompt_tokens(messages)
        for i, token in enumerate(scripted_tokens(self.reply_tokens)):
            self._maybe_fail(i)
            if delay and i:
                await asyncio.sleep(delay)
            meter.completion_tokens = i + 1
            yield token
        yield StreamEnd("stop", meter.prompt_tokens, self.reply_tokens)
