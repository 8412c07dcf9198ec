"""chains.models.fake: the scripted model the tests and benchmarks stand on — its tokens cycle through a script
made to break naive SSE code, paced and failing as asked, the same reply through every LangChain path; and the
settings that select it (chains.models.build_chat_model)."""

from __future__ import annotations

import time

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from chains.common.settings import load_settings
from chains.models import build_chat_model
from chains.models.base import StreamEnd, UsageMeter, usage_meter
from chains.models.fake import SCRIPT, ScriptedChatModel, ScriptedFailure, scripted_tokens

MESSAGES = [SystemMessage("be very brief"), HumanMessage("hello there")]


def test_the_script_cycles_and_holds_what_breaks_naive_sse_code() -> None:
    assert scripted_tokens(0) == []
    assert scripted_tokens(len(SCRIPT) + 2) == [*SCRIPT, SCRIPT[0], SCRIPT[1]]
    text = "".join(SCRIPT)
    assert "\n" in text and "\r\n" in text and not text.isascii()  # newlines, a CR, Chinese and emoji


async def test_its_text_stream_is_the_tokens_then_the_end_with_usage_and_it_counts_as_it_goes() -> None:
    meter = UsageMeter()
    usage_meter.set(meter)
    items = [item async for item in ScriptedChatModel(reply_tokens=5).astream_text(MESSAGES)]
    assert items[:-1] == scripted_tokens(5)
    assert items[-1] == StreamEnd("stop", 5, 5)  # prompt tokens: the words of the messages
    assert (meter.prompt_tokens, meter.completion_tokens) == (5, 5)


async def test_every_langchain_path_gives_the_same_reply() -> None:
    model = ScriptedChatModel(reply_tokens=7)
    expected = "".join(scripted_tokens(7))
    assert (await model.ainvoke(MESSAGES)).content == expected
    assert model.invoke(MESSAGES).content == expected  # the sync path (LangServe's /invoke in a thread)
    assert "".join(str(chunk.content) for chunk in model.stream(MESSAGES)) == expected
    assert "".join([str(chunk.content) async for chunk in model.astream(MESSAGES)]) == expected


async def test_fail_after_raises_after_that_many_tokens() -> None:
    model = ScriptedChatModel(reply_tokens=10, fail_after=3)
    seen: list[object] = []
    with pytest.raises(ScriptedFailure, match="scripted failure after 3 tokens"):
        async for item in model.astream_text(MESSAGES):
            seen.append(item)
    assert seen == scripted_tokens(3)
    with pytest.raises(ScriptedFailure):
        model.invoke(MESSAGES)


async def test_tokens_are_paced_token_delay_ms_apart() -> None:
    started = time.monotonic()
    items = [item async for item in ScriptedChatModel(reply_tokens=4, token_delay_ms=30).astream_text(MESSAGES)]
    assert len(items) == 5 and time.monotonic() - started >= 0.09  # three gaps: none before the first token


def test_the_settings_select_it_as_they_say() -> None:
    model = build_chat_model(load_settings(_env_file=None, chat_provider="fake", fake_reply_tokens=3,
                                           fake_token_delay_ms=2, fake_fail_after=1))
    assert isinstance(model, ScriptedChatModel)
    assert (model.reply_tokens, model.token_delay_ms, model.fail_after) == (3, 2, 1)
