"""The Responses surface's generator: a `POST /v1/responses` request → a chain's input and options → the one
streaming core (`RunServing.open`) in the Responses encoding → the event stream, or the Response object.

A response *is* a run: its id is `resp_<run id>`, and every run of this surface is kept in the one Responses
encoding (chains.api.responses.protocol), streamed or not. So nothing is stored beside the run store, and
whatever finds a run — this replica's memory, or Redis for every replica — finds the response:

- `background: true` opens the run with the disconnect policy `continue`, lets its listener go and answers the
  Response (`in_progress`) at once; the generation goes on to its end (or its timeouts).
- `GET /v1/responses/{id}` reads the run: a finished run's last event holds the whole final Response (that one
  event is read, after Last-Event-ID `<run id>:<events - 2>`); a running one's events so far are folded into the
  Response as it stands (`response_of`).
- `GET …?stream=true&starting_after=N` joins the run after its event `N // STRIDE - 1` and drops the frames
  numbered N or less (sequence numbers are `seq * STRIDE + i`: see the protocol), then follows it live.
- `POST …/cancel` cancels the run wherever it generates and answers the Response once its terminal event is in.

Without `background`, a streamed or a plain response waits for its first token (the plain one for its end) before
it answers, as `/v1/chat/completions` does, so that a failure before anything was said is an HTTP error with its
status (429 with `Retry-After`, 502, 503, 504) that the SDKs raise and retry; its run is cancelled when its client
leaves (the router watches the connection while it waits; the stream's response watches it after).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from chains.api.openai.protocol import RequestMessage
from chains.api.openai.serving import InvalidRequest, chain_input
from chains.api.responses.protocol import (
    STRIDE,
    ResponseEvents,
    ResponseRequest,
    after_sequence,
    frames_of,
    response_id_of,
    response_of,
)
from chains.api.runs.protocol import ANONYMOUS, RunClient
from chains.api.runs.serving import RUN_ERRORS, RunServing, run_refusal, stream_once_begun, token_by_token, whole_reply
from chains.api.sse import TokenStreamResponse
from chains.common.responses import ErrorResponse, openai_invalid, refuse
from chains.common.settings import Settings
from chains.runnables.chat import ChatChain
from chains.streaming.generation import Generation
from chains.streaming.record import StreamLabels
from chains.streaming.run import InvalidEventId, Listener
from chains.streaming.store import RunNotFound, RunOver

PATH = "/v1/responses"
# How long a cancel waits for the run's terminal event before it answers the response as it stands (a run on
# another replica is stopped through the store, and its end comes back the same way).
CANCEL_WAIT_SECONDS = 10.0


def messages_of(request: ResponseRequest) -> list[RequestMessage]:
    """`instructions` and `input` as Chat Completions messages: the system message first."""
    turns = [("user", request.input)] if isinstance(request.input, str) else \
        [(item.role, item.content) for item in request.input]
    if request.instructions is not None:
        turns.insert(0, ("system", request.instructions))
    return [RequestMessage.model_validate({"role": role, "content": content}) for role, content in turns]


@dataclass
class ResponsesServing:
    """The chains under their names as models, answered as OpenAI's Responses."""

    chains: dict[str, ChatChain]
    settings: Settings
    runs: RunServing

    def chain_for(self, request: ResponseRequest) -> ChatChain:
        """The requested chain, with the request's sampling within the server's caps (`max_output_tokens` at most
        MAX_TOKENS)."""
        chain = self.chains[request.model]
        params: dict[str, Any] = {}
        if request.max_output_tokens is not None:
            params["max_tokens"] = min(request.max_output_tokens, self.settings.max_tokens)
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.reasoning is not None and request.reasoning.effort is not None:
            params["reasoning_effort"] = request.reasoning.effort
        return chain.with_model_params(**params) if params else chain

    def _input(self, request: ResponseRequest) -> Any:
        """The chain's input, or the refusal naming the field at fault."""
        if request.model == "single-turn" and request.instructions is not None:
            raise InvalidRequest("model single-turn takes no instructions; use model system-prompt or conversation",
                                 "instructions")
        try:
            return chain_input(request.model, messages_of(request))
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc).replace("messages", "input messages"), "input") from None

    async def create(self, request: ResponseRequest, client: RunClient = ANONYMOUS) -> Response:
        """`POST /v1/responses`: the Response, its stream, or (background) the Response as it starts."""
        if request.model not in self.chains:
            return refuse(404, "not_found", f"The model {request.model[:100]!r} does not exist; the models are "
                          f"{', '.join(self.chains)} (GET /v1/models)", param="model")
        try:
            given = self._input(request)
        except InvalidRequest as exc:
            return refuse(400, "invalid_body", str(exc), param=exc.param)
        except ValidationError as exc:  # the chain input's limits; its fields all come from `input`
            errors = exc.errors()
            for error in errors:
                error["loc"] = ("input",)
            return openai_invalid(errors)
        effort = request.reasoning.effort if request.reasoning is not None else None
        if effort is not None and self.settings.provider != "openai":
            return refuse(400, "invalid_body", f"reasoning.effort: the {self.settings.provider} provider's model does "
                          "not reason; only an upstream (CHAT_PROVIDER=openai) can honour it", param="reasoning")
        fmt = ResponseEvents(request)
        try:
            generation, events = await self.runs.open(
                self.chain_for(request), given, token_by_token(self.settings), fmt, client.owner,
                "continue" if request.in_background else "cancel", StreamLabels(PATH, request.model), client.address)
        except RUN_ERRORS as exc:
            return run_refusal(exc)
        if request.in_background and not request.streams:
            await events.aclose()  # nobody listens; the policy `continue` lets it run on
            return JSONResponse(fmt.response("in_progress").model_dump(mode="json"),
                                headers={"X-Run-Id": generation.run.id})
        if request.streams:
            return await stream_once_begun(generation, events, self.settings.sse_heartbeat_seconds)
        return await self._complete(generation, events)

    async def _complete(self, generation: Generation, events: Listener) -> Response:
        body = await whole_reply(generation, events)
        if isinstance(body, ErrorResponse):
            return body
        # The terminal frame carries the whole Response.
        return JSONResponse(frames_of(body)[-1]["response"], headers={"X-Run-Id": generation.run.id})

    # -- a response later: its state, its stream, its cancel -------------------------------------------------------

    async def retrieve(self, run_id: str, owner: str | None) -> Response:
        """`GET /v1/responses/{id}`: the Response as it stands."""
        info = await self.runs.info(run_id, owner)
        if isinstance(info, JSONResponse):
            return self._not_found(run_id) if info.status_code == 404 else info
        # A finished run: its terminal event alone (the events after the one before it). A running one: what it
        # keeps now, in one read.
        after = f"{run_id}:{info.events - 2}" if info.status != "running" else None
        try:
            events = await self.runs.store.listen(run_id, owner, after)
        except (RunNotFound, RunOver, InvalidEventId):  # gone (or forgotten) between the two reads
            return self._not_found(run_id)
        except RUN_ERRORS as exc:
            return run_refusal(exc)
        async with aclosing(events):  # type: ignore[type-var]  # every store's listener has aclose
            body = await anext(aiter(events), b"") if after is None else b"".join([p async for p in events])
        return self._answer(run_id, body)

    async def stream(self, run_id: str, owner: str | None, starting_after: int | None) -> Response:
        """`GET /v1/responses/{id}?stream=true`: the run's frames after `starting_after`, then the live ones."""
        event = -1 if starting_after is None else starting_after // STRIDE  # the run event that frame is in
        try:
            events = await self.runs.store.listen(run_id, owner, f"{run_id}:{event - 1}" if event > 0 else None)
        except RunNotFound:
            return self._not_found(run_id)
        except (RunOver, InvalidEventId):
            return refuse(400, "invalid_body", f"starting_after {starting_after}: the response has no event after "
                          "it (or no longer keeps it)", param="starting_after")
        except RUN_ERRORS as exc:
            return run_refusal(exc)
        if starting_after is not None:
            events = after_sequence(events, starting_after)
        return TokenStreamResponse(events, self.settings.sse_heartbeat_seconds, run_id)

    async def cancel(self, run_id: str, owner: str | None) -> Response:
        """`POST /v1/responses/{id}/cancel`: stop it, and answer the Response as it ended."""
        outcome = await self.runs.cancel(run_id, owner)
        if isinstance(outcome, JSONResponse):
            return self._not_found(run_id) if outcome.status_code == 404 else outcome
        try:
            events = await self.runs.store.listen(run_id, owner, None)
        except RUN_ERRORS as exc:
            return self._not_found(run_id) if isinstance(exc, RunNotFound) else run_refusal(exc)
        pieces: list[bytes] = []
        async with aclosing(events):  # type: ignore[type-var]
            try:
                async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                    async for piece in events:
                        pieces.append(piece)
            except TimeoutError:  # the run's end is late: the response as it stands
                pass
        return self._answer(run_id, b"".join(pieces))

    def _answer(self, run_id: str, body: bytes) -> Response:
        response = response_of(body, response_id_of(run_id))
        if response is None:  # a run of another surface
            return self._not_found(run_id)
        return JSONResponse(response, headers={"X-Run-Id": run_id})

    @staticmethod
    def _not_found(run_id: str) -> ErrorResponse:
        return refuse(404, "not_found", f"No response with id {response_id_of(run_id)!r}: unknown, expired "
                      "(RUN_TTL) or started with another key", param="response_id")
