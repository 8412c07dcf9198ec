"""chains.runnables.chat in-process: the three chains' inputs (LangChain's message shapes accepted), the messages
each gives the model, the direct text stream and the observed one yielding the same reply, per-request model
parameters, and a LangChain model that is not ours streamed through the same interface."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import Field, ValidationError

from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from chains.models.base import StreamEnd
from chains.models.fake import ScriptedChatModel, scripted_tokens
from chains.runnables.chat import CHAINS, ChatMessage, ConversationInput, SystemPromptInput, build_chains


class Recording(ScriptedChatModel):
    """The scripted model, keeping the messages and the per-call parameters of each stream."""

    calls: list[tuple[list[BaseMessage], dict[str, Any]]] = Field(default_factory=list)

    async def astream_text(self, messages: list[BaseMessage], stop: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.calls.append((messages, {**kwargs, **({"stop": stop} if stop else {})}))
        async for item in super().astream_text(messages, stop, **kwargs):
            yield item


async def text_of(stream: Any) -> tuple[str, StreamEnd]:
    items = [item async for item in stream]
    assert isinstance(items[-1], StreamEnd) and all(isinstance(item, str) and item for item in items[:-1])
    return "".join(items[:-1]), items[-1]


# --- inputs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "role"), [
    ({"role": "user", "content": "x"}, "user"), ({"type": "human", "content": "x"}, "user"),
    ({"role": "ai", "content": "x"}, "assistant"), ({"type": "system", "content": "x"}, "system"),
    (HumanMessage("x"), "user"), (AIMessage("x"), "assistant"), (SystemMessage("x"), "system"),
    ({"role": "user", "content": "x", "name": "ignored", "id": 7}, "user"),
])
def test_a_turn_is_taken_in_our_shape_or_langchains(given: Any, role: str) -> None:
    message = ChatMessage.model_validate(given)
    assert (message.role, message.content) == (role, "x")
    assert ChatMessage.model_validate(message.to_langchain()) == message  # and back


@pytest.mark.parametrize("given", [{"role": "tool", "content": "x"}, {"content": "x"}, {"role": 3, "content": "x"},
                                   {"role": "user"}, "just text"])
def test_anything_else_is_refused(given: Any) -> None:
    with pytest.raises(ValidationError):
        ChatMessage.model_validate(given)


def test_a_conversation_needs_something_to_answer() -> None:
    with pytest.raises(ValidationError, match="give at least one turn"):
        ConversationInput(messages=[])
    with pytest.raises(ValidationError, match="no user turn has any text"):
        ConversationInput.model_validate({"messages": [{"role": "user", "content": " "},
                                                       {"role": "assistant", "content": "hi"}]})


def test_the_system_prompt_chains_schema_shows_the_servers_default() -> None:
    chains = build_chains(ScriptedChatModel(), "be brief")
    schema = chains["system-prompt"].get_input_schema().model_json_schema()
    assert schema["properties"]["system_prompt"]["default"] == "be brief"
    assert list(chains) == list(CHAINS) == ["single-turn", "system-prompt", "conversation"]
    assert "system_prompt" not in chains["conversation"].get_input_schema().model_json_schema()["properties"]


# --- the messages each chain gives the model ------------------------------------------------------------------

async def messages_given(chain: str, chain_input: Any, system_prompt: str = "server prompt") -> list[Any]:
    model = Recording(reply_tokens=1)
    await build_chains(model, system_prompt)[chain].ainvoke(chain_input)
    [(messages, _)] = model.calls
    return [(type(m).__name__, m.content) for m in messages]


async def test_single_turn_is_the_message_alone() -> None:
    assert await messages_given("single-turn", "hi") == [("HumanMessage", "hi")]


async def test_system_prompt_is_the_given_prompt_or_the_servers() -> None:
    assert await messages_given("system-prompt", {"message": "hi", "system_prompt": "mine"}) == [
        ("SystemMessage", "mine"), ("HumanMessage", "hi")]
    assert await messages_given("system-prompt", SystemPromptInput(message="hi")) == [
        ("SystemMessage", "server prompt"), ("HumanMessage", "hi")]
    assert await messages_given("system-prompt", {"message": "hi"}, DEFAULT_SYSTEM_PROMPT) == [
        ("SystemMessage", DEFAULT_SYSTEM_PROMPT), ("HumanMessage", "hi")]


async def test_a_conversation_gets_the_servers_prompt_unless_it_has_a_system_turn() -> None:
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert await messages_given("conversation", {"messages": turns}) == [
        ("SystemMessage", "server prompt"), ("HumanMessage", "a"), ("AIMessage", "b"), ("HumanMessage", "c")]
    own = [{"role": "system", "content": "own"}, {"role": "user", "content": "a"}]
    assert await messages_given("conversation", {"messages": own}) == [("SystemMessage", "own"), ("HumanMessage", "a")]
    assert await messages_given("conversation", {"messages": turns[:1], "system_prompt": "given"}) == [
        ("SystemMessage", "given"), ("HumanMessage", "a")]


# --- streaming ------------------------------------------------------------------------------------------------

class Listening(AsyncCallbackHandler):
    """A callback handler, as LangServe's /stream_log or a tracer adds one: what runs it saw start and end."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[Any] = []
        self.errors: list[BaseException] = []

    async def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.started.append(kwargs.get("name") or "")

    async def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.ended.append(outputs)

    async def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.errors.append(error)


async def test_the_direct_stream_and_the_observed_one_are_the_same_reply() -> None:
    chain = build_chains(ScriptedChatModel(reply_tokens=9))["system-prompt"]
    direct, direct_end = await text_of(chain.astream_text({"message": "hi"}))
    listening = Listening()
    observed, observed_end = await text_of(chain.astream_text({"message": "hi"}, {"callbacks": [listening]}))
    assert direct == observed == "".join(scripted_tokens(9)) == await chain.ainvoke({"message": "hi"})
    assert direct_end == observed_end and (direct_end.finish_reason, direct_end.completion_tokens) == ("stop", 9)
    assert listening.started[0] == "system_prompt" and listening.ended[-1] == observed  # one run for the chain
    assert "".join([text async for text in chain.astream({"message": "hi"})]) == direct  # LangServe's /stream


async def test_an_observed_stream_closed_early_still_ends_its_run() -> None:
    chain = build_chains(ScriptedChatModel(reply_tokens=100))["single-turn"]
    listening = Listening()
    stream = chain.astream_text("hi", {"callbacks": [listening]})
    await anext(stream)
    await stream.aclose()  # a client that left
    assert listening.started[0] == "single_turn" and len(listening.errors) == 1


async def test_per_request_parameters_reach_the_model_and_leave_the_chain_as_it_was() -> None:
    model = Recording(reply_tokens=1)
    chain = build_chains(model)["single-turn"]
    tuned = chain.with_model_params(max_tokens=5, temperature=0.2)
    await text_of(tuned.with_model_params(seed=3).astream_text("hi"))
    await text_of(chain.astream_text("hi"))
    assert [params for _, params in model.calls] == [{"max_tokens": 5, "temperature": 0.2, "seed": 3}, {}]
    assert chain.model_params == {} and tuned.model_params == {"max_tokens": 5, "temperature": 0.2}


async def test_a_langchain_model_that_is_not_ours_streams_through_the_same_interface() -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage("hello there world")]))
    chain = build_chains(model)["single-turn"]
    text, end = await text_of(chain.astream_text("hi"))
    assert text == "hello there world"
    assert end == StreamEnd(None, None, None)  # it reports no usage or finish reason: none is made up
