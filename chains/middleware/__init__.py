"""Pure ASGI middleware, one concern a module (Starlette's BaseHTTPMiddleware would break disconnect detection on
streams). `install` puts them in their one order; each `add_middleware` wraps the ones before it, so the last
added is the outermost:

    BodySendInScope → InputLimitsInScope → ObserveRequests → CORS → AnswerFailures → ApiKeyAuth
        → RefuseWhileDraining → RequestLimits → PathLimits → LangServeBodies → StreamsPerClient → ModelAdmission
        → CancelWhenClientLeaves → the routes
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from chains.common.keys import FailedAuth, KeyMatcher
from chains.common.settings import Settings
from chains.middleware.admission import ModelAdmission
from chains.middleware.answer_failures import AnswerFailures
from chains.middleware.auth import ApiKeyAuth
from chains.middleware.body_limits import RequestLimits
from chains.middleware.body_send import BodySendInScope
from chains.middleware.cancel_when_client_leaves import CancelWhenClientLeaves
from chains.middleware.draining import RefuseWhileDraining
from chains.middleware.input_limits import InputLimitsInScope
from chains.middleware.langserve_bodies import LangServeBodies
from chains.middleware.observe import ObserveRequests
from chains.middleware.path_limits import PathLimits
from chains.middleware.streams_per_client import StreamsPerClient
from chains.models.base import AdmissionQueue
from chains.observability.tracing import Tracing
from chains.runnables.limits import InputLimits
from chains.streaming.generation import LiveStreams


def install(app: FastAPI, settings: Settings, admission: AdmissionQueue | None,
            keys: tuple[KeyMatcher, FailedAuth] | None, tracing: Tracing | None = None,
            live: LiveStreams | None = None) -> None:
    app.add_middleware(CancelWhenClientLeaves)
    if admission is not None:  # a model with a bounded wait queue (the local one, capped upstreams)
        app.add_middleware(ModelAdmission, queue=admission)
    if settings.max_streams_per_client:
        app.add_middleware(StreamsPerClient, limit=settings.max_streams_per_client)
    app.add_middleware(LangServeBodies, max_batch_inputs=settings.max_batch_inputs)
    app.add_middleware(PathLimits, max_config_hash_chars=settings.max_config_hash_chars)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth)
    if live is not None:  # before a body is read: a draining replica refuses at once
        app.add_middleware(RefuseWhileDraining, live=live)
    if keys is not None:
        matcher, failures = keys  # wrong keys counted per address, over API calls and sign-ins together
        app.add_middleware(ApiKeyAuth, matcher=matcher, failures=failures)
    app.add_middleware(AnswerFailures)
    app.add_middleware(CORSMiddleware, allow_origin_regex=settings.cors_origin_regex, allow_methods=["*"],
                       allow_headers=["*"], allow_credentials=True,
                       expose_headers=["X-Run-Id"])  # a page on an allowed origin can resume or cancel its run
    app.add_middleware(ObserveRequests, tracing=tracing)  # every refusal is counted
    # Around everything that validates a request (routes, LangServe, the body checks).
    app.add_middleware(InputLimitsInScope, limits=InputLimits(settings.max_input_chars, settings.max_messages))
    app.add_middleware(BodySendInScope)  # outermost: streams send their chunks straight to it
