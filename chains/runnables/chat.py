"""The three chat chains: LCEL runnables with typed inputs, knowing nothing about HTTP.

Each ends in `StrOutputParser`, so every chain streams plain text chunks and its output schema is a string:
that is also what LangServe's chat playground needs to recognise the conversation chain's output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import aclosing
from typing import Annotated, Any, Literal, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, ensure_config
from langchain_core.runnables.config import get_async_callback_manager_for_config, patch_config
from langsmith.utils import tracing_is_enabled
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema

from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from chains.models.base import Reasoning, StreamedChatModel, StreamEnd, TextStream, closing
from chains.runnables.limits import conversation_size, user_text, within_limit

Role = Literal["user", "assistant", "system"]
# What a user typed: not blank, at most MAX_INPUT_CHARS.
UserText = Annotated[str, AfterValidator(user_text)]
# Other text (a system prompt, a turn of history): at most MAX_INPUT_CHARS.
BoundedText = Annotated[str, AfterValidator(within_limit)]
# LangServe's chat playground and LangChain's message dicts say human/ai/system.
_ROLE_OF_TYPE: dict[str, Role] = {
    "human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system",
}


class ChatMessage(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="ignore")

    role: Role = Field(description="user, assistant or system (also accepted as `type`: human, ai, system)")
    content: BoundedText

    @model_validator(mode="before")
    @classmethod
    def _accept_langchain_shapes(cls, value: Any) -> Any:
        if isinstance(value, BaseMessage):
            return {"role": _ROLE_OF_TYPE.get(value.type, value.type), "content": value.text}
        if not isinstance(value, dict):
            return value
        role = value.get("role", value.get("type"))
        if isinstance(role, str):  # anything else is left for the field's own validation to refuse
            return {**value, "role": _ROLE_OF_TYPE.get(role, role)}
        return value

    def to_langchain(self) -> BaseMessage:
        match self.role:
            case "user":
                return HumanMessage(self.content)
            case "assistant":
                return AIMessage(self.content)
            case "system":
                return SystemMessage(self.content)


class SystemPromptInput(BaseModel):
    """A message answered under a system prompt."""

    message: UserText = Field(description="the user's message")
    system_prompt: BoundedText | None = Field(
        None, description="instructions for the assistant; default: the server's SYSTEM_PROMPT "
                          f"({DEFAULT_SYSTEM_PROMPT!r} unless changed)")


class ConversationInput(BaseModel):
    """A conversation so far; the assistant answers its last turn."""

    messages: list[ChatMessage] = Field(
        description=(
            "the turns so far, oldest first: {role: user|assistant|system, content}; LangChain's "
            "{type: human|ai|system, content} also works. Optional `system_prompt` (string) beside `messages` "
            "sets the system prompt (default: the server's SYSTEM_PROMPT, out of the box "
            f"{DEFAULT_SYSTEM_PROMPT!r}) unless a system turn is given."
        )
    )
    # Accepted and validated, but left out of the JSON schema on purpose: LangServe's chat playground only
    # renders for an input with a single list key (with two keys it would send the user's text as the
    # second key). The field is documented in `messages`' description above.
    system_prompt: SkipJsonSchema[BoundedText | None] = None

    @model_validator(mode="after")
    def _within_limits(self) -> ConversationInput:
        check_conversation(self.messages, self.system_prompt)
        return self


def check_conversation(messages: list[ChatMessage], system_prompt: str | None) -> None:
    """At most MAX_MESSAGES turns and MAX_INPUT_CHARS in all, and something to answer."""
    conversation_size(len(messages), sum(len(m.content) for m in messages) + len(system_prompt or ""))
    if not messages:
        raise ValueError("messages: give at least one turn")
    if not any(m.content.strip() for m in messages if m.role == "user"):
        raise ValueError("messages: no user turn has any text")


def _single_turn_messages(message: str) -> list[BaseMessage]:
    return [HumanMessage(message)]


def _system_prompt_messages(default_system_prompt: str) -> Callable[[Any], list[BaseMessage]]:
    def messages(request: dict[str, Any] | SystemPromptInput) -> list[BaseMessage]:
        if not isinstance(request, SystemPromptInput):
            request = SystemPromptInput.model_validate(request)
        return [SystemMessage(request.system_prompt or default_system_prompt), HumanMessage(request.message)]

    return messages


def _conversation_messages(default_system_prompt: str) -> Callable[[Any], list[BaseMessage]]:
    def messages(conversation: dict[str, Any] | ConversationInput) -> list[BaseMessage]:
        if not isinstance(conversation, ConversationInput):
            conversation = ConversationInput.model_validate(conversation)
        turns = [turn.to_langchain() for turn in conversation.messages]
        if conversation.system_prompt is not None or not any(isinstance(t, SystemMessage) for t in turns):
            turns.insert(0, SystemMessage(conversation.system_prompt or default_system_prompt))
        return turns

    return messages


class ChatChain(Runnable[Any, str]):
    """`prompt | model | StrOutputParser()` as an LCEL sequence, with a direct streaming path.

    Streamed through LangChain's runnable machinery, every token costs tens of microseconds: callback managers,
    chunk copies and accumulation in each of the sequence's three steps. When nobody listens (no callbacks, no
    tracing: `/chat`, `RemoteRunnable.astream` without events), `astream` and `astream_text` take the model's
    own token stream instead (plain text from our models), which yields the same tokens. With callbacks
    (LangServe's `/stream_log`, `/stream_events`, its `/stream`, a tracer) everything runs through the sequence
    as usual, and `astream_text` reports one run for the chain with the model's run inside it.
    """

    def __init__(self, prompt: Callable[[Any], list[BaseMessage]], model: BaseChatModel, input_type: Any,
                 name: str, model_params: Mapping[str, Any] | None = None) -> None:
        self.prompt = prompt
        self.model = model
        self.name = name
        self.input_type = input_type
        # Passed to every call of the model (max_tokens, temperature, stop, seed: what a request may set).
        self.model_params: dict[str, Any] = dict(model_params or {})
        bound = model.bind(**self.model_params) if self.model_params else model
        self.sequence = (RunnableLambda(prompt, name=f"{name}_prompt") | bound | StrOutputParser()).with_types(
            input_type=input_type, output_type=str)

    def with_model_params(self, **params: Any) -> ChatChain:
        """This chain with `params` passed to each call of its model, for one request: the keyword arguments
        LangChain's chat models take per call (`max_tokens`, `temperature`, `stop`, `seed`; a provider ignores
        what it does not know). The chain itself is left as it is."""
        return ChatChain(self.prompt, self.model, self.input_type, self.get_name(),
                         {**self.model_params, **params})

    @property
    def InputType(self) -> Any:
        return self.sequence.InputType

    @property
    def OutputType(self) -> type[str]:
        return str

    # LangChain types a sequence's schemas as pydantic v1 or v2 models; ours are built from v2 models only.
    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return cast(type[BaseModel], self.sequence.get_input_schema(config))

    def get_output_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return cast(type[BaseModel], self.sequence.get_output_schema(config))

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        return self.sequence.invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        return await self.sequence.ainvoke(input, config, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[str]:
        yield from self.sequence.stream(input, config, **kwargs)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[str]:
        if _observed(config):
            async with closing(self.sequence.astream(input, config, **kwargs)) as texts:
                async for text in texts:
                    yield text
            return
        async with aclosing(self.astream_text(input, config)) as items:
            async for item in items:
                if not isinstance(item, (StreamEnd, Reasoning)):  # the answer's text: not its reasoning, not its end
                    yield item

    def astream_text(self, input: Any, config: RunnableConfig | None = None) -> TextStream:
        """The reply's text token by token (non-empty `str`s), then one `StreamEnd`: usage and finish reason. Our
        models' own stream is returned as it is: no generator of ours between it and the streaming core."""
        if _observed(config):
            return _text_of_chunks(self._astream_observed(input, config))
        if isinstance(self.model, StreamedChatModel):  # ours: plain text, no chunk object per token
            return self.model.astream_text(self.prompt(input), **self.model_params)
        return _text_of_chunks(_messages_of(self.model._astream(self.prompt(input), **self.model_params)))

    async def _astream_observed(self, input: Any, config: RunnableConfig | None) -> AsyncIterator[AIMessageChunk]:
        """`astream_text` when something listens: a run for this chain (its name, the chain input in, the reply
        text out) with the model's run as its child, through LangChain's callbacks (a tracer, LangServe's
        callbacks). However the stream stops — done, failed, closed by its consumer, cancelled — the chain's run
        ends: a stop is reported to the callbacks as the chain's error, the way the model reports its own."""
        config = ensure_config(config)
        manager = get_async_callback_manager_for_config(config)
        run = await manager.on_chain_start(
            None, input.model_dump() if isinstance(input, BaseModel) else input,
            name=config.get("run_name") or self.name, run_id=config.pop("run_id", None))
        texts: list[str] = []
        try:
            messages = self.prompt(input)
            model_config = patch_config(config, callbacks=run.get_child())
            async with closing(self.model.astream(messages, model_config, **self.model_params)) as chunks:
                async for chunk in chunks:
                    if chunk.content:
                        texts.append(chunk.text)
                    yield chunk
        except BaseException as exc:  # GeneratorExit (closed) and CancelledError included: the run still ends
            await run.on_chain_error(exc)
            raise
        await run.on_chain_end("".join(texts))


async def _messages_of(generations: AsyncIterator[ChatGenerationChunk]) -> AsyncIterator[AIMessageChunk]:
    """A LangChain model's own chunks as messages. ChatOpenAI reports its finish reason in `generation_info`;
    LangChain's astream merges it into the message's metadata, and so does this shortcut past it."""
    async with closing(generations) as stream:
        async for generation in stream:
            message = cast(AIMessageChunk, generation.message)  # a chat model's stream: its chunks are messages
            if generation.generation_info:
                message.response_metadata = {**generation.generation_info, **message.response_metadata}
            yield message


async def _text_of_chunks(chunks: AsyncIterator[AIMessageChunk]) -> TextStream:
    """Message chunks as a text stream: each chunk's reasoning (`additional_kwargs["reasoning_content"]`, where
    LangChain's integrations for reasoning models put it) as a `Reasoning` piece, its text, then their usage and
    finish reason as one `StreamEnd` (a provider may report them on different chunks, or not at all)."""
    finish_reason: str | None = None
    usage: UsageMetadata | None = None
    async with closing(chunks) as stream:
        async for chunk in stream:
            reasoning = chunk.additional_kwargs.get("reasoning_content") if chunk.additional_kwargs else None
            if reasoning and isinstance(reasoning, str):
                yield Reasoning(reasoning)
            content = chunk.content
            if content:
                yield content if content.__class__ is str else str(chunk.text)  # a plain str: the answer's text
            if chunk.usage_metadata:
                usage = chunk.usage_metadata
            if chunk.response_metadata:
                finish_reason = chunk.response_metadata.get("finish_reason") or finish_reason
    if usage is None:
        yield StreamEnd(finish_reason)
        return
    reasoning_tokens = (usage.get("output_token_details") or {}).get("reasoning")
    yield StreamEnd(finish_reason, usage["input_tokens"], usage["output_tokens"], reasoning_tokens)


def _observed(config: RunnableConfig | None) -> bool:
    """Whether anything listens to this run: callbacks in the config (or inherited), or tracing."""
    return bool(ensure_config(config).get("callbacks")) or bool(tracing_is_enabled())


def single_turn_chain(model: BaseChatModel, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> ChatChain:
    """The user's message (a string) in, the assistant's text out (no system prompt)."""
    return ChatChain(_single_turn_messages, model, UserText, "single_turn")


def system_prompt_chain(model: BaseChatModel, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> ChatChain:
    """`{message, system_prompt?}` in, the assistant's text out; `system_prompt` when the input has none."""
    # The input schema shows this server's default (LangServe's playground fills the field with it).
    input_type = create_model("SystemPromptInput", __base__=SystemPromptInput, system_prompt=(
        BoundedText, Field(system_prompt, description="instructions for the assistant")))
    return ChatChain(_system_prompt_messages(system_prompt), model, input_type, "system_prompt")


def conversation_chain(model: BaseChatModel, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> ChatChain:
    """`{messages, system_prompt?}` in, the assistant's next turn (text) out."""
    return ChatChain(_conversation_messages(system_prompt), model, ConversationInput, "conversation")


ChainFactory = Callable[[BaseChatModel, str], ChatChain]

# Mount path → factory. The order is the order of the routes in /docs.
CHAINS: dict[str, ChainFactory] = {
    "single-turn": single_turn_chain,
    "system-prompt": system_prompt_chain,
    "conversation": conversation_chain,
}


def build_chains(model: BaseChatModel, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict[str, ChatChain]:
    """Every chain over one model, by mount path."""
    return {name: make_chain(model, system_prompt) for name, make_chain in CHAINS.items()}
