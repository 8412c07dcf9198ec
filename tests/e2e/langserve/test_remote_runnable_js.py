"""LangChain.js `RemoteRunnable` (@langchain/core 0.3, pinned in tests/js/package-lock.json) against a live
server: invoke, batch and stream on every chain, as a JS client sends them (`recursionLimit: 25`, a list of
kwargs for /batch, camelCase `runName`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from chains.models.fake import scripted_tokens
from tests.support.servers import ROOT, running_app

JS = ROOT / "tests" / "js"
CHAINS = ("single-turn", "system-prompt", "conversation")
REPLY = "".join(scripted_tokens(20))


@pytest.fixture(scope="module")
def js_results() -> Iterator[dict[str, Any]]:
    node = shutil.which("node")
    assert node is not None, "node is not installed"
    assert (JS / "node_modules" / "@langchain" / "core").is_dir(), \
        "the JS client is not installed: run `make test`, or `cd tests/js && npm ci`"
    with running_app("js-client-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20") as server:
        done = subprocess.run([node, "remote_runnable.mjs", server.url], cwd=JS, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-3000:] + server.output()[-3000:]
        yield json.loads(done.stdout)


def test_the_pinned_client_is_langchain_core_0_3() -> None:
    lock = json.loads((JS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@langchain/core"]["version"].startswith("0.3.")


@pytest.mark.parametrize("chain", CHAINS)
def test_invoke_batch_and_stream(js_results: dict[str, Any], chain: str) -> None:
    result = js_results[chain]
    assert result["invoke"] == REPLY
    assert result["batch"] == [REPLY, REPLY]
    assert len(result["stream"]) > 1 and "".join(result["stream"]) == REPLY


@pytest.mark.parametrize("chain", CHAINS)
def test_labels_are_accepted(js_results: dict[str, Any], chain: str) -> None:
    labelled = js_results[chain]["labelled"]
    assert labelled["invoke"] == REPLY and labelled["batch"] == [REPLY]
    assert "".join(labelled["stream"]) == REPLY


@pytest.mark.parametrize("chain", CHAINS)
def test_a_recursion_limit_the_server_ignores_is_refused(js_results: dict[str, Any], chain: str) -> None:
    refused = js_results[chain]["refused"]
    assert refused is not None and refused.startswith("422") and "recursionLimit" in refused


def test_langchain_js_message_objects(js_results: dict[str, Any]) -> None:
    assert js_results["messageObjects"] == REPLY
