"""The model's thinking in the typewriter chats (issue #25): on the plain, React and Vue pages, in headless Chromium,
a reply that carries `event: reasoning` shows a "Thinking…" block above the answer that streams the reasoning,
closes when the answer's first token arrives, opens again (and closes) when the reader asks, and shows the text
sanitized as the answer is; the conversation the pages send back holds the answers only; a reply without reasoning
shows no block; a reply re-attached after a reload gets its thinking back, once.

The reasoning comes from a real OpenAI-compatible upstream of our own (tests/support/reasoning_upstream.py, under
uvicorn on 127.0.0.1), as vLLM streams it (`reasoning_content` deltas, then the answer's `content`): our app runs
with CHAT_PROVIDER=openai, OPENAI_MODEL=reasoner pointed at it. Its `/_pace` slows the reasoning down so that the
page can be seen thinking; the reasoning holds a raw `<img src=x onerror=alert(1)>`.

Needs `make playground` (the Vite builds).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import httpx
import pytest
from playwright.sync_api import Dialog, Page, expect

from chains.models.fake import scripted_tokens
from tests.support.browser import squash
from tests.support.fixtures import app_fixture, pointed_at, upstream_fixture
from tests.support.front_end_chat import PAGES, Chat, body_text
from tests.support.reasoning_upstream import ANSWER, REASONING
from tests.support.servers import ROOT, LiveServer
from tests.support.sse import parse_sse

FULL_REASONING = "".join(REASONING)
FULL_ANSWER = "".join(ANSWER)
INJECTED = "<img src=x onerror=alert(1)>"
FAKE_TOKENS = 8

reasoning_upstream = upstream_fixture("tests.support.reasoning_upstream:app", "fe-reasoning-upstream")
reasoning_server = app_fixture("fe-reasoning-server", **pointed_at("reasoning_upstream", "reasoner"))
no_reasoning_server = app_fixture("fe-no-reasoning-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS=str(FAKE_TOKENS),
                                  doc="Scripted replies without reasoning: no thinking block.")


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    for framework in ("react", "vue"):
        assert (ROOT / "playground" / framework / "dist" / "index.html").is_file(), "run `make playground` first"


@pytest.fixture(params=list(PAGES))
def front_end(request: pytest.FixtureRequest) -> str:
    return PAGES[request.param]


def set_pace(upstream: LiveServer, **pace: Any) -> None:
    httpx.post(upstream.url + "/_pace", json=pace).raise_for_status()


@pytest.fixture
def upstream(reasoning_upstream: LiveServer) -> Iterator[LiveServer]:
    """The upstream, at its default pace before and after the test (its pace outlives a test: module scope)."""
    set_pace(reasoning_upstream)
    yield reasoning_upstream
    set_pace(reasoning_upstream)


@pytest.fixture
def dialogs(page: Page) -> list[str]:
    """The messages of every alert/confirm/prompt the page opens (each dismissed): none may open."""
    opened: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        opened.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", dismiss)
    return opened


# Every state of the last reply after each change of the log: its thinking block (there or not, open or not, its
# summary, its text), its answer, its status, where its cursors are.
RECORD_THINKING = """
() => {
  window.__thinking = [];
  const list = document.querySelector('[data-testid=messages]');
  const record = () => {
    const replies = list.querySelectorAll('[data-testid=message][data-role=assistant]');
    if (!replies.length) return;
    const reply = replies[replies.length - 1];
    const block = reply.querySelector('[data-testid=reasoning]');
    const state = {
      reply: replies.length,
      block: block !== null,
      open: block ? block.open : null,
      summary: block ? block.querySelector('summary').textContent : null,
      reasoning: block ? block.querySelector('[data-testid=reasoning-text]').textContent : null,
      answer: reply.querySelector('[data-testid=message-text]').textContent,
      status: reply.dataset.status,
      cursors: [...reply.querySelectorAll('[data-testid=cursor]')]
        .map((c) => (c.closest('[data-testid=reasoning]') ? 'reasoning' : 'answer')),
    };
    const states = window.__thinking;
    if (!states.length || JSON.stringify(states[states.length - 1]) !== JSON.stringify(state)) states.push(state);
  };
  new MutationObserver(record).observe(list, {subtree: true, childList: true, characterData: true,
                                              attributes: true, attributeFilter: ['open', 'data-status']});
}
"""

# The last reply is thinking, seen mid-way: the block open, part of the reasoning in it, no answer yet.
THINKING_PART_WAY = """
(full) => {
  const replies = document.querySelectorAll('[data-testid=message][data-role=assistant]');
  const reply = replies[replies.length - 1];
  const block = reply && reply.querySelector('[data-testid=reasoning]');
  if (!block) return false;
  const text = block.querySelector('[data-testid=reasoning-text]').textContent.replace(/\\s+/g, '');
  return block.open && text.length > 0 && text.length < full.length
    && reply.querySelector('[data-testid=message-text]').textContent === '';
}
"""


def assert_thought_then_answered(states: list[dict[str, Any]], reasoning_text: str, reply: int = 1) -> None:
    """The recorded states of reply `reply`: the thinking streamed, open and alone, then the answer closed it."""
    states = [s for s in states if s["reply"] == reply]
    full = squash(reasoning_text)
    with_block = [s for s in states if s["block"]]
    assert with_block, states
    assert states[states.index(with_block[0]):] == with_block, "the block went away once shown"
    # It grew piece by piece while open, alone (no answer yet), saying "Thinking…", the cursor in it.
    thinking = [s for s in with_block if s["answer"] == "" and s["status"] == "streaming"]
    partial = [s for s in thinking if 0 < len(squash(s["reasoning"])) < len(full)]
    assert len({s["reasoning"] for s in partial}) >= 2, "the reasoning did not stream piece by piece"
    for state in thinking:
        assert state["open"] and state["summary"] == "Thinking…" and state["cursors"] == ["reasoning"], state
    texts = [squash(s["reasoning"]) for s in with_block]
    assert all(full.startswith(t) for t in texts), texts
    assert all(a == b or b.startswith(a) for a, b in pairwise(texts)), "the reasoning shrank"
    # Once the answer shows: the whole reasoning is in the block, closed, "Thought"; one cursor, in the answer.
    answered = [s for s in with_block if s["answer"]]
    assert answered, with_block
    for state in answered:
        assert state["open"] is False and state["summary"] == "Thought" and texts[-1] == full, state
        assert state["cursors"] == (["answer"] if state["status"] == "streaming" else []), state
    assert all(len(s["cursors"]) <= 1 for s in states), "two cursors at once"


def test_thinking_streams_in_its_block_then_closes_for_the_answer(upstream: LiveServer, reasoning_server: LiveServer,
                                                                   page: Page, front_end: str,
                                                                   dialogs: list[str]) -> None:
    set_pace(upstream, gap_ms=300)  # 8 reasoning pieces 0.3 s apart: the page is seen thinking
    chat = Chat(page, reasoning_server, front_end).open()
    page.evaluate(RECORD_THINKING)
    question = "What is the meaning of life?"
    chat.send(question)
    reply = chat.reply()
    block = reply.get_by_test_id("reasoning")
    summary = block.get_by_test_id("reasoning-summary")
    thoughts = block.get_by_test_id("reasoning-text")
    full_text = chat.rendered(FULL_REASONING)["text"]

    # While it thinks: the block open above an empty answer, part of the reasoning in it.
    page.wait_for_function(THINKING_PART_WAY, arg=squash(full_text))
    expect(block).to_have_count(1)
    assert block.evaluate("(b) => b.compareDocumentPosition(b.closest('article')"
                          ".querySelector('[data-testid=message-text]')) & Node.DOCUMENT_POSITION_FOLLOWING")
    # Not announced token by token: the log is the page's one live region, and the thinking is left out of it.
    expect(thoughts).to_have_attribute("aria-live", "off")
    expect(page.locator("[aria-live]:not([aria-live=off]), [role=status], [role=alert]")).to_have_count(1)
    expect(page.get_by_test_id("messages")).to_have_attribute("aria-live", "polite")

    done_reply = chat.wait_for_reply_end()
    expect(done_reply).to_have_attribute("data-status", "done")
    done = chat.done_event()
    assert done["full_response"] == FULL_ANSWER and done["full_reasoning"] == FULL_REASONING
    events = chat.events()
    pieces = [e.json() for e in events if e.event == "reasoning"]
    assert [p["token"] for p in pieces] == REASONING and [p["token_count"] for p in pieces] == [1, 2, 3, 4, 5, 6,
                                                                                                   7, 8]
    assert_thought_then_answered(page.evaluate("window.__thinking"), full_text)

    # After `done`: closed, "Thought"; the answer alone below it, rendered as any answer is.
    expect(block).not_to_have_attribute("open", "")
    expect(summary).to_have_text("Thought")
    expect(thoughts).to_be_hidden()
    assert chat.reply_html() == chat.rendered(FULL_ANSWER)["html"]
    expect(reply.get_by_test_id("message-text").locator("strong")).to_have_text("42")

    # The reader opens it: the whole reasoning, rendered and sanitized as the answer is; the <img> is text.
    summary.click()
    expect(block).to_have_attribute("open", "")
    expect(thoughts).to_be_visible()
    assert thoughts.inner_html() == chat.rendered(FULL_REASONING)["html"]
    expect(thoughts).to_contain_text(INJECTED)
    expect(reply.locator("img, script, [onerror]")).to_have_count(0)
    assert not [r.url for r in chat.requests if r.url.endswith("/x")], "the <img src=x> was fetched"
    # It stays as the reader left it, and closes and opens again, from the keyboard too.
    summary.click()
    expect(block).not_to_have_attribute("open", "")
    summary.focus()
    page.keyboard.press("Enter")
    expect(block).to_have_attribute("open", "")
    expect(summary).to_have_text("Thought")

    # The next turn: the conversation sent back holds the answer, not the thinking; this reply keeps its block
    # open (the reader's choice), the new one has its own, closed once answered.
    set_pace(upstream, gap_ms=0)
    done = chat.exchange("And why?")
    assert done["full_reasoning"] == FULL_REASONING
    assert chat.chat_bodies()[-1]["messages"] == [{"role": "user", "content": question},
                                                  {"role": "assistant", "content": FULL_ANSWER},
                                                  {"role": "user", "content": "And why?"}]
    sent = httpx.get(upstream.url + "/_log").json()[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "assistant"] == [FULL_ANSWER]
    assert not [m for m in sent if set(m) - {"role", "content"}], sent  # no reasoning field sent back either
    expect(chat.reply(0).get_by_test_id("reasoning")).to_have_attribute("open", "")
    expect(chat.reply(1).get_by_test_id("reasoning")).not_to_have_attribute("open", "")
    expect(chat.reply(1).get_by_test_id("reasoning-summary")).to_have_text("Thought")
    assert chat.reply_html(1) == chat.rendered(FULL_ANSWER)["html"]

    assert dialogs == [], dialogs  # alert(1) never ran
    chat.expect_idle()
    assert not chat.page_errors and not chat.console_errors, (chat.page_errors, chat.console_errors)


def test_a_reply_without_reasoning_shows_no_thinking_block(no_reasoning_server: LiveServer, page: Page,
                                                           front_end: str) -> None:
    chat = Chat(page, no_reasoning_server, front_end).open()
    page.evaluate(RECORD_THINKING)
    done = chat.exchange("讲个笑话")
    assert done["full_response"] == "".join(scripted_tokens(FAKE_TOKENS)) and done["full_reasoning"] == ""
    assert not [e for e in chat.events() if e.event == "reasoning"]
    states = page.evaluate("window.__thinking")
    assert states and not [s for s in states if s["block"]], states
    # The cursor was in the answer while it streamed, as before there was thinking to show.
    assert any(s["cursors"] == ["answer"] for s in states if s["status"] == "streaming"), states
    expect(page.get_by_test_id("reasoning")).to_have_count(0)
    assert chat.reply_html() == chat.rendered(done["full_response"])["html"]
    assert not chat.page_errors and not chat.console_errors, (chat.page_errors, chat.console_errors)


def test_a_reply_re_attached_after_a_reload_gets_its_thinking_back_once(upstream: LiveServer,
                                                                       reasoning_server: LiveServer, page: Page,
                                                                       front_end: str, dialogs: list[str]) -> None:
    set_pace(upstream, gap_ms=300)
    chat = Chat(page, reasoning_server, front_end).open()
    chat.send("What is the meaning of life?")
    full_text = chat.rendered(FULL_REASONING)["text"]
    page.wait_for_function(THINKING_PART_WAY, arg=squash(full_text))

    # A reload mid-thought: the page re-attaches to the run, which is replayed from its start.
    page.reload()
    page.evaluate(RECORD_THINKING)
    expect(chat.replies).to_have_count(1)
    reply = chat.wait_for_reply_end()
    expect(reply).to_have_attribute("data-status", "done")
    rejoin = [r for r in chat.responses if "/chat/runs/" in r.url and r.url.endswith("/stream")]
    assert rejoin, [r.url for r in chat.responses]
    events = parse_sse(body_text(rejoin[-1]))
    assert [e.json()["token"] for e in events if e.event == "reasoning"] == REASONING
    assert events[-1].event == "done" and events[-1].json()["full_reasoning"] == FULL_REASONING

    # The whole thinking once (not what came before the reload and the replay after it), closed; then the answer.
    block = reply.get_by_test_id("reasoning")
    expect(block).to_have_count(1)
    expect(block).not_to_have_attribute("open", "")
    block.get_by_test_id("reasoning-summary").click()
    assert block.get_by_test_id("reasoning-text").inner_html() == chat.rendered(FULL_REASONING)["html"]
    assert chat.reply_html() == chat.rendered(FULL_ANSWER)["html"]
    states = page.evaluate("window.__thinking")
    assert all(s["open"] is False for s in states if s["answer"] and s["status"] == "streaming"), states
    assert dialogs == [], dialogs
    assert not chat.page_errors, chat.page_errors


def test_stopped_while_thinking_keeps_the_thinking_shown_and_out_of_the_history(
        upstream: LiveServer, reasoning_server: LiveServer, page: Page, front_end: str) -> None:
    set_pace(upstream, gap_ms=300)
    chat = Chat(page, reasoning_server, front_end).open()
    chat.send("What is the meaning of life?")
    full = squash(chat.rendered(FULL_REASONING)["text"])
    page.wait_for_function(THINKING_PART_WAY, arg=full)
    chat.stop_button.click()
    reply = chat.wait_for_reply_end()
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.get_by_test_id("stopped")).to_have_text("Stopped while thinking")
    # The thinking is all the reply has: left open, no cursor, no answer.
    block = reply.get_by_test_id("reasoning")
    expect(block).to_have_attribute("open", "")
    expect(block.get_by_test_id("reasoning-summary")).to_have_text("Thought")
    thought = squash(block.get_by_test_id("reasoning-text").text_content() or "")
    assert thought and full.startswith(thought), thought
    assert chat.reply_text() == ""
    chat.expect_idle()
    # Nothing of it goes back: the next turn is sent as if the stopped one had not been.
    set_pace(upstream, gap_ms=0)
    chat.exchange("And why?")
    assert chat.chat_bodies()[-1]["messages"] == [{"role": "user", "content": "And why?"}]


# --- the streaming client on its own -----------------------------------------------------------------------------

STREAM = """
async (text) => {
  const { streamChat } = await import('/playground/shared/sse-client.js');
  const realFetch = window.fetch;
  window.fetch = async () => new Response(text, {headers: {'Content-Type': 'text/event-stream'}});
  const seen = [];
  try {
    const outcome = await streamChat({
      body: {messages: []},
      onReasoning: (token, count) => seen.push(['reasoning', token, count]),
      onToken: (token, count) => seen.push(['answer', token, count]),
    });
    return {outcome, seen};
  } finally {
    window.fetch = realFetch;
  }
}
"""


def test_client_hands_reasoning_and_answer_apart(no_reasoning_server: LiveServer, page: Page) -> None:
    page.goto(no_reasoning_server.url + "/playground/")
    stream = ('id: r:1\nevent: reasoning\ndata: {"token": "<b>hm", "token_count": 1}\n\n'
              'id: r:2\nevent: reasoning\ndata: {"token": "m</b>", "token_count": 2}\n\n'
              'id: r:3\ndata: {"token": "Hi", "token_count": 1}\n\n'
              'id: r:4\nevent: done\ndata: {"status": "completed", "full_response": "Hi", '
              '"full_reasoning": "<b>hmm</b>", "token_count": 1}\n\n')
    result = page.evaluate(STREAM, stream)
    assert result["seen"] == [["reasoning", "<b>hm", 1], ["reasoning", "m</b>", 2], ["answer", "Hi", 1]]
    assert result["outcome"]["status"] == "done"
