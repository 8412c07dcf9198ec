"""The README's screenshots of the typewriter chats, taken against the embedded model (not a test).

    make playground && .venv/bin/python -m tests.support.front_end_screenshots

writes playground/screenshots/{plain-desktop,react-phone}.png: one finished exchange, a second reply caught
mid-stream (the cursor showing).
"""

from __future__ import annotations

from playwright.sync_api import sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.front_end_chat import PAGES, Chat
from tests.support.servers import ROOT, running_app

OUT = ROOT / "playground" / "screenshots"
SHOTS = {
    "plain-desktop": ("plain", {"viewport": {"width": 960, "height": 640}}),
    "react-phone": ("react", {"viewport": {"width": 390, "height": 760}, "is_mobile": True, "has_touch": True}),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with running_app("front-end-screenshots", MAX_TOKENS="48", TEMPERATURE="0") as server, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, (front_end, options) in SHOTS.items():
            context = browser.new_context(**options)
            page = context.new_page()
            chat = Chat(page, server, PAGES[front_end]).open()
            chat.exchange("你好，你是谁？")
            chat.send("What is token streaming?")
            chat.wait_for_reply_length(60, timeout=60_000)
            page.screenshot(path=OUT / f"{name}.png", animations="disabled")  # the cursor shown
            chat.stop_button.click()
            context.close()
            print(OUT / f"{name}.png")
        browser.close()


if __name__ == "__main__":
    main()
