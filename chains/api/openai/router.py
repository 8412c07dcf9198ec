"""The OpenAI-compatible routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /v1/models/{model}`.

Every error on these paths is in OpenAI's shape (chains.common.errors renders it by path), the middleware's refusals
included: a wrong key is a 401 the `openai` SDKs raise as `AuthenticationError`, the per-client cap a 429 they
raise as `RateLimitError`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from chains.api.openai.protocol import (
    CHUNK_SSE_DOC,
    OPENAI_ERROR_RESPONSES,
    ChatCompletion,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
)
from chains.api.openai.serving import OpenAIServing
from chains.api.runs.protocol import RunClient, run_client
from chains.api.sse import sse_event_schema

_COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **OPENAI_ERROR_RESPONSES,
    200: {"description": "A `chat.completion`, or with `stream: true` a `text/event-stream` of chunks.",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                      "text/event-stream": {"schema": sse_event_schema(["message"], {})}}},
}


def openai_router(serving: OpenAIServing) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    @router.get("/models", responses=OPENAI_ERROR_RESPONSES)
    async def list_models() -> ModelList:
        """The chains, as OpenAI models."""
        return serving.models()

    @router.get("/models/{model}", responses=OPENAI_ERROR_RESPONSES, response_model=ModelCard)
    async def retrieve_model(model: str) -> Any:
        """One chain, as an OpenAI model; 404 for any other name."""
        return serving.model(model)

    @router.post("/chat/completions", responses=_COMPLETION_RESPONSES, response_model=ChatCompletion,
                 description=CHUNK_SSE_DOC, response_class=Response)
    async def create_chat_completion(request: ChatCompletionRequest,
                                     client: Annotated[RunClient, Depends(run_client)]) -> Response:
        """A reply from the chain the `model` names: a `chat.completion`, or a stream of chunks. Either is a run:
        its id is the `X-Run-Id` header."""
        return await serving.create(request, client)

    return router
