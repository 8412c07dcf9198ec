"""Drives one of the typewriter chats (plain, React, Vue) through the test hooks the three pages share.

Hooks (data-testid): messages (the log), message (data-role user|assistant, data-status
streaming|done|stopped|error), message-text (the user's text exactly; the assistant's reply rendered as markdown by
playground/shared/markdown.js), cursor, copy (a code block's Copy button), stats (data-token-count), error (data-kind
server|network|http), stopped, input, send, stop, system-prompt, clear.
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Locator, Page, Request, Response, expect

from tests.support.servers import LiveServer
from tests.support.sse import Event, parse_sse

PAGES = {"plain": "/playground/", "react": "/playground/react/", "vue": "/playground/vue/"}

# The text of the last assistant message after every DOM change of the log: the reply as it grows.
RECORD_REPLY_STATES = """
() => {
  window.__replyStates = [];
  const list = document.querySelector('[data-testid=messages]');
  new MutationObserver(() => {
    const texts = list.querySelectorAll('[data-testid=message][data-role=assistant] [data-testid=message-text]');
    if (!texts.length) return;
    const text = texts[texts.length - 1].textContent;
    const states = window.__replyStates;
    if (states[states.length - 1] !== text) states.push(text);
  }).observe(list, {subtree: true, childList: true, characterData: true});
}
"""

RENDER_MARKDOWN = """
async (text) => {
  const { renderMarkdown } = await import('/playground/shared/markdown.js');
  const box = document.createElement('div');
  box.innerHTML = renderMarkdown(text);
  return {html: box.innerHTML, text: box.textContent};
}
"""

REPLY_ENDED = """
(n) => {
  const replies = document.querySelectorAll('[data-testid=message][data-role=assistant]');
  return replies.length >= n && replies[n - 1].dataset.status !== 'streaming';
}
"""


def body_text(response: Response) -> str:
    """The response body as text. DevTools decodes a text body whose type names no charset as windows-1252 (the
    web's "latin1", where the bytes cp1252 leaves undefined map to U+0080-U+009F) and Playwright hands that over
    as UTF-8; an event stream is UTF-8 by definition, so this undoes it."""
    text = response.body().decode("utf-8")
    if "charset" in response.headers.get("content-type", ""):
        return text
    try:
        raw = bytes(ord(c) if ord(c) < 256 else c.encode("cp1252")[0] for c in text)
        return raw.decode("utf-8")
    except UnicodeError:  # it was not decoded that way after all
        return text


class ByTestId:
    """A `Chat` attribute: the page's element with this data-testid."""

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id

    def __get__(self, chat: Chat, owner: type[Chat] | None = None) -> Locator:
        return chat.page.get_by_test_id(self.test_id)


class BySelector:
    """A `Chat` attribute: the page's elements that match this CSS selector."""

    def __init__(self, selector: str) -> None:
        self.selector = selector

    def __get__(self, chat: Chat, owner: type[Chat] | None = None) -> Locator:
        return chat.page.locator(self.selector)


class Chat:
    """A front end open in `page`, with every request it made and every response it got recorded."""

    def __init__(self, page: Page, server: LiveServer, path: str) -> None:
        self.page, self.server, self.path = page, server, path
        self.chat_url = server.url + "/chat"
        self.requests: list[Request] = []
        self.responses: list[Response] = []
        self.failed: list[Request] = []
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        page.set_default_timeout(15_000)
        page.on("request", lambda request: self.requests.append(request))
        page.on("response", lambda response: self.responses.append(response))
        page.on("requestfailed", lambda request: self.failed.append(request))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type in ("error", "warning") else None)

    def open(self) -> Chat:
        self.page.goto(self.server.url + self.path)
        expect(self.input).to_be_enabled()
        expect(self.system_prompt).to_be_enabled()
        self.page.evaluate(RECORD_REPLY_STATES)
        return self

    # Elements, located afresh on each use (a page re-renders them)
    input = ByTestId("input")
    send_button = ByTestId("send")
    stop_button = ByTestId("stop")
    system_prompt = ByTestId("system-prompt")
    messages = BySelector("[data-testid=message]")
    replies = BySelector("[data-testid=message][data-role=assistant]")

    def reply(self, index: int = -1) -> Locator:
        return self.replies.nth(index) if index >= 0 else self.replies.last

    def reply_text(self, index: int = -1) -> str:
        """The reply's text as rendered: markdown markers gone, and a newline is a <br> (no text) — for text without
        markup, the streamed text up to whitespace (compare with tests.support.browser.squash)."""
        return self.reply(index).get_by_test_id("message-text").text_content() or ""

    def reply_html(self, index: int = -1) -> str:
        return self.reply(index).get_by_test_id("message-text").inner_html()

    def rendered(self, markdown: str) -> dict[str, str]:
        """How the shared playground/shared/markdown.js renders a finished `markdown` reply: {html, text}. Computed on a
        plain page of the same browser (the React and Vue bundles do not expose the module)."""
        page = self.page.context.new_page()
        try:
            page.goto(self.server.url + "/playground/")
            return page.evaluate(RENDER_MARKDOWN, markdown)
        finally:
            page.close()

    # Actions
    def send(self, text: str) -> None:
        self.input.fill(text)
        self.input.press("Enter")

    def wait_for_reply_end(self, n: int | None = None, timeout: float = 15_000) -> Locator:
        """Until the n-th reply (default: the last one started) is no longer streaming."""
        n = n or self.replies.count()
        self.page.wait_for_function(REPLY_ENDED, arg=n, timeout=timeout)
        return self.reply(n - 1)

    def wait_for_reply_length(self, chars: int, timeout: float = 15_000) -> None:
        self.page.wait_for_function(
            """(chars) => { const t = document.querySelectorAll('[data-testid=message][data-role=assistant] '
                                                           + '[data-testid=message-text]');
                            return t.length && t[t.length - 1].textContent.length >= chars; }""",
            arg=chars, timeout=timeout)

    def exchange(self, text: str, timeout: float = 15_000) -> dict[str, Any]:
        """Send `text`, wait for the reply to end with `done`; the done payload the server sent."""
        count = self.replies.count()
        self.send(text)
        reply = self.wait_for_reply_end(count + 1, timeout)
        expect(reply).to_have_attribute("data-status", "done")
        return self.done_event()

    # What went over the wire
    @property
    def chat_requests(self) -> list[Request]:
        return [r for r in self.requests if r.url.split("?")[0] == self.chat_url]

    def chat_bodies(self) -> list[Any]:
        return [r.post_data_json for r in self.chat_requests]

    def events(self, index: int = -1) -> list[Event]:
        """The SSE events of the index-th /chat response, read by the tests' own strict parser."""
        response = [r for r in self.responses if r.url.split("?")[0] == self.chat_url][index]
        assert response.finished() is None, "the /chat request did not complete"
        return parse_sse(body_text(response))

    def done_event(self, index: int = -1) -> dict[str, Any]:
        events = self.events(index)
        assert events[-1].event == "done", [e.event for e in events]
        return events[-1].json()

    def reply_states(self) -> list[str]:
        return self.page.evaluate("window.__replyStates")

    def active_testid(self) -> str | None:
        return self.page.evaluate("document.activeElement && document.activeElement.dataset.testid || null")

    def expect_idle(self) -> None:
        """The UI has recovered: the box and Send usable, Stop not, no cursor left, the log not busy."""
        expect(self.input).to_be_enabled()
        expect(self.send_button).to_be_enabled()
        expect(self.stop_button).to_be_disabled()
        expect(self.system_prompt).to_be_enabled()
        expect(self.page.get_by_test_id("cursor")).to_have_count(0)
        expect(self.page.get_by_test_id("messages")).to_have_attribute("aria-busy", "false")
