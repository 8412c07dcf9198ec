"""Each chain's LangServe playground, in headless Chromium, against the default deployment (embedded model)."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.support.browser import RECORD_TEXT_STATES, squash
from tests.support.servers import ARTIFACTS


def invoke(server_url: str, chain: str, given: object) -> str:
    response = httpx.post(f"{server_url}/{chain}/invoke", json={"input": given}, timeout=60)
    response.raise_for_status()
    return response.json()["output"]


def test_single_turn_playground_runs_the_chain(local_server, page: Page) -> None:
    question = "What is the capital of France?"
    expected = invoke(local_server.url, "single-turn", question)  # temperature 0: the browser must get the same
    page.goto(f"{local_server.url}/single-turn/playground/")
    page.locator("textarea").first.fill(question)
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_text("Output", exact=True)).to_be_visible(timeout=30_000)
    page.wait_for_function("expected => document.body.innerText.replace(/\\s+/g, '').includes(expected)",
                           arg=squash(expected)[:200], timeout=30_000)
    page.screenshot(path=ARTIFACTS / "playground-single-turn.png", full_page=True)


def test_system_prompt_playground_shows_the_default_and_runs(local_server, page: Page) -> None:
    given = {"message": "Name a colour.", "system_prompt": "你是一个有用的助手"}
    expected = invoke(local_server.url, "system-prompt", given)
    page.goto(f"{local_server.url}/system-prompt/playground/")
    inputs = page.locator("textarea")
    expect(inputs.nth(1)).to_have_value("你是一个有用的助手")  # the schema's default reaches the form
    inputs.first.fill(given["message"])
    page.get_by_role("button", name="Start").click()
    page.wait_for_function("expected => document.body.innerText.replace(/\\s+/g, '').includes(expected)",
                           arg=squash(expected)[:200], timeout=30_000)
    page.screenshot(path=ARTIFACTS / "playground-system-prompt.png", full_page=True)


def test_conversation_chat_playground_streams_an_answer(local_server, page: Page) -> None:
    message = "Tell me a fun fact about cats."
    # The chat playground sends LangChain-style {type, content} turns; its answer must match the API's.
    expected = invoke(local_server.url, "conversation", {"messages": [{"type": "human", "content": message}]})
    page.goto(f"{local_server.url}/conversation/playground/")
    box = page.get_by_placeholder("Send a message...")
    expect(box).to_be_visible(timeout=15_000)  # a chat window, not the "only supported for…" notice
    assert "only supported" not in page.inner_text("body")
    page.evaluate(RECORD_TEXT_STATES)
    box.fill(message)
    box.press("Enter")
    page.wait_for_function("expected => document.body.innerText.replace(/\\s+/g, '').includes(expected)",
                           arg=squash(expected), timeout=30_000)
    page.screenshot(path=ARTIFACTS / "playground-conversation.png", full_page=True)
    states = [squash(s) for s in page.evaluate("window.__states")]
    partial = {s for s in states if squash(message) in s and squash(expected) not in s and "AI" in s}
    assert len(partial) >= 2, "the answer should appear token by token, not all at once"
