"""Chat models by provider. Chains cannot tell one from another: each is a LangChain `BaseChatModel`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import ValidationError

from chains.common.settings import ConfigError, Settings

# The local model's sampling settings, each `LOCAL_<NAME>` passed on as the model's field of that name.
LOCAL_SAMPLING = ("seed", "repeat_penalty", "repeat_last_n", "top_k", "top_p", "min_p")


def build_chat_model(settings: Settings, http_client_for: Callable[[str], Any] | None = None) -> BaseChatModel:
    """The chat model the settings choose; imports only the chosen provider's code. `http_client_for(upstream)` is
    the HTTP client an upstream is called with (server.py passes observed ones: traceparent, retries, failures);
    None is the OpenAI SDK's default."""
    match settings.provider:
        case "openai":
            from chains.models.upstreams import OpenAICompatibleChat, build_upstreams, upstream_label

            def upstream_models(url: str | None) -> tuple[OpenAICompatibleChat, OpenAICompatibleChat]:
                """Without retries and with them, over one HTTP client (one connection pool an upstream)."""
                client = http_client_for(upstream_label(url)) if http_client_for is not None else None

                def model(retries: int) -> OpenAICompatibleChat:
                    return OpenAICompatibleChat(
                        model=settings.openai_model, api_key=settings.openai_api_key, base_url=url,
                        temperature=settings.temperature, max_completion_tokens=settings.max_tokens, streaming=True,
                        timeout=settings.openai_timeout, max_retries=retries, http_async_client=client)

                return model(0), model(settings.openai_max_retries)

            return build_upstreams(settings.openai_base_urls(), upstream_models, settings.openai_model,
                                   settings.openai_cooldown_seconds, settings.openai_max_concurrency,
                                   settings.openai_queue_size)
        case "local":
            from chains.models.llama_probe import ensure_generation_works

            assert settings.local_model_path is not None  # Settings.check() resolved it
            # Before the in-process load: a llama.cpp build that crashes on this CPU must stop start-up, not die
            # at the first request (a segfault cannot be caught).
            ensure_generation_works(settings.local_model_path, settings.local_threads)
            from chains.models.local import LlamaCppChatModel

            try:
                return LlamaCppChatModel(
                    model_path=settings.local_model_path, temperature=settings.temperature,
                    max_tokens=settings.max_tokens, n_threads=settings.local_threads, n_ctx=settings.local_context,
                    queue_size=settings.local_queue_size, queue_per_client=settings.local_queue_per_client,
                    **{name: getattr(settings, f"local_{name}") for name in LOCAL_SAMPLING})
            except ValidationError as exc:  # loading happens in the model's validation
                reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ConfigError(f"LOCAL_MODEL_PATH: cannot load {settings.local_model_path}: {reason}") from None
        case "fake":
            from chains.models.fake import ScriptedChatModel

            return ScriptedChatModel(reply_tokens=settings.fake_reply_tokens,
                                     reasoning_tokens=settings.fake_reasoning_tokens,
                                     token_delay_ms=settings.fake_token_delay_ms, fail_after=settings.fake_fail_after)
