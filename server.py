"""The deployment: settings → chat model → chains → routes.  Run with `uvicorn server:app`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from langserve import add_routes

from chains import http_protocol, limits
from chains.auth import ApiKeyAuth, FailedAuth, KeyMatcher, sign_in_router
from chains.chat import CHAINS
from chains.errors import install_error_handlers
from chains.guards import (
    AnswerFailures, CancelWhenClientLeaves, LangServeBodies, ModelAdmission, PathLimits, RequestLimits,
    StreamsPerClient, cancel_batches_together,
)
from chains.models import build_chat_model
from chains.models.local import LlamaCppChatModel
from chains.routes import chat_router
from chains.settings import ConfigError, load_settings
from chains.static import mount_playgrounds

try:
    settings = load_settings()
    model = build_chat_model(settings)
except ConfigError as exc:
    raise SystemExit(f"config error: {exc}") from None
limits.configure(max_input_chars=settings.max_input_chars, max_messages=settings.max_messages)
# Read by the protocol (`--http chains.http_protocol:Utf8RequestLineProtocol`) for every connection.
http_protocol.configure(max_header_bytes=settings.max_header_bytes, header_timeout=settings.header_timeout,
                        body_timeout=settings.body_timeout, min_body_rate=settings.min_body_rate,
                        max_connections=settings.max_connections)

app = FastAPI(
    title="Token streaming",
    version="0.1.0",
    description="LangChain chat chains streamed over HTTP: LangServe routes and typewriter front ends.",
)
# Pure ASGI middleware only: BaseHTTPMiddleware and GZip would break or buffer the streams.
# Each add_middleware wraps the ones before it: CORS is outermost, so even refusals carry its headers.
app.add_middleware(CancelWhenClientLeaves)
if isinstance(model, LlamaCppChatModel):  # the one provider with a bounded wait queue
    local_model = model
    app.add_middleware(ModelAdmission, free_places=lambda: local_model.queue_size + 1 - local_model.pending)
if settings.max_streams_per_client:
    app.add_middleware(StreamsPerClient, limit=settings.max_streams_per_client)
app.add_middleware(LangServeBodies, max_batch_inputs=settings.max_batch_inputs)
app.add_middleware(PathLimits, max_config_hash_chars=settings.max_config_hash_chars)
app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth)
if settings.api_keys:
    key_matcher = KeyMatcher(settings.api_keys)
    # Wrong keys counted per address, over API calls and sign-ins together.
    failed_auth = FailedAuth(settings.auth_failure_limit, settings.auth_failure_window)
    app.add_middleware(ApiKeyAuth, matcher=key_matcher, failures=failed_auth)
    app.include_router(sign_in_router(key_matcher, failed_auth))
app.add_middleware(AnswerFailures)
app.add_middleware(CORSMiddleware, allow_origin_regex=settings.cors_origin_regex, allow_methods=["*"],
                   allow_headers=["*"], allow_credentials=True)
install_error_handlers(app)

chains = {name: make_chain(model, settings.system_prompt) for name, make_chain in CHAINS.items()}
for name, chain in chains.items():
    add_routes(app, chain, path=f"/{name}", playground_type="chat" if name == "conversation" else "default",
               config_keys=())  # nothing in a client's `config` reaches a run (chains.guards.LangServeBodies)
    cancel_batches_together(chain)  # a /batch's runs stop together: one refused, or its client gone
app.include_router(chat_router(chains, settings))

mount_playgrounds(app, Path(__file__).parent / "playground")


@app.get("/health", tags=["meta"])
async def health() -> dict[str, object]:
    """Provider, model and readiness (the model loads before the server accepts requests), plus load: the
    local model's generations running or waiting, and this worker's asyncio tasks."""
    report: dict[str, object] = {"status": "ok", "ready": True, "provider": settings.provider,
                                 "model": settings.model_name, "tasks": len(asyncio.all_tasks())}
    if isinstance(model, LlamaCppChatModel):
        report["generations"] = model.pending
    return report


@app.get("/", include_in_schema=False)
def index() -> RedirectResponse:
    return RedirectResponse("/playground/")
