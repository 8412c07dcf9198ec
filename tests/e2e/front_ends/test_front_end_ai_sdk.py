"""The fourth typewriter chat, /playground/ai-sdk/: a React page on the Vercel AI SDK's `useChat` (@ai-sdk/react
4.0.177, pinned in playground/package.json) against POST /api/chat, in headless Chromium, through the same
data-testid hooks as the other front ends (tests/support/front_end_chat.py): typing, streaming token by token, Stop
(the SDK's `stop`, and the run cancelled on the server), a reload re-attaching to the run (`resume: true`: GET
/api/chat/{id}/stream), a cut connection rejoined (`resumeStream`), the thinking block, markdown rendered by
shared/markdown.js and the model's text never run.

The page reaches the server through tests/support/cut_proxy.py where a test cuts the connection. Needs
`make playground` (the Vite build).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, Response, expect

from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from chains.models.fake import scripted_reasoning, scripted_tokens
from tests.e2e.front_ends.test_front_end_markdown import RECORD_MARKDOWN_STATES, XSS_STATE, assert_states_never_garbled
from tests.support.browser import squash
from tests.support.cut_proxy import CutProxy
from tests.support.fixtures import app_fixture, pointed_at, upstream_fixture
from tests.support.front_end_chat import Chat, body_text
from tests.support.markdown_upstream import CODE, XSS_FLAGS
from tests.support.markdown_upstream import REPLY as MARKDOWN_REPLY
from tests.support.servers import ARTIFACTS, ROOT, LiveServer
from tests.support.sse import parse_sse

PATH = "/playground/ai-sdk/"
TOKENS = 100
REPLY = "".join(scripted_tokens(TOKENS))  # the runs server's reply: 100 tokens 50 ms apart, ~5 s
RECONNECTING = "Connection lost: reconnecting…"
STORE_KEY = "ai-sdk-chat:" + PATH
# Stop cancels the chat's latest reply by the chat's id (the page may not know the run yet).
CANCEL = re.compile(r"/api/chat/([A-Za-z0-9_.~-]{1,128})/cancel$")
RESUME = re.compile(r"/api/chat/([A-Za-z0-9_.~-]+)/stream$")
REASONING_TOKENS = 9  # the whole REASONING_SCRIPT, its <img onerror> included
INJECTED = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    assert (ROOT / "playground" / "ai-sdk" / "dist" / "index.html").is_file(), "run `make playground` first"


runs_server = app_fixture("fe-ai-sdk-runs-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS=str(TOKENS),
                          FAKE_TOKEN_DELAY_MS="50")
short_server = app_fixture("fe-ai-sdk-short-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="8",
                           FAKE_TOKEN_DELAY_MS="150")
thinking_server = app_fixture("fe-ai-sdk-thinking-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="6",
                              FAKE_REASONING_TOKENS=str(REASONING_TOKENS), FAKE_TOKEN_DELAY_MS="150")
failing_ui_server = app_fixture("fe-ai-sdk-failing-server", CHAT_PROVIDER="fake", FAKE_FAIL_AFTER="3",
                                FAKE_TOKEN_DELAY_MS="50")
markdown_upstream = upstream_fixture("tests.support.markdown_upstream:app", "fe-ai-sdk-markdown-upstream")
markdown_server = app_fixture("fe-ai-sdk-markdown-server", **pointed_at("markdown_upstream", "markdown"))


@pytest.fixture
def proxy(runs_server: LiveServer) -> Iterator[CutProxy]:
    proxy = CutProxy(runs_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def dialogs(page: Page) -> list[str]:
    opened: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        opened.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", dismiss)
    return opened


class SdkChat(Chat):
    """The page, with what went over the wire to /api/chat."""

    def __init__(self, page: Page, server: Any) -> None:
        super().__init__(page, server, PATH)
        self.api_url = server.url + "/api/chat"

    def posts(self) -> list[Any]:
        return [r for r in self.requests if r.method == "POST" and r.url == self.api_url]

    def bodies(self) -> list[Any]:
        return [r.post_data_json for r in self.posts()]

    def answers(self) -> list[Response]:
        return [r for r in self.responses if r.request.method == "POST" and r.url == self.api_url]

    def resumes(self) -> list[Response]:
        return [r for r in self.responses if RESUME.search(r.url)]

    def run_id(self, index: int = -1) -> str:
        return self.answers()[index].headers["x-run-id"]


# RECORD_REPLY_STATES (tests/support/front_end_chat.py) from the page's very start, before the app has rendered: the
# text of the last reply after every change of the document.
RECORD_FROM_LOAD = """
window.__replyStates = [];
new MutationObserver(() => {
  const texts = document.querySelectorAll('[data-testid=message][data-role=assistant] [data-testid=message-text]');
  if (!texts.length) return;
  const text = texts[texts.length - 1].textContent;
  const states = window.__replyStates;
  if (states[states.length - 1] !== text) states.push(text);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def generations(server: LiveServer) -> int:
    return httpx.get(server.url + "/health", timeout=10).json()["runs"]["started"]


def run_state(server: LiveServer, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/chat/runs/{run_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def kept(server: LiveServer, run_id: str) -> tuple[str, list[dict[str, Any]]]:
    """The run as the server keeps it (the whole run, followed to its end if it still runs): its text, its chunks."""
    response = httpx.get(f"{server.url}/chat/runs/{run_id}/stream", timeout=30)
    assert response.status_code == 200, response.text
    chunks = [e.json() for e in parse_sse(response.text) if e.data != "[DONE]"]
    return "".join(c["delta"] for c in chunks if c["type"] == "text-delta"), chunks


def wait_until(condition: Any, what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def real_errors(chat: Chat) -> list[str]:
    """Console errors but Chromium's own line for each request the cut or the refusing proxy failed."""
    return [m for m in chat.console_errors if not m.startswith("Failed to load resource")]


def expect_complete_reply(chat: SdkChat, text: str = REPLY, tokens: int = TOKENS) -> None:
    reply = chat.wait_for_reply_end(timeout=45_000)
    expect(reply).to_have_attribute("data-status", "done")
    expect(reply.get_by_test_id("reconnecting")).to_have_count(0)
    assert chat.reply_html() == chat.rendered(text)["html"]  # the exact full reply, nothing lost or repeated
    expect(reply.get_by_test_id("stats")).to_have_attribute("data-token-count", str(tokens))
    chat.expect_idle()


def user_text(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


# --- streaming -----------------------------------------------------------------------------------------------------

def test_typing_streams_the_reply_token_by_token(short_server: LiveServer, page: Page) -> None:
    chat = SdkChat(page, short_server).open()
    expect(chat.system_prompt).to_have_value(DEFAULT_SYSTEM_PROMPT)  # the server's default, from /chat/defaults
    expect(page.get_by_role("link", name="AI SDK")).to_have_attribute("aria-current", "page")
    # On load, useChat({resume: true}) asked for the chat's active run: there is none.
    wait_until(lambda: len(chat.resumes()) == 1, "the resume on load")
    assert chat.resumes()[0].status == 204
    # Typed as a person types: Shift+Enter is a new line, Enter sends.
    chat.input.click()
    page.keyboard.type("讲个")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("笑话")
    expect(chat.input).to_have_value("讲个\n笑话")
    page.keyboard.press("Enter")

    chat.wait_for_reply_length(1)
    expect(chat.reply()).to_have_attribute("data-status", "streaming")
    expect(chat.reply().get_by_test_id("cursor")).to_be_visible()
    expect(chat.input).to_be_disabled()
    expect(chat.input).to_have_value("")
    expect(chat.send_button).to_be_disabled()
    expect(chat.stop_button).to_be_enabled()
    expect(page.get_by_test_id("messages")).to_have_attribute("aria-busy", "true")

    reply = chat.wait_for_reply_end()
    expect(reply).to_have_attribute("data-status", "done")
    full = "".join(scripted_tokens(8))
    run_id = chat.run_id()
    text, chunks = kept(short_server, run_id)
    assert text == full and run_state(short_server, run_id)["status"] == "completed"
    assert squash(chat.reply_text()) == squash(full)
    assert chat.reply_html() == chat.rendered(full)["html"]
    expect(reply).to_have_attribute("data-message-id", "msg_" + run_id)
    expect(reply.get_by_test_id("stats")).to_have_attribute("data-token-count", "8")
    expect(reply.get_by_test_id("stats")).to_have_text("8 tokens")
    # What the page read was the UI message stream, the same chunks as the run keeps.
    answer = chat.answers()[0]
    assert answer.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert [e.json() for e in parse_sse(body_text(answer)) if e.data != "[DONE]"] == chunks

    # It grew token by token: several states, each a prefix of the next.
    states = [squash(s) for s in chat.reply_states() if s]
    states = [s for i, s in enumerate(states) if not i or s != states[i - 1]]
    assert len(states) >= 3, states
    assert states[-1] == squash(full)
    assert all(b.startswith(a) and len(b) > len(a) for a, b in pairwise(states)), states
    chat.expect_idle()
    assert chat.active_testid() == "input", "focus goes back to the message box"

    # The request is the SDK's: the chat's id, the system prompt as a system message, the user's message as parts.
    [body] = chat.bodies()
    assert body["trigger"] == "submit-message" and isinstance(body["id"], str) and body["id"]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert user_text(body["messages"][0]) == DEFAULT_SYSTEM_PROMPT
    assert user_text(body["messages"][1]) == "讲个\n笑话"
    expect(chat.messages.first.get_by_test_id("message-text")).to_have_text("讲个\n笑话")

    # A second turn carries the first, as the SDK keeps it, and a changed system prompt.
    chat.system_prompt.fill("Answer in one sentence.")
    chat.send("second question")
    expect(chat.replies).to_have_count(2)
    expect(chat.wait_for_reply_end(2)).to_have_attribute("data-status", "done")
    second = chat.bodies()[-1]
    assert second["id"] == body["id"]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert user_text(second["messages"][0]) == "Answer in one sentence."
    assert user_text(second["messages"][2]) == full and second["messages"][2]["id"] == "msg_" + run_id
    expect(chat.messages).to_have_count(4)

    # New chat: a new id, nothing carried over.
    page.get_by_test_id("clear").click()
    expect(chat.messages).to_have_count(0)
    chat.send("fresh start")
    chat.wait_for_reply_end(1)
    fresh = chat.bodies()[-1]
    assert fresh["id"] != body["id"] and [m["role"] for m in fresh["messages"]] == ["system", "user"]
    assert not chat.failed and not chat.page_errors and not chat.console_errors, (chat.failed, chat.console_errors)


def test_a_failure_is_shown_as_a_server_error(failing_ui_server: LiveServer, page: Page) -> None:
    chat = SdkChat(page, failing_ui_server).open()
    chat.send("hello")
    reply = chat.wait_for_reply_end()
    expect(reply).to_have_attribute("data-status", "error")
    error = reply.get_by_test_id("error")
    expect(error).to_have_attribute("data-kind", "server")
    _, chunks = kept(failing_ui_server, chat.run_id())
    assert chunks[-1]["type"] == "error"
    expect(error).to_have_text("Server error: " + chunks[-1]["errorText"])
    assert squash(chat.reply_text()) == squash("".join(scripted_tokens(3)))  # what came before the failure
    chat.expect_idle()
    assert not chat.page_errors


# --- Stop, reload, cut ---------------------------------------------------------------------------------------------

def test_stop_cancels_the_run(runs_server: LiveServer, page: Page) -> None:
    before = generations(runs_server)
    chat = SdkChat(page, runs_server).open()
    chat.send("tell me a long story")
    chat.wait_for_reply_length(15)
    chat.stop_button.click()

    reply = chat.reply()
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.get_by_test_id("stopped")).to_have_text("Stopped: partial reply")
    chat.expect_idle()
    run_id = chat.run_id()
    cancels = [r for r in chat.requests if CANCEL.search(r.url)]
    assert [r.method for r in cancels] == ["POST"]
    chat_id = CANCEL.search(cancels[0].url)[1]  # type: ignore[index]
    assert [r for r in chat.requests if r.url.endswith("/api/chat") and r.method == "POST"][-1].post_data_json[
        "id"] == chat_id  # the chat whose reply it was
    # The server ended the run as cancelled, long before its 100 tokens (a run left to its 30 s grace would have
    # run on to the end); the page shows what it had got of it.
    wait_until(lambda: run_state(runs_server, run_id)["status"] == "cancelled", "the run to be cancelled", 5)
    text, chunks = kept(runs_server, run_id)
    assert chunks[-1]["type"] == "abort" and 0 < len(text) < len(REPLY)
    shown = chat.reply_text()
    assert squash(text).startswith(squash(shown)) and len(shown) >= 15
    page.wait_for_timeout(500)
    assert chat.reply_text() == shown, "tokens kept arriving after Stop"
    assert generations(runs_server) - before == 1
    assert httpx.get(runs_server.url + "/health").json()["runs"]["live"] == 0

    # The partial reply stays in the history the SDK sends next; Esc stops too.
    chat.send("go on")
    chat.wait_for_reply_length(5)
    history = chat.bodies()[-1]["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    page.keyboard.press("Escape")
    expect(chat.reply()).to_have_attribute("data-status", "stopped")
    chat.expect_idle()
    wait_until(lambda: run_state(runs_server, chat.run_id())["status"] == "cancelled", "the second cancel", 5)
    assert not chat.page_errors and not chat.console_errors


def test_reload_mid_reply_resumes_the_run(runs_server: LiveServer, proxy: CutProxy, page: Page) -> None:
    before = generations(runs_server)
    chat = SdkChat(page, SimpleNamespace(url=proxy.url)).open()
    chat.system_prompt.fill("Answer at length.")
    chat.send("tell me a long story")
    chat.wait_for_reply_length(15)
    run_id = chat.run_id()
    chat_id = chat.bodies()[0]["id"]

    page.add_init_script(RECORD_FROM_LOAD)
    page.reload()
    # The conversation is back, and the reply re-attached to its run (useChat's resume: GET /api/chat/{id}/stream),
    # replayed from its start and followed to its end.
    expect(chat.messages).to_have_count(2)
    expect(chat.messages.first.get_by_test_id("message-text")).to_have_text("tell me a long story")
    expect(chat.system_prompt).to_have_value("Answer at length.")
    expect_complete_reply(chat)
    assert generations(runs_server) - before == 1, "the reload started a second generation"
    resumes = chat.resumes()
    assert [RESUME.search(r.url)[1] for r in resumes] == [chat_id, chat_id]  # the first page's, then the reload's
    assert [r.status for r in resumes] == [204, 200]
    assert resumes[1].headers["x-run-id"] == run_id
    assert not [r for r in chat.requests if CANCEL.search(r.url)], "leaving the page cancelled the run"
    assert run_state(runs_server, run_id)["status"] == "completed"
    expect(chat.reply()).to_have_attribute("data-message-id", "msg_" + run_id)
    # From the reload on, the reply only grew: the part shown before it, then the replay once it had caught up with
    # that (the SDK rebuilds a resumed reply from nothing), then the rest; never blank, never shorter.
    states = [squash(s) for s in chat.reply_states()]
    assert states and states[0] and states[-1] == squash(REPLY), states
    assert all(b.startswith(a) for a, b in pairwise(states)), states
    record = json.loads(page.evaluate(f"sessionStorage.getItem({json.dumps(STORE_KEY)})"))
    assert record["id"] == chat_id and record["busy"] is False

    # The conversation goes on from the resumed history.
    chat.send("go on")
    chat.wait_for_reply_length(5)
    history = chat.bodies()[-1]["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert user_text(history[0]) == "Answer at length." and user_text(history[2]) == REPLY
    chat.stop_button.click()
    expect(chat.reply()).to_have_attribute("data-status", "stopped")
    assert not chat.page_errors and not real_errors(chat)


def test_connection_cut_mid_reply_is_rejoined_and_the_reply_finishes(runs_server: LiveServer, proxy: CutProxy,
                                                                     page: Page) -> None:
    before = generations(runs_server)
    chat = SdkChat(page, SimpleNamespace(url=proxy.url)).open()
    chat.send("tell me a long story")
    chat.wait_for_reply_length(15)

    assert proxy.cut(refuse=True) >= 1  # the network goes down mid-reply, and stays down a while
    reply = chat.reply()
    expect(reply.get_by_test_id("reconnecting")).to_have_text(RECONNECTING)
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(chat.stop_button).to_be_enabled()
    wait_until(lambda: proxy.refused >= 2, "the page to try to rejoin, and try again")
    expect(reply.get_by_test_id("reconnecting")).to_have_text(RECONNECTING)  # still honest: not back yet

    proxy.restore()
    expect_complete_reply(chat)
    assert generations(runs_server) - before == 1, "the rejoin started a second generation"
    run_id = chat.run_id()
    chat_id = chat.bodies()[0]["id"]
    rejoined = [r for r in chat.resumes() if r.status == 200]
    assert len(rejoined) == 1 and RESUME.search(rejoined[0].url)[1] == chat_id
    assert rejoined[0].headers["x-run-id"] == run_id
    # The reply only ever grew: the replay from the run's start showed nothing twice, and the reply never went
    # blank or shorter while the SDK rebuilt it.
    states = [squash(s) for s in chat.reply_states()]
    states = states[next(i for i, s in enumerate(states) if s):]
    assert all(b.startswith(a) for a, b in pairwise(states)), states
    assert states[-1] == squash(REPLY)
    assert not chat.page_errors and not real_errors(chat), (chat.page_errors, chat.console_errors)


# --- thinking, markdown --------------------------------------------------------------------------------------------

def test_thinking_block(thinking_server: LiveServer, page: Page, dialogs: list[str]) -> None:
    chat = SdkChat(page, thinking_server).open()
    chat.send("What is the meaning of life?")
    reply = chat.reply()
    block = reply.get_by_test_id("reasoning")
    summary = block.get_by_test_id("reasoning-summary")
    thoughts = block.get_by_test_id("reasoning-text")
    reasoning = "".join(scripted_reasoning(REASONING_TOKENS))
    answer = "".join(scripted_tokens(6))

    # While it thinks: the block open, "Thinking…", the cursor in it, no answer yet.
    expect(summary).to_have_text("Thinking…")
    expect(block).to_have_attribute("open", "")
    expect(thoughts.get_by_test_id("cursor")).to_have_count(1)
    assert reply.get_by_test_id("message-text").text_content() == ""
    expect(thoughts).to_have_attribute("aria-live", "off")

    done = chat.wait_for_reply_end()
    expect(done).to_have_attribute("data-status", "done")
    expect(summary).to_have_text("Thought")  # the answer closed it
    expect(block).not_to_have_attribute("open", "")
    assert chat.reply_html() == chat.rendered(answer)["html"]
    summary.click()  # the reader opens it: the whole reasoning, sanitized; the <img> is text
    expect(block).to_have_attribute("open", "")
    assert thoughts.inner_html() == chat.rendered(reasoning)["html"]
    expect(thoughts).to_contain_text(INJECTED)
    expect(reply.locator("img, script, [onerror]")).to_have_count(0)
    summary.click()
    expect(block).not_to_have_attribute("open", "")
    assert not dialogs and not [r.url for r in chat.requests if r.url.endswith("/x")]
    # The reasoning is not sent back: the next request's assistant message has it as a part the server ignores,
    # and its text is the answer alone.
    chat.send("go on")
    chat.wait_for_reply_end(2)
    assistant = chat.bodies()[-1]["messages"][2]
    assert user_text(assistant) == answer
    assert not chat.page_errors and not chat.console_errors


def test_markdown_is_rendered_and_sanitized(markdown_server: LiveServer, page: Page) -> None:
    chat = SdkChat(page, markdown_server).open()
    page.evaluate(RECORD_MARKDOWN_STATES)
    chat.send("Show me some markdown")
    reply = chat.wait_for_reply_end()
    expect(reply).to_have_attribute("data-status", "done")
    text, _ = kept(markdown_server, chat.run_id())
    assert text == MARKDOWN_REPLY  # the upstream's text arrived intact
    assert chat.reply_html() == chat.rendered(MARKDOWN_REPLY)["html"]  # the shared renderer's HTML, exactly
    body = reply.get_by_test_id("message-text")
    expect(body.locator("h2")).to_have_text("Markdown, streamed")
    assert body.locator("pre > code").text_content() == CODE
    assert page.evaluate(XSS_STATE, list(XSS_FLAGS)) == [None] * len(XSS_FLAGS)
    expect(body.locator("img, script, iframe, svg, [onerror], [onload]")).to_have_count(0)
    expect(body).to_contain_text('An inline <img src=x onerror="window.__xssImg = 1"> tag')
    assert body.locator("a", has_text="a javascript link").get_attribute("href") is None
    states = page.evaluate("window.__markdownStates")
    assert len(states) >= 15, len(states)
    assert_states_never_garbled(states)
    assert any(s["cursorIn"] == "CODE" for s in states)
    assert not [r.url for r in chat.requests if r.url.endswith("/x")], "the <img src=x> was fetched"
    assert not chat.page_errors and not chat.console_errors


# --- served, and laid out like the others -------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "status"), [
    ("/playground/ai-sdk/", 200), ("/playground/ai-sdk/src/AiSdkChat.jsx", 404),
    ("/playground/ai-sdk/vite.config.js", 404), ("/playground/ai-sdk/index.html", 200),
    ("/playground/ai-sdk/dist/index.html", 404),
])
def test_the_build_is_served_and_its_sources_are_not(short_server: LiveServer, path: str, status: int) -> None:
    assert httpx.get(short_server.url + path).status_code == status


def test_no_request_leaves_the_origin_and_screenshots(short_server: LiveServer, browser: Browser) -> None:
    for label, options in (
        ("desktop", {"viewport": {"width": 1100, "height": 760}}),
        ("phone", {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                   "has_touch": True}),
    ):
        context = browser.new_context(**options)
        try:
            page = context.new_page()
            chat = SdkChat(page, short_server).open()
            chat.send("你好！请介绍一下流式输出。")
            expect(chat.wait_for_reply_end(1)).to_have_attribute("data-status", "done")
            page.wait_for_load_state("networkidle")
            outside = [r.url for r in chat.requests if not r.url.startswith(short_server.url + "/")]
            assert outside == [], f"requests left the page's origin: {outside}"
            # The shared stylesheet: the same layout as the other pages, fitting the viewport.
            app = page.evaluate("(({display, maxWidth}) => ({display, maxWidth}))"
                                "(getComputedStyle(document.querySelector('.app')))")
            assert app == {"display": "flex", "maxWidth": "820px"}
            width = page.viewport_size["width"]
            assert page.evaluate("document.scrollingElement.scrollWidth") <= width
            for control in (chat.input, chat.send_button, chat.stop_button, chat.system_prompt):
                box = control.bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (label, box)
                assert box["y"] + box["height"] <= page.viewport_size["height"]
            expect(page.get_by_role("link", name="API docs")).to_have_attribute("href", "/docs")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ARTIFACTS / f"front-end-ai-sdk-{label}.png")
            assert not chat.page_errors and not chat.console_errors, chat.console_errors
        finally:
            context.close()


def test_the_pinned_sdk() -> None:
    package = json.loads((ROOT / "playground" / "package.json").read_text())
    lock = json.loads((ROOT / "playground" / "package-lock.json").read_text())
    assert package["dependencies"]["@ai-sdk/react"] == "4.0.177"
    assert lock["packages"]["node_modules/@ai-sdk/react"]["version"] == "4.0.177"
    assert lock["packages"]["node_modules/ai"]["version"] == "7.0.173"
