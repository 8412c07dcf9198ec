"""The tutorial's curl commands, run verbatim with curl against a live server (only host and port differ)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from chains.models.fake import scripted_tokens
from tests.support.sse import parse_sse

RAW_REPLY = re.sub(r"\r\n?", "\n", "".join(scripted_tokens(20)))

# Section 1 and section 3, character for character.
SECTION_1 = 'curl -X POST "http://localhost:8000/chat-token?message=讲个笑话"'
SECTION_3 = '''curl -X POST "http://localhost:8000/chat-conversation" \\
  -H "Content-Type: application/json" \\
  -d '{
    "messages": [
      {"role": "user", "content": "你好"},
      {"role": "assistant", "content": "你好!有什么可以帮助你的吗?"},
      {"role": "user", "content": "讲个笑话"}
    ]
  }\''''
# Sections 2 and 5 show no curl; these are the README's, in the same style (raw UTF-8 in the URL).
CHAT = 'curl -N -X POST "http://localhost:8000/chat?message=讲个笑话&system_prompt=你是一个有用的助手"'
BUFFERED = 'curl -N -X POST "http://localhost:8000/chat-buffered?message=讲个笑话&buffer_size=3"'
TIMEOUT = 'curl -N -X POST "http://localhost:8000/chat-timeout?message=讲个笑话&timeout=30"'


def run_curl(command: str, server_url: str) -> str:
    assert shutil.which("curl"), "curl is needed for these tests"
    command = command.replace("http://localhost:8000", server_url)
    result = subprocess.run(["bash", "-c", command + " --silent --show-error --max-time 30"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode("utf-8")


@pytest.mark.parametrize("command", [SECTION_1, SECTION_3, BUFFERED, TIMEOUT], ids=["1", "3", "5.1", "5.2"])
def test_raw_text_commands(fake_server, command: str) -> None:
    events = parse_sse(run_curl(command, fake_server.url))
    assert "".join(e.data for e in events if e.event == "message") == RAW_REPLY
    assert (events[-1].event, events[-1].data) == ("done", "Completed")


def test_chat_command(fake_server) -> None:
    events = parse_sse(run_curl(CHAT, fake_server.url))
    assert [e.event for e in events][:2] == ["start", "message"]
    assert events[-1].event == "done"
    assert events[-1].json()["full_response"] == "".join(scripted_tokens(20))


def test_section_1_against_the_embedded_model(local_server) -> None:
    events = parse_sse(run_curl(SECTION_1, local_server.url))
    text = "".join(e.data for e in events if e.event == "message")
    assert len([e for e in events if e.event == "message"]) > 1 and text.strip()
    assert events[-1].event == "done"
