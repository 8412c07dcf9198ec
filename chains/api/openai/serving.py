"""The OpenAI-compatible surface's generator: a Chat Completions request → a chain's input and options → the one
streaming core → chunks, or one `chat.completion`.

Streaming and non-streaming run the same generation through the same core (`RunServing.open`); they differ only in
the encoding. Both wait for the first token before answering, so that a generation that fails before it has said
anything — an upstream's 429, a timeout, a full queue — is an HTTP error with its status (429 with `Retry-After`,
502, 503, 504), which OpenAI's clients raise and retry as they would against OpenAI; after the first token a
failure can only be a chunk in the stream. A client that leaves while it waits is noticed by
`chains.middleware.cancel_when_client_leaves`, which cancels the request and with it the generation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response
from pydantic import ValidationError

from chains.api.openai.protocol import (
    ChatCompletionBody,
    ChatCompletionChunks,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    RequestMessage,
)
from chains.api.runs.protocol import ANONYMOUS, RunClient
from chains.api.runs.serving import RUN_ERRORS, RunServing, run_refusal, stream_once_begun, token_by_token, whole_reply
from chains.common.responses import ErrorResponse, openai_invalid, refuse
from chains.common.settings import Settings
from chains.runnables.chat import ChatChain, ConversationInput, SystemPromptInput
from chains.streaming.generation import Generation
from chains.streaming.record import StreamLabels
from chains.streaming.run import Listener


class InvalidRequest(ValueError):
    """A request this surface cannot map onto its chain; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _system_and_turns(messages: list[RequestMessage]) -> tuple[str | None, list[RequestMessage]]:
    system = [m.content for m in messages if m.role in ("system", "developer")]
    return ("\n\n".join(system) if system else None), [m for m in messages if m.role not in ("system", "developer")]


def chain_input(chain: str, messages: list[RequestMessage]) -> Any:
    """`messages` as the input of `chain`, validated with the chain input's own types and limits
    (MAX_INPUT_CHARS, MAX_MESSAGES). A chain that cannot take them says which one can."""
    match chain:
        case "conversation":
            return ConversationInput.model_validate({"messages": [
                {"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in messages]})
        case "system-prompt":
            system_prompt, turns = _system_and_turns(messages)
            if len(turns) != 1 or turns[0].role != "user":
                raise InvalidRequest("model system-prompt answers system messages and exactly one user message; "
                                     "for a conversation use model conversation", "messages")
            return SystemPromptInput.model_validate({"message": turns[0].content, "system_prompt": system_prompt})
        case "single-turn":
            if len(messages) != 1 or messages[0].role != "user":
                raise InvalidRequest("model single-turn answers exactly one user message and no system message; "
                                     "use model system-prompt or conversation", "messages")
            return SystemPromptInput.model_validate({"message": messages[0].content}).message
    raise AssertionError(chain)


@dataclass
class OpenAIServing:
    """The chains LangServe mounts (one path to the model) under their names as OpenAI models."""

    chains: dict[str, ChatChain]
    settings: Settings
    runs: RunServing
    started: int = field(default_factory=lambda: int(time.time()))

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=self.started, owned_by="chains") for name in self.chains])

    def model(self, name: str) -> ModelCard | ErrorResponse:
        if name not in self.chains:
            return self._no_such_model(name)
        return ModelCard(id=name, created=self.started, owned_by="chains")

    def _no_such_model(self, name: str) -> ErrorResponse:
        return refuse(404, "not_found", f"The model {name[:100]!r} does not exist; the models are "
                      f"{', '.join(self.chains)} (GET /v1/models)", param="model")

    def chain_for(self, request: ChatCompletionRequest) -> ChatChain:
        """The requested chain, with the request's sampling within the server's caps: `max_tokens` at most
        MAX_TOKENS (above it, the reply ends at MAX_TOKENS with finish_reason `length`)."""
        chain = self.chains[request.model]
        params: dict[str, Any] = {}
        limit = request.completion_tokens_limit
        if limit is not None:
            params["max_tokens"] = min(limit, self.settings.max_tokens)
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.stop:
            params["stop"] = request.stop
        if request.seed is not None:
            params["seed"] = request.seed
        if request.reasoning_effort is not None:
            params["reasoning_effort"] = request.reasoning_effort
        return chain.with_model_params(**params) if params else chain

    async def create(self, request: ChatCompletionRequest, client: RunClient = ANONYMOUS) -> Response:
        """`POST /v1/chat/completions`: the stream, or the completion."""
        if request.model not in self.chains:
            return self._no_such_model(request.model)
        try:
            given = chain_input(request.model, request.messages)
        except InvalidRequest as exc:
            return refuse(400, "invalid_body", str(exc), param=exc.param)
        except ValidationError as exc:  # the chain input's limits; its fields all come from `messages`
            errors = exc.errors()
            for error in errors:
                error["loc"] = ("messages",)
            return openai_invalid(errors)
        if request.reasoning_effort is not None and self.settings.provider != "openai":
            return refuse(400, "invalid_body", f"reasoning_effort: the {self.settings.provider} provider's model does "
                          "not reason; only an upstream (CHAT_PROVIDER=openai) can honour it", param="reasoning_effort")
        chain = self.chain_for(request)
        fmt: ChatCompletionChunks | ChatCompletionBody
        if request.stream:
            include_usage = request.stream_options is not None and request.stream_options.include_usage
            fmt = ChatCompletionChunks(request.model, include_usage)
        else:
            fmt = ChatCompletionBody(request.model)
        try:
            # A run like every stream's (X-Run-Id; state, replay and cancel at /chat/runs/{run_id}), cancelled
            # when its client leaves: OpenAI's clients do not resume.
            generation, events = await self.runs.open(
                chain, given, token_by_token(self.settings), fmt, client.owner, "cancel",
                StreamLabels("/v1/chat/completions", request.model), client.address)
        except RUN_ERRORS as exc:
            return run_refusal(exc)
        if request.stream:
            return await stream_once_begun(generation, events, self.settings.sse_heartbeat_seconds)
        return await self._complete(generation, events)

    async def _complete(self, generation: Generation, events: Listener) -> Response:
        body = await whole_reply(generation, events)
        if isinstance(body, ErrorResponse):
            return body
        return Response(body, media_type="application/json", headers={"X-Run-Id": generation.run.id})
