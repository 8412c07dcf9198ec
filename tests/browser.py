"""Headless Debian Chromium driven by Playwright (Playwright cannot download its own browser here)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

# Records every distinct text of the page, so a test can see the answer grow token by token.
RECORD_TEXT_STATES = """
window.__states = [];
new MutationObserver(() => {
  const text = document.body.innerText;
  if (window.__states[window.__states.length - 1] !== text) window.__states.push(text);
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def squash(text: str) -> str:
    """Whitespace-insensitive form: the browser lays out newlines and runs of spaces its own way."""
    return re.sub(r"\s+", "", text)


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
