"""The `/chat` surface's generator: from a validated request to a stream of encoded events, over the one core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chains.api.chat.protocol import JSON_EVENTS, RAW_TEXT, ChatDefaults, StreamParams
from chains.api.streaming import StreamOptions, TokenStreamResponse, token_events
from chains.chat import ChatChain, ChatMessage, ConversationInput, SystemPromptInput
from chains.settings import Settings


@dataclass(frozen=True)
class ChatServing:
    """The chains LangServe mounts (one path to the model) and the server's stream defaults."""

    chains: dict[str, ChatChain]
    settings: Settings

    def options(self, params: StreamParams | None = None, **route_defaults: float) -> StreamOptions:
        """What the request gave, else the route's defaults, else the server's."""
        settings = self.settings
        defaults: dict[str, Any] = {
            "buffer_size": 1, "flush_ms": settings.stream_flush_ms, "timeout": settings.stream_timeout,
            "idle_timeout": settings.stream_idle_timeout, **route_defaults,
        }
        given = params.model_dump(include=set(StreamParams.model_fields), exclude_none=True) if params else {}
        return StreamOptions(**{**defaults, **given})

    def stream(self, chain: str, chain_input: Any, options: StreamOptions, raw: bool = False) -> TokenStreamResponse:
        events = token_events(self.chains[chain], chain_input, options, RAW_TEXT if raw else JSON_EVENTS)
        return TokenStreamResponse(events, self.settings.sse_heartbeat_seconds)

    def chat(self, message: str | None, messages: list[ChatMessage] | None, system_prompt: str | None,
             params: StreamParams) -> TokenStreamResponse:
        """`/chat`: one message under a system prompt, or a conversation. The request model has validated every
        field with the chain input's own types and limits: the chain gets an instance it does not validate again."""
        if messages is not None:
            return self.stream("conversation", ConversationInput.model_construct(
                messages=messages, system_prompt=system_prompt), self.options(params))
        return self.stream("system-prompt", SystemPromptInput.model_construct(
            message=message, system_prompt=system_prompt), self.options(params))

    def defaults(self) -> ChatDefaults:
        settings = self.settings
        return ChatDefaults(system_prompt=settings.system_prompt, max_input_chars=settings.max_input_chars,
                            max_messages=settings.max_messages)
