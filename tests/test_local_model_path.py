"""LOCAL_MODEL_PATH: another GGUF, served through the same code path, with the chat template from its own file."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import LiveServer, start_app, stop_process
from tests.support.sse import parse_sse


@pytest.fixture(scope="module")
def other_model_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # The tests cannot download a stronger model: a copy of the embedded file under another name stands in.
    other = tmp_path_factory.mktemp("models") / "my-own-model.Q4_1.gguf"
    shutil.copyfile(model_path, other)
    server = start_app("other-model-server", CHAT_PROVIDER="local", LOCAL_MODEL_PATH=str(other), MAX_TOKENS="8",
                       TEMPERATURE="0")
    yield server
    stop_process(server)


def test_the_file_named_by_local_model_path_is_the_one_that_answers(other_model_server: LiveServer) -> None:
    health = httpx.get(other_model_server.url + "/health", timeout=10).json()
    assert (health["provider"], health["model"]) == ("local", "my-own-model.Q4_1.gguf")
    with httpx.stream("POST", other_model_server.url + "/chat", json={"message": "Hello"}, timeout=60) as response:
        events = parse_sse(response.read().decode())
    done = next(event for event in events if event.event == "done")
    assert done.json()["full_response"] and done.json()["usage"]["completion_tokens"] <= 8
    # The chat template came from the file's metadata: the prompt is the template's (ChatML here), not raw text.
    assert done.json()["usage"]["prompt_tokens"] > len("Hello")
