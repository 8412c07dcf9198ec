"""The `/chat` surface's generator: from a validated request to a stream of encoded events, over the one core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from chains.api.chat.protocol import JSON_EVENTS, RAW_TEXT, ChatDefaults, StreamParams
from chains.api.runs.protocol import RunCaller
from chains.api.runs.serving import RunServing
from chains.common.settings import Settings
from chains.runnables.chat import ChatChain, ChatMessage, ConversationInput, SystemPromptInput
from chains.streaming.generation import StreamOptions
from chains.streaming.record import StreamLabels


@dataclass(frozen=True)
class ChatServing:
    """The chains LangServe mounts (one path to the model), the server's stream defaults, and its runs."""

    chains: dict[str, ChatChain]
    settings: Settings
    runs: RunServing

    def options(self, params: StreamParams | None = None, **route_defaults: float) -> StreamOptions:
        """What the request gave, else the route's defaults, else the server's."""
        settings = self.settings
        defaults: dict[str, Any] = {
            "buffer_size": 1, "flush_ms": settings.stream_flush_ms, "timeout": settings.stream_timeout,
            "idle_timeout": settings.stream_idle_timeout, **route_defaults,
        }
        given = params.model_dump(include=set(StreamParams.model_fields), exclude_none=True) if params else {}
        return StreamOptions(**{**defaults, **given})

    async def stream(self, route: str, chain: str, chain_input: Any, options: StreamOptions, caller: RunCaller,
                     raw: bool = False) -> Response:
        return await self.runs.start(self.chains[chain], chain_input, options, RAW_TEXT if raw else JSON_EVENTS,
                                     caller, StreamLabels(route, chain))

    async def chat(self, message: str | None, messages: list[ChatMessage] | None, system_prompt: str | None,
                   params: StreamParams, caller: RunCaller) -> Response:
        """`/chat`: one message under a system prompt, or a conversation. The request model has validated every
        field with the chain input's own types and limits: the chain gets an instance it does not validate again."""
        if messages is not None:
            return await self.stream("/chat", "conversation", ConversationInput.model_construct(
                messages=messages, system_prompt=system_prompt), self.options(params), caller)
        return await self.stream("/chat", "system-prompt", SystemPromptInput.model_construct(
            message=message, system_prompt=system_prompt), self.options(params), caller)

    def defaults(self) -> ChatDefaults:
        settings = self.settings
        return ChatDefaults(system_prompt=settings.system_prompt, max_input_chars=settings.max_input_chars,
                            max_messages=settings.max_messages)
