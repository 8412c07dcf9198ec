"""LANGSMITH_TRACING=true: the chains' runs reach LangSmith with their inputs and outputs. LangSmith is a
loopback receiver (tests/langsmith_receiver.py) named by LANGSMITH_ENDPOINT."""

from __future__ import annotations

import base64
import time

import httpx

from tests.support.servers import start_app, start_upstream, stop_process

MESSAGE = "langsmith-probe-question"


def decoded(entry: dict[str, str]) -> bytes:
    body = base64.b64decode(entry["body"])
    if entry["encoding"] == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


def test_langsmith_receives_the_chains_runs_with_inputs_and_outputs() -> None:
    receiver = start_upstream("tests.langsmith_receiver:app", "langsmith-receiver")
    server = start_app("langsmith-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="5", LANGSMITH_TRACING="true",
                       LANGSMITH_ENDPOINT=receiver.url, LANGSMITH_API_KEY="lsv2-test", LANGSMITH_PROJECT="chains-test")
    try:
        response = httpx.post(server.url + "/chat", json={"message": MESSAGE}, timeout=20)
        assert "event: done" in response.text
        reply = response.text.split('"full_response":"', 1)[1].split('"', 1)[0]
        deadline = time.monotonic() + 20  # the client sends in the background, batched
        bodies = b""
        while time.monotonic() < deadline:
            bodies = b"".join(decoded(entry) for entry in httpx.get(receiver.url + "/_received").json())
            if MESSAGE.encode() in bodies and b'"generations"' in bodies:
                break
            time.sleep(0.3)
        # Multipart parts named <post|patch>.<run id>.inputs / .outputs: the run's input messages, then its reply.
        inputs = [part for part in bodies.split(b"\r\n--") if b'.inputs"' in part.split(b"\r\n\r\n")[0]]
        outputs = [part for part in bodies.split(b"\r\n--") if b'.outputs"' in part.split(b"\r\n\r\n")[0]]
        assert any(MESSAGE.encode() in part for part in inputs)
        assert any(reply.replace("\\n", "").encode() in part and b'"generations"' in part for part in outputs)
    finally:
        stop_process(server)
        stop_process(receiver)
