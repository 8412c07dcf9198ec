"""Headless Debian Chromium driven by Playwright (Playwright cannot download its own browser here)."""

from __future__ import annotations

import re
import shutil

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
