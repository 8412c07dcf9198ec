"""The Responses routes: `POST /v1/responses`, `GET /v1/responses/{response_id}` (the Response, or with
`stream=true` its events), `POST /v1/responses/{response_id}/cancel`.

Errors are in OpenAI's shape, as on every `/v1` path (chains.common.errors renders them by path).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from chains.api.openai.protocol import OPENAI_ERROR_RESPONSES
from chains.api.responses.protocol import RESPONSE_ID_PREFIX, ResponseObject, ResponseRequest, run_id_of
from chains.api.responses.serving import ResponsesServing
from chains.api.runs.protocol import RunClient, run_client, run_owner
from chains.api.sse import sse_event_schema

EVENTS_DOC = """With `stream: true`, a `text/event-stream` of Responses events (`event: <type>` and `data: {…}` with
`type` and `sequence_number`): response.created, response.in_progress, for a reasoning model a `reasoning` output
item (its `response.reasoning_text.delta`s), the `message` item (`response.output_text.delta` per token), then
response.completed, response.incomplete (cut at `max_output_tokens`, or cancelled: status `cancelled`) or
response.failed. A failure before the first token is an HTTP error instead."""

_ANSWER: dict[int | str, dict[str, Any]] = {
    **OPENAI_ERROR_RESPONSES,
    200: {"description": "The Response, or with `stream` a `text/event-stream` of its events.",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResponseObject"}},
                      "text/event-stream": {"schema": sse_event_schema(None, {})}}},
}
ResponseId = Annotated[str, Path(description="`resp_<run id>`, as `POST /v1/responses` answered it",
                                 pattern=rf"^{RESPONSE_ID_PREFIX}[A-Za-z0-9_-]{{22}}$", max_length=27)]
Owner = Annotated[str | None, Depends(run_owner)]

def responses_router(serving: ResponsesServing) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

    @router.post("/responses", responses=_ANSWER, response_model=ResponseObject, response_class=Response,
                 description=EVENTS_DOC)
    async def create_response(body: ResponseRequest,
                              client: Annotated[RunClient, Depends(run_client)]) -> Response:
        """A reply from the chain the `model` names, as a Response: whole, streamed, or (`background`) at once,
        to be retrieved later. Either is a run: its id is the `X-Run-Id` header, and the response's is
        `resp_<run id>`."""
        return await serving.create(body, client)  # cancelled if its client leaves first (the middleware)

    @router.get("/responses/{response_id}", responses=_ANSWER, response_model=ResponseObject,
                response_class=Response)
    async def retrieve_response(
        response_id: ResponseId, owner: Owner,
        stream: Annotated[bool, Query(description="the response's events, replayed, then live to its end")] = False,
        starting_after: Annotated[int | None, Query(ge=0, le=10**10, description=(
            "with `stream`: only the events after this `sequence_number`"))] = None,
        include: Annotated[list[str] | None, Query(max_length=16, description="accepted and not used")] = None,
        include_obfuscation: Annotated[bool | None, Query(description="accepted and not used")] = None,
    ) -> Response:
        """The Response as it stands (`in_progress` with its output so far, or as it ended), or its events."""
        if stream:
            return await serving.stream(run_id_of(response_id), owner, starting_after)
        return await serving.retrieve(run_id_of(response_id), owner)

    @router.post("/responses/{response_id}/cancel", responses=_ANSWER, response_model=ResponseObject,
                 response_class=Response)
    async def cancel_response(response_id: ResponseId, owner: Owner) -> Response:
        """Stop the generation (wherever it runs) and answer the Response as it ended: `cancelled`, or how it had
        ended before."""
        return await serving.cancel(run_id_of(response_id), owner)

    return router
