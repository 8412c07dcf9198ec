"""Chat models by provider. Chains cannot tell one from another: each is a LangChain `BaseChatModel`."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from pydantic import ValidationError

from chains.settings import ConfigError, Settings


def build_chat_model(settings: Settings) -> BaseChatModel:
    """The chat model the settings choose; imports only the chosen provider's code."""
    match settings.provider:
        case "openai":
            from langchain_openai import ChatOpenAI

            return ChatOpenAI(
                model=settings.openai_model,
                api_key=settings.openai_api_key,
                base_url=settings.openai_base_url,
                temperature=settings.temperature,
                max_completion_tokens=settings.max_tokens,
                timeout=settings.openai_timeout,
                max_retries=settings.openai_max_retries,
                streaming=True,
            )
        case "local":
            from chains.models.local import LlamaCppChatModel

            assert settings.local_model_path is not None  # Settings.check() resolved it
            try:
                return LlamaCppChatModel(
                    model_path=settings.local_model_path,
                    temperature=settings.temperature,
                    max_tokens=settings.max_tokens,
                    n_threads=settings.local_threads,
                    n_ctx=settings.local_context,
                    queue_size=settings.local_queue_size,
                    seed=settings.local_seed,
                )
            except ValidationError as exc:  # loading happens in the model's validation
                reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise ConfigError(f"LOCAL_MODEL_PATH: cannot load {settings.local_model_path}: {reason}") from None
        case "fake":
            from chains.models.fake import ScriptedChatModel

            return ScriptedChatModel(reply_tokens=settings.fake_reply_tokens,
                                     token_delay_ms=settings.fake_token_delay_ms, fail_after=settings.fake_fail_after)
