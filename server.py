"""The deployment, as wiring: settings → chat model → chains → middleware and HTTP surfaces.

`create_app(settings)` builds an app; `app` is the one the environment (and `.env`) describes. `make run` serves it
with the project's launcher (`python -m chains.hosting`: uvicorn with the request-line protocol and its connection
limits); `uvicorn server:app` serves it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from chains.api.chat.router import chat_router
from chains.api.chat.serving import ChatServing
from chains.api.langserve import mount_chains
from chains.api.meta import meta_router
from chains.api.metrics import metrics_router
from chains.api.openai.router import openai_router
from chains.api.openai.serving import OpenAIServing
from chains.api.responses.router import responses_router
from chains.api.responses.serving import ResponsesServing
from chains.api.runs.router import runs_router
from chains.api.runs.serving import RunServing
from chains.api.sign_in import sign_in_router
from chains.api.ui.router import ui_chat_router
from chains.api.ui.serving import UIChatServing
from chains.common.keys import FailedAuth, KeyMatcher
from chains.common.responses import ERROR_RESPONSES, install_error_handlers
from chains.common.settings import ConfigError, Settings, load_settings
from chains.hosting.drain import draining
from chains.hosting.heap import settle_heap
from chains.hosting.http_protocol import LIMITS_STATE, LIVE_STREAMS_STATE, ConnectionLimits
from chains.hosting.static import mount_playgrounds
from chains.middleware import install as install_middleware
from chains.models import build_chat_model
from chains.models.base import admission_queue
from chains.observability.access_log import install_access_log_filter
from chains.observability.observer import observe
from chains.observability.tracing import tracing_from_environment
from chains.observability.upstream import observed_async_client
from chains.runnables.chat import build_chains
from chains.streaming.generation import LiveStreams
from chains.streaming.store import build_run_store


def create_app(settings: Settings) -> FastAPI:
    model = build_chat_model(settings, partial(observed_async_client, settings.openai_model))
    chains = build_chains(model, settings.system_prompt)
    admission = admission_queue(model)  # the local model's places, or capped upstreams'; None for the others
    tracing = tracing_from_environment()  # off unless OTEL_* turns it on
    observer = observe(settings.provider, settings.model_name, settings.temperature, settings.max_tokens,
                       settings.log_format == "json", tracing, model)
    live = LiveStreams()  # ended at shutdown by the request-line protocol, which gets it from the lifespan state
    runs = RunServing(build_run_store(settings), settings.sse_heartbeat_seconds, observer, live)
    connection_limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes, header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout, min_body_rate=settings.min_body_rate,
        max_connections=settings.max_connections, max_connections_per_address=settings.max_connections_per_address)
    keys = (KeyMatcher(settings.api_keys, settings.session_ttl),
            FailedAuth(settings.auth_failure_limit, settings.auth_failure_window)) if settings.api_keys else None
    install_access_log_filter(settings.log_full_urls)  # uvicorn's access line: no query values, no forged client

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        settle_heap()  # the app is loaded: what it keeps for its life leaves the garbage collector's sight
        try:
            async with runs.lifespan(app), draining(live, settings.drain_seconds):
                # uvicorn hands this state to every connection's protocol (chains.hosting.http_protocol).
                yield {LIMITS_STATE: connection_limits, LIVE_STREAMS_STATE: live}
        finally:
            if tracing is not None:  # the spans still queued are exported before the process ends
                await asyncio.to_thread(tracing.provider.shutdown)

    app = FastAPI(title="Token streaming", version="0.1.0", responses=ERROR_RESPONSES, lifespan=lifespan,
                  description="LangChain chat chains streamed over HTTP: LangServe routes and typewriter front ends.")
    app.state.tracing = tracing  # its spans, for a test, with OTEL_TRACES_EXPORTER=memory
    install_middleware(app, settings, admission, keys, tracing, live)
    install_error_handlers(app)
    # The streaming routes first: a request is matched against the routes in order, and LangServe's chains
    # add ~80 of them.
    app.include_router(chat_router(ChatServing(chains, settings, runs)))
    app.include_router(runs_router(runs))
    app.include_router(openai_router(OpenAIServing(chains, settings, runs)))
    app.include_router(responses_router(ResponsesServing(chains, settings, runs)))
    app.include_router(ui_chat_router(UIChatServing(chains["conversation"], settings, runs)))
    mount_chains(app, chains)
    if keys is not None:
        app.include_router(sign_in_router(*keys))
    app.include_router(meta_router(settings, admission, runs.store, model, live))
    app.include_router(metrics_router())
    mount_playgrounds(app)
    return app


def _app_from_environment() -> FastAPI:
    try:
        return create_app(load_settings())
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None


app = _app_from_environment()
