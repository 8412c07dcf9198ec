"""The chains' prompts, in-process: the server's SYSTEM_PROMPT is the default, a request's own prompt wins."""

from __future__ import annotations

import subprocess
import sys

from langchain_core.messages import HumanMessage, SystemMessage

from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from chains.models.fake import ScriptedChatModel
from chains.runnables.chat import (
    conversation_chain,
    single_turn_chain,
    system_prompt_chain,
)
from tests.support.servers import ROOT, clean_env

MODEL = ScriptedChatModel(reply_tokens=3)


def test_the_configured_system_prompt_is_the_default_and_a_requests_own_wins() -> None:
    chain = system_prompt_chain(MODEL, "Answer in English.")
    assert chain.prompt({"message": "hi"}) == [SystemMessage("Answer in English."), HumanMessage("hi")]
    assert chain.prompt({"message": "hi", "system_prompt": "Be brief."})[0] == SystemMessage("Be brief.")
    conversation = conversation_chain(MODEL, "Answer in English.")
    turns = conversation.prompt({"messages": [{"role": "user", "content": "hi"}]})
    assert turns == [SystemMessage("Answer in English."), HumanMessage("hi")]
    # A system turn in the conversation is the conversation's own: no default is added before it.
    own = conversation.prompt({"messages": [{"role": "system", "content": "Pirate talk."},
                                            {"role": "user", "content": "hi"}]})
    assert own == [SystemMessage("Pirate talk."), HumanMessage("hi")]
    assert single_turn_chain(MODEL, "ignored").prompt("hi") == [HumanMessage("hi")]


def test_out_of_the_box_the_default_is_the_tutorials() -> None:
    assert system_prompt_chain(MODEL).prompt({"message": "hi"})[0] == SystemMessage(DEFAULT_SYSTEM_PROMPT)
    assert DEFAULT_SYSTEM_PROMPT == "你是一个有用的助手"


def test_the_server_reads_system_prompt_from_the_environment_and_tells_the_pages() -> None:
    script = ("from fastapi.testclient import TestClient; import server; "
              "print(TestClient(server.app).get('/chat/defaults').json()['system_prompt'])")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=clean_env(CHAT_PROVIDER="fake", SYSTEM_PROMPT="Answer in English."))
    assert result.stdout.strip().splitlines()[-1] == "Answer in English.", result.stderr
