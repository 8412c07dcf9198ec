"""LOCAL_MODEL_PATH: another GGUF, served through the same code path, with the chat template from its own file."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.support.fixtures import app_fixture
from tests.support.servers import LiveServer
from tests.support.sse import parse_sse


def other_model(request: pytest.FixtureRequest) -> str:
    """The tests cannot download a stronger model: a copy of the embedded file under another name stands in."""
    other: Path = request.getfixturevalue("tmp_path_factory").mktemp("models") / "my-own-model.Q4_1.gguf"
    shutil.copyfile(request.getfixturevalue("model_path"), other)
    return str(other)


other_model_server = app_fixture("other-model-server", CHAT_PROVIDER="local", LOCAL_MODEL_PATH=other_model,
                                 MAX_TOKENS="8", TEMPERATURE="0")


def test_the_file_named_by_local_model_path_is_the_one_that_answers(other_model_server: LiveServer) -> None:
    health = httpx.get(other_model_server.url + "/health", timeout=10).json()
    assert (health["provider"], health["model"]) == ("local", "my-own-model.Q4_1.gguf")
    with httpx.stream("POST", other_model_server.url + "/chat", json={"message": "Hello"}, timeout=60) as response:
        events = parse_sse(response.read().decode())
    done = next(event for event in events if event.event == "done")
    assert done.json()["full_response"] and done.json()["usage"]["completion_tokens"] <= 8
    # The chat template came from the file's metadata: the prompt is the template's (ChatML here), not raw text.
    assert done.json()["usage"]["prompt_tokens"] > len("Hello")
