"""What the embedded and the scripted models share: a chat model defined by its token streams."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult


class StreamedChatModel(BaseChatModel):
    """A reply is its concatenated stream: `_stream`/`_astream` are the model, `invoke` is built on them."""

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))


def token_chunk(text: str) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=text))


def final_chunk(prompt_tokens: int, completion_tokens: int, finish_reason: str, model_name: str
                ) -> ChatGenerationChunk:
    """The empty last chunk that carries usage and why the reply ended."""
    usage = {"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    message = AIMessageChunk(
        content="", usage_metadata=usage,  # type: ignore[arg-type]
        response_metadata={"finish_reason": finish_reason, "model_name": model_name}, chunk_position="last",
    )
    return ChatGenerationChunk(message=message)
