"""The typewriter chats in headless Chromium against live servers: the plain page (/playground/), React
(/playground/react/) and Vue (/playground/vue/) pass the same tests through the same data-testid hooks.

Needs `make playground` (the Vite builds); `make test` runs it first. The shared modules (playground/shared/: the
chat state, the streaming client) are also tested on their own, in the browser, at the end.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from chains.models.fake import scripted_tokens
from tests.support.browser import squash
from tests.support.fixtures import app_fixture
from tests.support.front_end_chat import PAGES, Chat
from tests.support.servers import ARTIFACTS, ROOT, first_token_seconds

FAKE_REPLY = "".join(scripted_tokens(20))  # fake_server's reply, whatever the prompt
LONG_FAKE_TOKENS = 200
LONG_FAKE_REPLY = "".join(scripted_tokens(LONG_FAKE_TOKENS))
LONG_PROMPT = "Write a long story about a dragon who learns to bake bread. Make it at least 1000 words."


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    for framework in ("react", "vue"):
        assert (ROOT / "playground" / framework / "dist" / "index.html").is_file(), "run `make playground` first"


@pytest.fixture(params=list(PAGES))
def front_end(request: pytest.FixtureRequest) -> str:
    return PAGES[request.param]


LONG_FAKE = {"CHAT_PROVIDER": "fake", "FAKE_REPLY_TOKENS": str(LONG_FAKE_TOKENS), "FAKE_TOKEN_DELAY_MS": "50"}
long_fake_server = app_fixture("fe-long-fake-server", **LONG_FAKE,
                               doc="200 scripted tokens 50 ms apart: a reply that lasts 10 s, to be stopped.")
doomed_server = app_fixture("fe-doomed-server", scope="function", **LONG_FAKE,
                            doc="A server of its own, for a test to kill mid-stream.")


def name_of(path: str) -> str:
    return next(name for name, p in PAGES.items() if p == path)


# --- streaming ---------------------------------------------------------------------------------------------------

def test_reply_streams_token_by_token_and_ends_with_the_done_summary(slow_fake_server, page: Page,
                                                                      front_end: str) -> None:
    chat = Chat(page, slow_fake_server, front_end).open()
    expect(chat.system_prompt).to_have_value(DEFAULT_SYSTEM_PROMPT)
    chat.send("讲个笑话")

    # While the reply streams: a cursor, the box and Send disabled, Stop enabled, the log marked busy.
    chat.wait_for_reply_length(1)
    expect(chat.reply()).to_have_attribute("data-status", "streaming")
    expect(chat.reply().get_by_test_id("cursor")).to_be_visible()
    expect(chat.input).to_be_disabled()
    expect(chat.send_button).to_be_disabled()
    expect(chat.stop_button).to_be_enabled()
    expect(page.get_by_test_id("messages")).to_have_attribute("aria-busy", "true")

    reply = chat.wait_for_reply_end()
    expect(reply).to_have_attribute("data-status", "done")
    done = chat.done_event()
    assert done["token_count"] == 8 and done["status"] == "completed"
    # The text the server summed up, Chinese and emoji kept. The reply is rendered as markdown (newlines become
    # <br>); the scripted text has no markup, so what shows is that text up to whitespace.
    assert done["full_response"] == "".join(scripted_tokens(8))
    assert squash(chat.reply_text()) == squash(done["full_response"])
    assert chat.reply_html() == chat.rendered(done["full_response"])["html"]

    # It grew token by token: several intermediate states, each a prefix of the next.
    states = [squash(s) for s in chat.reply_states() if s]
    states = [s for i, s in enumerate(states) if not i or s != states[i - 1]]
    assert len(states) >= 3, states
    assert states[-1] == squash(done["full_response"])
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(states, states[1:])), states

    stats = reply.get_by_test_id("stats")
    expect(stats).to_have_attribute("data-token-count", "8")
    expect(stats).to_contain_text("8 tokens")
    rate = done["tokens_per_second"]
    expect(stats).to_contain_text(f"{rate:.0f} tokens/s" if rate >= 100 else f"{rate:.1f} tokens/s")
    chat.expect_idle()
    assert chat.active_testid() == "input", "focus goes back to the message box"

    # The user's turn is shown, and the request was the conversation chain's shape.
    expect(chat.messages.first).to_have_attribute("data-role", "user")
    expect(chat.messages.first.get_by_test_id("message-text")).to_have_text("讲个笑话")
    assert chat.chat_bodies() == [{"messages": [{"role": "user", "content": "讲个笑话"}],
                                   "system_prompt": DEFAULT_SYSTEM_PROMPT}]
    # The stream was closed and nothing reconnected (an EventSource left open would start a second generation).
    page.wait_for_timeout(700)
    assert len(chat.chat_requests) == 1
    assert not chat.failed and not chat.page_errors and not chat.console_errors, (chat.failed, chat.console_errors)


def test_second_turn_carries_the_first_and_the_system_prompt(fake_server, page: Page, front_end: str) -> None:
    chat = Chat(page, fake_server, front_end).open()
    chat.system_prompt.fill("Answer in one sentence.")
    first = chat.exchange("第一个问题")
    assert first["full_response"] == FAKE_REPLY and squash(chat.reply_text(0)) == squash(FAKE_REPLY)
    second = chat.exchange("second question")
    assert second["full_response"] == FAKE_REPLY and squash(chat.reply_text(1)) == squash(FAKE_REPLY)

    assert chat.chat_bodies() == [
        {"messages": [{"role": "user", "content": "第一个问题"}], "system_prompt": "Answer in one sentence."},
        {"messages": [{"role": "user", "content": "第一个问题"},
                      {"role": "assistant", "content": FAKE_REPLY},
                      {"role": "user", "content": "second question"}],
         "system_prompt": "Answer in one sentence."},
    ]
    expect(chat.messages).to_have_count(4)
    assert [chat.messages.nth(i).get_attribute("data-role") for i in range(4)] == ["user", "assistant"] * 2

    page.get_by_test_id("clear").click()  # New chat: the history is gone from the page and from the next request
    expect(chat.messages).to_have_count(0)
    chat.exchange("fresh start")
    assert chat.chat_bodies()[-1]["messages"] == [{"role": "user", "content": "fresh start"}]
    assert not chat.page_errors and not chat.console_errors


def test_real_model_reply_matches_its_done_summary(local_server, page: Page, front_end: str) -> None:
    chat = Chat(page, local_server, front_end).open()
    done = chat.exchange("用一句话介绍你自己", timeout=60_000)  # generous: the CPU may be shared
    # Whatever markdown the model wrote: the page shows exactly what the shared renderer makes of the full reply.
    assert done["full_response"] and chat.reply_html() == chat.rendered(done["full_response"])["html"]
    assert 0 < done["token_count"] <= 24
    expect(chat.reply().get_by_test_id("stats")).to_have_attribute("data-token-count", str(done["token_count"]))
    assert not chat.page_errors and not chat.console_errors


# --- Stop ----------------------------------------------------------------------------------------------------------

def test_stop_ends_the_stream_early_and_the_ui_recovers(long_fake_server, page: Page, front_end: str) -> None:
    chat = Chat(page, long_fake_server, front_end).open()
    chat.send("tell me a long story")
    chat.wait_for_reply_length(20)
    chat.stop_button.click()

    expect(chat.reply()).to_have_attribute("data-status", "stopped")
    expect(chat.reply().get_by_test_id("stopped")).to_be_visible()
    chat.expect_idle()
    assert chat.active_testid() == "input"
    partial = chat.reply_text()
    assert 20 <= len(partial) and len(squash(partial)) < len(squash(LONG_FAKE_REPLY))
    assert squash(LONG_FAKE_REPLY).startswith(squash(partial))
    page.wait_for_timeout(500)
    assert chat.reply_text() == partial, "tokens kept arriving after Stop"
    # Stop cancelled the run: the stream ended with its `done`, whose partial reply is what the page shows, and
    # whose count of the tokens used is shown with it.
    assert len([r for r in chat.requests if r.method == "POST" and r.url.endswith("/cancel")]) == 1
    done = chat.done_event()
    assert done["status"] == "cancelled" and done["finish_reason"] == "cancelled"
    assert done["full_response"] and squash(done["full_response"]) == squash(partial)
    expect(chat.reply().get_by_test_id("stats")).to_have_attribute("data-token-count", str(done["token_count"]))

    # The partial reply is what the model said: it is part of the next request's history.
    chat.send("go on")
    chat.wait_for_reply_length(5)
    history = chat.chat_bodies()[-1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[0]["content"] == "tell me a long story" and history[2]["content"] == "go on"
    said = history[1]["content"]  # exactly the streamed text, of which the page shows the rendering
    assert LONG_FAKE_REPLY.startswith(said) and squash(said) == squash(partial)
    page.keyboard.press("Escape")  # Esc stops too
    expect(chat.reply()).to_have_attribute("data-status", "stopped")
    chat.expect_idle()
    assert len(chat.chat_requests) == 2 and not chat.page_errors


SCROLL_STATE = """() => { const log = document.querySelector('[data-testid=messages]');
                           return {top: log.scrollTop, gap: log.scrollHeight - log.scrollTop - log.clientHeight}; }"""


def test_log_follows_the_reply_unless_the_reader_scrolls_up(long_fake_server, browser: Browser,
                                                            front_end: str) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 520})
    try:
        page = context.new_page()
        chat = Chat(page, long_fake_server, front_end).open()
        chat.send("a long one")
        page.wait_for_function("""() => { const log = document.querySelector('[data-testid=messages]');
                                          return log.scrollHeight > log.clientHeight + 150; }""")
        page.wait_for_timeout(300)
        assert page.evaluate(SCROLL_STATE)["gap"] < 40, "the log does not follow the growing reply"

        page.evaluate("document.querySelector('[data-testid=messages]').scrollTop = 0")  # the reader scrolls up
        length = len(chat.reply_text())
        chat.wait_for_reply_length(length + 40)
        assert page.evaluate(SCROLL_STATE)["top"] < 5, "the log was pulled back down while the reader scrolled up"

        page.evaluate("""() => { const log = document.querySelector('[data-testid=messages]');
                                 log.scrollTop = log.scrollHeight; }""")  # back at the end: following again
        chat.wait_for_reply_length(len(chat.reply_text()) + 40)
        page.wait_for_timeout(100)
        assert page.evaluate(SCROLL_STATE)["gap"] < 40
        chat.stop_button.click()
        chat.expect_idle()
    finally:
        context.close()


def test_stop_cancels_the_generation_on_the_server(long_local_server, page: Page, front_end: str) -> None:
    # The embedded model decodes one reply at a time: had Stop not cancelled the 2,000-token reply (~20 s), the
    # next request would wait behind it.
    chat = Chat(page, long_local_server, front_end).open()
    chat.send(LONG_PROMPT)
    chat.wait_for_reply_length(10, timeout=60_000)
    chat.stop_button.click()
    expect(chat.reply()).to_have_attribute("data-status", "stopped")
    waited = first_token_seconds(long_local_server.url)
    # A cancelled generation frees the model at once (~0.5 s to the next first token); one left running would
    # hold it for the rest of its 2,000 tokens. 8 s tells the two apart even on a busy machine.
    assert waited < 8, f"the next request waited {waited:.1f}s behind the stopped generation"


# --- errors --------------------------------------------------------------------------------------------------------

def test_server_error_is_shown_and_told_apart_from_connection_problems(failing_server, page: Page,
                                                                        front_end: str) -> None:
    chat = Chat(page, failing_server, front_end).open()

    # 1. The model fails after 3 tokens: the server's `event: error`, its message shown inline, the partial kept.
    chat.send("will fail")
    reply = chat.wait_for_reply_end()
    expect(reply).to_have_attribute("data-status", "error")
    events = chat.events()
    assert events[-1].event == "error"
    server_error = events[-1].json()
    error = reply.get_by_test_id("error")
    expect(error).to_have_attribute("data-kind", "server")
    expect(error).to_have_text(f"Server error: {server_error['error']}")
    # An unnamed failure is told as an internal error with the id the log has it under, never the exception text.
    assert server_error["type"] == "internal_error" and "scripted failure" not in server_error["error"]
    assert re.fullmatch(r"internal error; the server logged it as [0-9a-f]{12}", server_error["error"])
    assert squash(chat.reply_text()) == squash("".join(scripted_tokens(3)))
    chat.expect_idle()
    page.wait_for_timeout(700)
    assert len(chat.chat_requests) == 1, "the stream was not closed after the error: something reconnected"
    assert not chat.failed

    # 2. No connection at all.
    page.route("**/chat?*", lambda route: route.abort("connectionrefused"))
    chat.send("no connection")
    reply = chat.wait_for_reply_end(2)
    network = reply.get_by_test_id("error")
    expect(network).to_have_attribute("data-kind", "network")
    expect(network).to_contain_text("Connection problem: Cannot reach the server")
    chat.expect_idle()

    # 3. A stream cut short: tokens, then the connection ends without `done` or `error`.
    page.unroute("**/chat?*")
    page.route("**/chat?*", lambda route: route.fulfill(
        status=200, content_type="text/event-stream",
        body='id: 0\nevent: start\ndata: {"status":"started","timestamp":1}\n\n'
             'id: 1\ndata: {"token":"Hel","token_count":1}\n\nid: 2\ndata: {"token":"lo","token_count":2}\n\n'))
    chat.send("cut short")
    reply = chat.wait_for_reply_end(3)
    expect(reply.get_by_test_id("error")).to_have_attribute("data-kind", "network")
    expect(reply.get_by_test_id("error")).to_contain_text("Connection problem: The connection closed before")
    assert chat.reply_text() == "Hello"

    # 4. An HTTP error status: the request refused.
    page.unroute("**/chat?*")
    page.route("**/chat?*", lambda route: route.fulfill(
        status=503, content_type="application/json", headers={"Retry-After": "1"},
        body='{"error": "the local model has 32 requests waiting", "type": "overloaded"}'))
    chat.send("refused")
    reply = chat.wait_for_reply_end(4)
    expect(reply.get_by_test_id("error")).to_have_attribute("data-kind", "http")
    expect(reply.get_by_test_id("error")).to_have_text(
        "Request refused: HTTP 503 Service Unavailable: the local model has 32 requests waiting (try again in 1 s)")
    page.unroute("**/chat?*")

    # 5. The server's own refusal of a request it cannot take (an empty conversation): its 422 reason shown.
    page.route("**/chat?*", lambda route: route.continue_(post_data=json.dumps({"messages": []})))
    chat.send("made invalid")
    reply = chat.wait_for_reply_end(5)
    expect(reply.get_by_test_id("error")).to_have_attribute("data-kind", "http")
    expect(reply.get_by_test_id("error")).to_contain_text("Request refused: HTTP 422 Unprocessable Entity: ")
    expect(reply.get_by_test_id("error")).to_contain_text("at least 1 item")
    page.unroute("**/chat?*")

    # Told apart: different text and a different look.
    first, second = chat.reply(0).get_by_test_id("error"), chat.reply(1).get_by_test_id("error")
    assert first.get_attribute("class") != second.get_attribute("class")
    assert first.evaluate("e => getComputedStyle(e).color") != second.evaluate("e => getComputedStyle(e).color")

    # Failed exchanges are not sent again as history.
    chat.send("again")
    chat.wait_for_reply_end(6)
    assert chat.chat_bodies()[-1]["messages"] == [{"role": "user", "content": "again"}]
    assert not chat.page_errors


def test_server_gone_mid_stream_is_told_and_stop_gives_up(doomed_server, page: Page, front_end: str) -> None:
    chat = Chat(page, doomed_server, front_end).open()
    chat.send("the server will die")
    chat.wait_for_reply_length(10)
    doomed_server.process.kill()  # SIGKILL: the TCP connection is reset mid-stream, no event says why
    # The page tries to rejoin the run for its grace period (test_front_end_runs.py: it gives up after it, and
    # rejoins a server that comes back), saying so, the partial reply kept.
    reply = chat.reply()
    expect(reply.get_by_test_id("reconnecting")).to_have_text("Connection lost: reconnecting…")
    expect(reply).to_have_attribute("data-status", "streaming")
    partial = chat.reply_text()
    assert squash(LONG_FAKE_REPLY).startswith(squash(partial)) and len(partial) >= 10
    chat.stop_button.click()  # the reader gives up waiting: the cancel cannot reach the server, the page stops
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.get_by_test_id("reconnecting")).to_have_count(0)
    assert chat.reply_text() == partial
    chat.expect_idle()
    assert not chat.page_errors


# --- keyboard --------------------------------------------------------------------------------------------------------

def dispatch(page: Page, *events: dict) -> None:
    """Dispatch DOM events on the message box, as an IME would (key, keyCode, isComposing)."""
    page.evaluate("""(events) => {
      const box = document.querySelector('[data-testid=input]');
      for (const e of events) {
        const event = e.type.startsWith('key')
          ? new KeyboardEvent(e.type, {key: 'Enter', code: 'Enter', keyCode: e.keyCode, which: e.keyCode,
                                       isComposing: e.isComposing, bubbles: true, cancelable: true})
          : new CompositionEvent(e.type, {data: e.data || '', bubbles: true});
        box.dispatchEvent(event);
      }
    }""", list(events))


def test_enter_committing_an_ime_composition_does_not_send(fake_server, page: Page, front_end: str) -> None:
    chat = Chat(page, fake_server, front_end).open()
    chat.input.focus()

    # Chromium's own IME path (over CDP): type 你好 through a composition and press Enter to commit it. The Enter's
    # keydown is real: keyCode 229, isComposing true.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.imeSetComposition", {"text": "ni", "selectionStart": 2, "selectionEnd": 2})
    cdp.send("Input.imeSetComposition", {"text": "你好", "selectionStart": 2, "selectionEnd": 2})
    cdp.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", "key": "Enter", "code": "Enter",
                                        "windowsVirtualKeyCode": 229, "nativeVirtualKeyCode": 229})
    cdp.send("Input.insertText", {"text": "你好"})
    cdp.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": "Enter", "code": "Enter",
                                        "windowsVirtualKeyCode": 13})
    expect(chat.input).to_have_value("你好")

    # Other browsers' shapes of the same Enter: isComposing with keyCode 13 (Firefox); keyCode 229 after
    # compositionend (Safari); neither flag, but between compositionstart and compositionend.
    dispatch(page, {"type": "compositionstart"},
             {"type": "keydown", "keyCode": 13, "isComposing": True}, {"type": "compositionend", "data": "吗"})
    dispatch(page, {"type": "compositionstart"}, {"type": "compositionend", "data": "吗"},
             {"type": "keydown", "keyCode": 229, "isComposing": False})
    dispatch(page, {"type": "compositionstart"}, {"type": "keydown", "keyCode": 13, "isComposing": False},
             {"type": "compositionend", "data": "吗"})
    page.wait_for_timeout(400)
    assert chat.chat_requests == [], "an Enter that committed a composition sent the message"
    expect(chat.messages).to_have_count(0)

    # Shift+Enter adds a line; a plain Enter sends.
    chat.input.press("Shift+Enter")
    chat.input.press_sequentially("吗")
    expect(chat.input).to_have_value("你好\n吗")
    assert chat.chat_requests == []
    chat.input.press("Enter")
    chat.wait_for_reply_end(1)
    assert chat.chat_bodies() == [{"messages": [{"role": "user", "content": "你好\n吗"}],
                                   "system_prompt": DEFAULT_SYSTEM_PROMPT}]
    expect(chat.messages.first.get_by_test_id("message-text")).to_have_text("你好\n吗")
    assert not chat.page_errors


def test_keyboard_only_use(long_fake_server, page: Page, front_end: str) -> None:
    chat = Chat(page, long_fake_server, front_end).open()
    # Labelled controls and a named log, found the way assistive technology finds them.
    expect(page.get_by_label("Message")).to_have_attribute("data-testid", "input")
    expect(page.get_by_label("System prompt")).to_have_attribute("data-testid", "system-prompt")
    expect(page.get_by_role("log", name="Conversation")).to_have_attribute("data-testid", "messages")
    expect(page.get_by_role("button", name="Send")).to_have_attribute("data-testid", "send")
    expect(page.get_by_role("button", name="Stop")).to_have_attribute("data-testid", "stop")

    # Tab order: system prompt → New chat → the log → the message box → Send.
    chat.system_prompt.focus()
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(chat.active_testid())
    assert order == ["clear", "messages", "input", "send"]

    page.keyboard.press("Shift+Tab")
    page.keyboard.type("hello")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # Send, from the keyboard
    chat.wait_for_reply_length(10)
    expect(chat.stop_button).to_be_focused()  # the box is disabled while streaming: focus waits on Stop
    page.keyboard.press("Enter")  # Stop
    expect(chat.reply()).to_have_attribute("data-status", "stopped")
    expect(chat.input).to_be_focused()
    assert chat.chat_bodies()[0]["messages"] == [{"role": "user", "content": "hello"}]

    # Focus is visible.
    outline = chat.input.evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline != "none"
    assert not chat.page_errors


BOX_HEIGHT = "() => document.querySelector('[data-testid=input]').getBoundingClientRect().height"


def test_message_box_grows_with_its_text_up_to_its_limit(fake_server, page: Page, front_end: str) -> None:
    chat = Chat(page, fake_server, front_end).open()
    one_line = page.evaluate(BOX_HEIGHT)
    chat.input.fill("line\n" * 3 + "line")
    page.wait_for_function(f"() => ({BOX_HEIGHT})() > {one_line * 1.8}")
    four_lines = page.evaluate(BOX_HEIGHT)
    chat.input.fill("line\n" * 40)
    limit = chat.input.evaluate("e => parseFloat(getComputedStyle(e).maxHeight)")
    page.wait_for_function(f"() => ({BOX_HEIGHT})() > {four_lines}")
    assert page.evaluate(BOX_HEIGHT) <= limit + 1, "the box grows past its max-height"
    chat.input.press("Enter")  # sent: the box is emptied, and shrinks back
    chat.wait_for_reply_end(1)
    page.wait_for_function(f"() => ({BOX_HEIGHT})() < {one_line + 1}")
    assert not chat.page_errors


# --- the server's defaults -----------------------------------------------------------------------------------------

english_server = app_fixture("fe-english-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="5",
                             SYSTEM_PROMPT="Answer in English.")


def test_system_prompt_field_starts_with_the_servers(english_server, page: Page, front_end: str) -> None:
    """GET /chat/defaults fills the field: SYSTEM_PROMPT, not a copy of the tutorial's default in the pages."""
    chat = Chat(page, english_server, front_end).open()
    expect(chat.system_prompt).to_have_value("Answer in English.")
    chat.exchange("hi")
    assert chat.chat_bodies() == [{"messages": [{"role": "user", "content": "hi"}],
                                   "system_prompt": "Answer in English."}]
    assert not chat.page_errors and not chat.console_errors


def test_no_page_carries_a_copy_of_the_default_system_prompt() -> None:
    playground = ROOT / "playground"
    files = [path for folder in ("plain", "shared", "react/src", "vue/src", "react/dist", "vue/dist")
             for path in (playground / folder).rglob("*") if path.suffix in (".html", ".js", ".jsx", ".vue")]
    assert len(files) > 10
    assert [path for path in files if DEFAULT_SYSTEM_PROMPT in path.read_text()] == []


# --- origin, layout, screenshots -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "status"), [
    ("/playground/", 200), ("/playground/app.js", 200), ("/playground/shared/chat.js", 200),
    ("/playground/shared/sse-client.js", 200), ("/playground/shared/markdown.js", 200),
    ("/playground/shared/style.css", 200), ("/playground/shared/vendor/purify.es.mjs", 200),
    ("/playground/screenshots/plain-desktop.png", 200), ("/playground/react/", 200), ("/playground/vue/", 200),
    ("/playground/package.json", 404), ("/playground/package-lock.json", 404),
    ("/playground/node_modules/vite/package.json", 404), ("/playground/shared/node_modules/vite/package.json", 404),
    ("/playground/react/src/main.jsx", 404), ("/playground/react/vite.config.js", 404),
    ("/playground/vue/src/TokenStreamChat.vue", 404), ("/playground/vue/vite.config.js", 404),
    ("/playground/plain/app.js", 404), ("/playground/shared/", 404), ("/playground/../server.py", 404),
])
def test_each_served_folder_holds_only_what_it_serves(fake_server, path: str, status: int) -> None:
    """playground/plain/, shared/, screenshots/ and the Vite builds are plain StaticFiles mounts: package.json,
    node_modules and the React and Vue sources sit beside them, under none."""
    assert httpx.get(fake_server.url + path).status_code == status



def test_no_request_leaves_the_origin_and_screenshots(fake_server, browser: Browser, front_end: str) -> None:
    name = name_of(front_end)
    for label, options in (
        ("desktop", {"viewport": {"width": 1100, "height": 760}}),
        ("phone", {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                   "has_touch": True}),
    ):
        context = browser.new_context(**options)
        try:
            page = context.new_page()
            chat = Chat(page, fake_server, front_end).open()
            chat.exchange("你好！请介绍一下流式输出。")
            chat.exchange("再详细一点")
            page.wait_for_load_state("networkidle")

            urls = [r.url for r in chat.requests]
            assert any(url.split("?")[0].endswith("/chat") for url in urls)
            outside = [url for url in urls if not url.startswith(fake_server.url + "/")]
            assert outside == [], f"requests left the page's origin: {outside}"

            # Fits the viewport: no sideways scrolling, the controls on screen.
            width = page.viewport_size["width"]
            assert page.evaluate("document.scrollingElement.scrollWidth") <= width
            for control in (chat.input, chat.send_button, chat.stop_button, chat.system_prompt):
                box = control.bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (label, box)
                assert box["y"] + box["height"] <= page.viewport_size["height"]
            expect(page.get_by_role("link", name="API docs")).to_have_attribute("href", "/docs")

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ARTIFACTS / f"front-end-{name}-{label}.png")
            assert not chat.page_errors and not chat.console_errors, chat.console_errors
        finally:
            context.close()


def test_plain_page_keeps_the_langserve_links(fake_server, page: Page) -> None:
    page.goto(fake_server.url + "/playground/")
    for href in ("/single-turn/playground/", "/system-prompt/playground/", "/conversation/playground/", "/docs"):
        link = page.locator(f'a[href="{href}"]')
        expect(link).to_have_count(1)
        assert httpx.get(fake_server.url + href, follow_redirects=True).status_code == 200


# --- the shared modules, on their own -------------------------------------------------------------------------------

SETTLE = """
async () => {
  const { conversationFor, settle } = await import('/playground/shared/chat.js');
  const done = {full_response: 'hi', token_count: 1};
  const error = {status: 'error', kind: 'network', message: 'dropped'};
  return {
    done: settle({status: 'done', done}, 'hi'),
    partial: settle({status: 'stopped'}, 'h'),
    nothing: settle({status: 'stopped'}, ''),
    error: settle(error, 'h'),
    history: conversationFor([{role: 'user', content: 'a'}, {role: 'assistant', content: 'b'},
                              {role: 'user', content: 'c', inHistory: false},
                              {role: 'assistant', content: '', inHistory: false}], 'd'),
  };
}
"""


def test_outcome_to_message_state(fake_server, page: Page) -> None:
    """The one copy of "stream outcome → message state" (shared/chat.js) the three pages use."""
    page.goto(fake_server.url + "/playground/")
    result = page.evaluate(SETTLE)
    assert result["done"] == {"reply": {"status": "done", "stats": {"full_response": "hi", "token_count": 1}},
                              "user": None}
    assert result["partial"] == {"reply": {"status": "stopped"}, "user": None}  # what the model said stays
    assert result["nothing"] == {"reply": {"status": "stopped", "inHistory": False}, "user": {"inHistory": False}}
    assert result["error"] == {"reply": {"status": "error", "error": {"status": "error", "kind": "network",
                                                                      "message": "dropped"},
                                         "inHistory": False},
                               "user": {"inHistory": False}}  # a failed exchange is not sent again
    assert result["history"] == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                 {"role": "user", "content": "d"}]


PARSE = """
async (chunks) => {
  const { SSEParser } = await import('/playground/shared/sse-client.js');
  const events = [];
  const parser = new SSEParser((e) => events.push(e));
  for (const chunk of chunks) parser.feed(chunk);
  return events;
}
"""


def test_parser_follows_the_sse_line_rules(fake_server, page: Page) -> None:
    page.goto(fake_server.url + "/playground/")
    stream = ("id: 1\r\ndata: {\"token\":\"a\"}\r\n\r\n"      # CRLF
              "id: 2\rdata: b\r\r"                           # CR
              ": heartbeat\n\n"                              # a comment alone dispatches nothing
              "event: done\ndata: line one\ndata:line two\ndata:  two spaces\n\n"  # multi-line data
              "event: empty\n\n"                             # no data: not dispatched
              "retry: 10\nfoo: bar\ndata\n\n"                # unknown fields ignored; `data` alone is ""
              "id: 7\ndata: cut off")                        # no blank line: never dispatched
    expected = [
        {"event": "message", "data": '{"token":"a"}', "id": "1"},
        {"event": "message", "data": "b", "id": "2"},
        {"event": "done", "data": "line one\nline two\n two spaces", "id": "2"},
        {"event": "message", "data": "", "id": "2"},
    ]
    assert page.evaluate(PARSE, [stream]) == expected
    # Any split into chunks gives the same events, a CRLF split between two chunks included.
    for size in (1, 2, 3, 7):
        assert page.evaluate(PARSE, [stream[i:i + size] for i in range(0, len(stream), size)]) == expected
    assert page.evaluate(PARSE, ["data: x\r", "\ndata: y\r\n", "\r\n"]) == [
        {"event": "message", "data": "x\ny", "id": ""}]


STREAM_WITH_FAKE_FETCH = """
async ({chunks, keepOpen, status, abortAfter, contentType}) => {
  const { streamChat } = await import('/playground/shared/sse-client.js');
  const encoder = new TextEncoder();
  let cancelled = false;
  let stream;
  const body = new ReadableStream({
    start(controller) {
      stream = controller;
      for (const chunk of chunks) controller.enqueue(typeof chunk === 'string' ? encoder.encode(chunk)
                                                                               : new Uint8Array(chunk));
      if (!keepOpen) controller.close();
    },
    cancel() { cancelled = true; },
  });
  const realFetch = window.fetch;
  const abort = new AbortController();
  window.fetch = async (url, init) => {
    if (init.signal.aborted) throw new DOMException('aborted', 'AbortError');
    // As a real fetch does: aborting the request errors its body.
    init.signal.addEventListener('abort', () => stream.error(new DOMException('aborted', 'AbortError')));
    return new Response(body, {status, headers: {'Content-Type': contentType}});
  };
  const tokens = [];
  try {
    const started = performance.now();
    const outcome = await streamChat({
      body: {message: 'x'}, signal: abort.signal,
      onToken: (t) => { tokens.push(t); if (abortAfter && tokens.length === abortAfter) abort.abort(); },
    });
    return {outcome, tokens, cancelled, ms: performance.now() - started};
  } finally {
    window.fetch = realFetch;
  }
}
"""


def test_client_outcomes_and_it_always_closes_the_stream(fake_server, page: Page) -> None:
    page.goto(fake_server.url + "/playground/")

    def run(**given: object) -> dict:
        return page.evaluate(STREAM_WITH_FAKE_FETCH, {
            "keepOpen": False, "status": 200, "abortAfter": 0, "contentType": "text/event-stream", **given})

    def token(text: str, count: int) -> str:
        return f'data: {{"token": "{text}", "token_count": {count}}}\n\n'

    done = 'event: done\ndata: {"status": "completed", "full_response": "你好", "token_count": 2}\n\n'

    # A UTF-8 character split across two network chunks arrives whole.
    ni = list("你".encode())
    result = run(chunks=[list(b'data: {"token": "') + ni[:2], ni[2:] + list(b'", "token_count": 1}\n\n'),
                         token("好", 2), done])
    assert result["tokens"] == ["你", "好"] and result["outcome"]["status"] == "done"

    # `done` ends it even if the server keeps the connection open: the client closes the stream itself.
    result = run(chunks=[token("a", 1), done, ": heartbeat\n\n"], keepOpen=True)
    assert result["outcome"]["done"]["full_response"] == "你好" and result["cancelled"] and result["ms"] < 3000

    # The server's error event: kind server, the stream closed.
    result = run(chunks=[token("a", 1), 'event: error\ndata: {"error": "boom", "type": "generation_error"}\n\n'],
                 keepOpen=True)
    assert result["outcome"] == {"status": "error", "kind": "server", "type": "generation_error", "message": "boom"}
    assert result["cancelled"]

    # Cut short, refused, stopped.
    assert run(chunks=[token("a", 1)])["outcome"]["kind"] == "network"
    refused = run(chunks=['{"detail": [{"msg": "Field required"}, {"msg": "too long"}]}'], status=422)["outcome"]
    assert refused == {"status": "error", "kind": "http", "httpStatus": 422,
                       "message": "HTTP 422: Field required; too long"}
    # Not an event stream (a proxy's or sign-in page, say): refused, not read as an empty stream.
    html = run(chunks=["<!doctype html><p>Sign in</p>"], contentType="text/html")["outcome"]
    assert html == {"status": "error", "kind": "http", "httpStatus": 200,
                    "message": "HTTP 200: expected an event stream, got text/html"}
    stopped = run(chunks=[token("a", 1), token("b", 2)], keepOpen=True, abortAfter=1)
    assert stopped["outcome"] == {"status": "stopped"} and stopped["tokens"] == ["a"]
