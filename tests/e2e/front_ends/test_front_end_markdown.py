"""Markdown in the typewriter chats: rendered as it streams, code blocks with a Copy button, and the model's text
never run as HTML — on the plain, React and Vue pages, in headless Chromium.

The reply comes from a real OpenAI-compatible upstream of our own (tests/support/markdown_upstream.py, under uvicorn on
127.0.0.1): our app runs with CHAT_PROVIDER=openai pointed at it, and the upstream streams one markdown text (a
heading, a list, bold, inline code, a link, a fenced code block, an inline <img onerror> and a <script> line) in
3-character pieces, a few milliseconds apart, so the page passes through many half-written states.

Needs `make playground` (the Vite builds and playground/node_modules).
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.support.fixtures import app_fixture, pointed_at, upstream_fixture
from tests.support.front_end_chat import PAGES, Chat
from tests.support.markdown_upstream import CODE, REPLY, XSS_FLAGS
from tests.support.servers import ROOT, LiveServer

PLAYGROUND = ROOT / "playground"
# vendored file → (npm package, its file in the package, the pinned version)
VENDORED = {
    "marked.esm.js": ("marked", "lib/marked.esm.js", "18.2.1"),
    "purify.es.mjs": ("dompurify", "dist/purify.es.mjs", "3.4.18"),
}


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    for framework in ("react", "vue"):
        assert (PLAYGROUND / framework / "dist" / "index.html").is_file(), "run `make playground` first"


markdown_upstream = upstream_fixture("tests.support.markdown_upstream:app", "markdown-upstream")
markdown_server = app_fixture("markdown-server", **pointed_at("markdown_upstream", "markdown"))


@pytest.fixture(params=list(PAGES))
def front_end(request: pytest.FixtureRequest) -> str:
    return PAGES[request.param]


# Every state of the last reply while it streams: its text, and what it is made of.
RECORD_MARKDOWN_STATES = """
() => {
  window.__markdownStates = [];
  const list = document.querySelector('[data-testid=messages]');
  const count = (el, selector) => el.querySelectorAll(selector).length;
  new MutationObserver(() => {
    const texts = list.querySelectorAll('[data-testid=message][data-role=assistant] [data-testid=message-text]');
    if (!texts.length) return;
    const el = texts[texts.length - 1];
    const states = window.__markdownStates;
    const html = el.innerHTML;
    if (states.length && states[states.length - 1].html === html) return;
    const code = el.querySelector('pre > code');
    states.push({
      html, text: el.textContent,
      counts: {h2: count(el, 'h2'), li: count(el, 'li'), strong: count(el, 'strong'), pre: count(el, 'pre'),
               a: count(el, 'a'), code: count(el, 'code')},
      code: code ? code.textContent : null,
      cursorIn: el.querySelector('[data-testid=cursor]')?.parentElement.nodeName ?? null,
    });
  }).observe(list, {subtree: true, childList: true, characterData: true});
}
"""

XSS_STATE = "(flags) => flags.map((flag) => window[flag])"


def assert_states_never_garbled(states: list[dict]) -> None:
    """Half-written markdown never shows as markup characters, and nothing once rendered turns back into text."""
    for state in states:
        assert "```" not in state["text"], f"a fence marker shown as text: {state['text']!r}"
        assert "**" not in state["text"], f"a bold marker shown as text: {state['text']!r}"
    for before, after in zip(states, states[1:]):
        dropped = {k: (v, after["counts"][k]) for k, v in before["counts"].items() if after["counts"][k] < v}
        assert not dropped, f"rendered elements went away mid-stream: {dropped}\n{before['text']!r}\n{after['text']!r}"


def test_markdown_renders_as_it_streams_and_the_model_text_never_runs(markdown_server: LiveServer, page: Page,
                                                                       front_end: str) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=markdown_server.url)
    chat = Chat(page, markdown_server, front_end).open()
    page.evaluate(RECORD_MARKDOWN_STATES)
    chat.send("Show me some markdown")
    reply = chat.wait_for_reply_end()
    expect(reply).to_have_attribute("data-status", "done")
    done = chat.done_event()
    assert done["full_response"] == REPLY  # the upstream's text arrived intact through the openai provider

    # The final reply: real elements, not markup characters.
    text = reply.get_by_test_id("message-text")
    expect(text.locator("h2")).to_have_text("Markdown, streamed")
    expect(text.locator("ul > li")).to_have_count(3)
    expect(text.locator("li strong")).to_have_text("Bold")
    expect(text.locator("li code")).to_have_text("code")
    link = text.get_by_role("link", name="link", exact=True)
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
    code = text.locator("pre > code")
    expect(code).to_have_count(1)
    assert code.text_content() == CODE  # every line, the indentation, `&` and `<friends>` kept as text
    expect(code).to_have_class("language-python")
    assert code.evaluate("e => getComputedStyle(e).fontFamily").endswith("monospace")
    assert code.evaluate("e => getComputedStyle(e.parentElement).whiteSpace") == "pre"
    assert not re.search(r"\*\*|```|^##", chat.reply_text(), re.M)
    # The same HTML on every page: one shared module, the same library versions (npm builds, vendored copies).
    assert chat.reply_html() == chat.rendered(REPLY)["html"]

    # The payloads are inert: shown as the text they are, never run, never fetched.
    assert page.evaluate(XSS_STATE, list(XSS_FLAGS)) == [None] * len(XSS_FLAGS)
    expect(text).to_contain_text('An inline <img src=x onerror="window.__xssImg = 1"> tag')
    expect(text.get_by_text("<script>window.__xssScript = 1</script>")).to_be_visible()
    expect(text.locator("img, script, iframe, svg, [onerror], [onload]")).to_have_count(0)
    js_link = text.locator("a", has_text="a javascript link")
    assert js_link.get_attribute("href") is None  # the javascript: URL was dropped by the sanitizer
    js_link.click()
    assert page.evaluate(XSS_STATE, list(XSS_FLAGS)) == [None] * len(XSS_FLAGS)
    assert not [r.url for r in chat.requests if r.url.endswith("/x")], "the <img src=x> was fetched"

    # While it streamed: many states, none garbled; the code block shown as code before its fence closed, with
    # the cursor inside it; the list growing item by item.
    states = page.evaluate("window.__markdownStates")
    assert len(states) >= 15, len(states)
    assert_states_never_garbled(states)
    open_code = [s["code"] for s in states if s["code"] is not None and s["code"] != CODE]
    assert open_code and all(CODE.startswith(c) for c in open_code), open_code
    assert any(s["cursorIn"] == "CODE" for s in states)
    # Shown while it grows: a list of fewer items than the last, before the reply ends (a front end may draw two
    # pieces in one frame when the machine is busy, so which counts are seen depends on load: not asserted).
    assert any(0 < s["counts"]["li"] < 3 for s in states[:-1]), [s["counts"]["li"] for s in states]
    assert states[-1]["cursorIn"] is None and states[-1]["html"] == chat.reply_html()

    # Copy puts the code block's text on the clipboard.
    copy = reply.get_by_test_id("copy")
    expect(copy).to_have_count(1)
    expect(copy).to_have_accessible_name("Copy code")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    expect(copy).to_have_text("Copy", timeout=5_000)
    assert not chat.page_errors and not chat.console_errors, (chat.page_errors, chat.console_errors)


# --- the shared module on its own, in the browser --------------------------------------------------------------------

EVERY_PREFIX = """
async ({text, flags}) => {
  const { renderMarkdown } = await import('/playground/shared/markdown.js');
  const box = document.createElement('div');
  document.body.append(box); // live in the document: anything that could run, would
  const count = (selector) => box.querySelectorAll(selector).length;
  const states = [];
  for (let n = 1; n <= text.length; n++) {
    box.innerHTML = renderMarkdown(text.slice(0, n), {streaming: true});
    states.push({text: box.textContent, html: box.innerHTML,
                 counts: {h2: count('h2'), li: count('li'), strong: count('strong'), pre: count('pre'),
                          a: count('a'), code: count('code')},
                 cursors: count('[data-testid=cursor]')});
  }
  box.innerHTML = renderMarkdown(text);
  await new Promise((resolve) => setTimeout(resolve, 100));
  return {states, final: box.innerHTML, cursors: count('[data-testid=cursor]'), flags: flags.map((f) => window[f])};
}
"""


def test_every_prefix_of_a_streamed_reply_renders_cleanly(markdown_server: LiveServer, page: Page) -> None:
    # Whatever the network does to the token boundaries, each prefix of the text is a state the page may show.
    page.goto(markdown_server.url + "/playground/")
    result = page.evaluate(EVERY_PREFIX, {"text": REPLY, "flags": list(XSS_FLAGS)})
    assert_states_never_garbled(result["states"])
    assert all(s["cursors"] == 1 for s in result["states"])
    assert result["cursors"] == 0 and result["flags"] == [None] * len(XSS_FLAGS)


RENDER_STREAMING = """
async (texts) => {
  const { renderMarkdown } = await import('/playground/shared/markdown.js');
  const box = document.createElement('div');
  return texts.map((text) => {
    box.innerHTML = renderMarkdown(text, {streaming: true});
    box.querySelector('[data-testid=cursor]').remove();
    return box.innerHTML;
  });
}
"""


def test_half_written_markdown_is_settled_while_streaming(markdown_server: LiveServer, page: Page) -> None:
    page.goto(markdown_server.url + "/playground/")
    cases = {
        "```py\nprint(1)\n": '<pre><code class="language-py">print(1)</code></pre>',  # unclosed fence: code to the end
        "```py\nprint(1)\n``": '<pre><code class="language-py">print(1)</code></pre>',  # the closing fence half-typed
        "Some text\n``": "<p>Some text</p>",  # maybe a fence: held back
        "A paragraph\n-": "<p>A paragraph</p>",  # not a setext heading for a moment
        "A paragraph\n==": "<p>A paragraph</p>",
        "Some **bol": "<p>Some <strong>bol</strong></p>",  # bold as soon as it starts
        "Some **bold*": "<p>Some <strong>bold</strong></p>",
        "- one\n- **": "<ul><li>one</li></ul>",
        "run `ls -": "<p>run <code>ls -</code></p>",
        "# Title": "<h1>Title</h1>",
    }
    rendered = page.evaluate(RENDER_STREAMING, list(cases))
    for (text, expected), html in zip(cases.items(), rendered):
        assert expected in html, (text, html)
    assert "<h2>" not in rendered[3] and "<h1>" not in rendered[4]


SANITIZE = """
async ({texts, flags}) => {
  const { renderMarkdown } = await import('/playground/shared/markdown.js');
  const out = [];
  for (const text of texts) {
    const box = document.createElement('div');
    document.body.append(box);
    box.innerHTML = renderMarkdown(text);
    out.push({html: box.innerHTML, text: box.textContent,
              tags: [...new Set([...box.querySelectorAll('*')].map((e) => e.nodeName.toLowerCase()))],
              handlers: [...box.querySelectorAll('*')].flatMap((e) => e.getAttributeNames()
                                                                    .filter((a) => a.startsWith('on'))),
              hrefs: [...box.querySelectorAll('[href]')].map((e) => e.getAttribute('href'))});
  }
  await new Promise((resolve) => setTimeout(resolve, 200)); // onerror/onload would have fired by now
  return {out, flags: flags.map((f) => window[f])};
}
"""

HOSTILE = [
    '<img src=x onerror="window.__pwned1 = 1">',
    'inline <img src=x onerror="window.__pwned1 = 1"> img',
    "<script>window.__pwned2 = 1</script>",
    '<svg onload="window.__pwned3 = 1"><circle r=5></circle></svg>',
    '<iframe src="javascript:parent.__pwned4 = 1"></iframe>',
    '<details open ontoggle="window.__pwned5 = 1">x</details>',
    '<a href="javascript:window.__pwned6 = 1">raw link</a>',
    "[md link](javascript:window.__pwned6=1) [upper](JAVASCRIPT:window.__pwned6=1) [data](data:text/html,hi)",
    "![image](javascript:window.__pwned7=1) ![pixel](https://tracker.example/p.png)",
    "<javascript:window.__pwned6=1>",
    '<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned8 = 1">',
    '<style>body { display: none }</style>',
    '```html\n<img src=x onerror="window.__pwned1 = 1">\n```',
    '`<img src=x onerror="window.__pwned1 = 1">`',
]
ALLOWED_TAGS = {"p", "br", "strong", "em", "del", "code", "pre", "ul", "ol", "li", "blockquote", "hr", "a", "h1",
                "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "input", "div", "span",
                "button"}


def test_hostile_text_is_shown_and_never_run(markdown_server: LiveServer, page: Page) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(markdown_server.url + "/playground/")
    flags = [f"__pwned{i}" for i in range(1, 9)]
    result = page.evaluate(SANITIZE, {"texts": HOSTILE, "flags": flags})
    assert result["flags"] == [None] * len(flags)
    for text, out in zip(HOSTILE, result["out"]):
        assert set(out["tags"]) <= ALLOWED_TAGS, (text, out["html"])
        assert not out["handlers"], (text, out["html"])
        assert all(h.startswith(("http://", "https://")) for h in out["hrefs"]), (text, out["hrefs"])
    # Raw HTML is shown as the text the model wrote.
    assert result["out"][0]["text"] == HOSTILE[0]
    assert result["out"][2]["text"] == HOSTILE[2]
    # An image is a link to it, never a request for it.
    assert 'href="https://tracker.example/p.png"' in result["out"][8]["html"]
    assert not [url for url in requests if "tracker.example" in url or url.endswith("/x")], requests


# --- the vendored libraries ------------------------------------------------------------------------------------------

def test_vendored_libraries_are_the_pinned_npm_builds() -> None:
    package = json.loads((PLAYGROUND / "package.json").read_text())
    lock = json.loads((PLAYGROUND / "package-lock.json").read_text())
    notes = (PLAYGROUND / "shared" / "vendor" / "README.md").read_text()
    for vendored, (name, path, version) in VENDORED.items():
        assert package["dependencies"][name] == version, "pinned exactly (npm install --save-exact)"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
        data = (PLAYGROUND / "shared" / "vendor" / vendored).read_bytes()
        assert data == (PLAYGROUND / "node_modules" / name / path).read_bytes(), f"{vendored} differs from npm's"
        assert version.encode() in data[:400] and b"licen" in data[:400].lower()  # the licence header, kept
        assert f"| {version} |" in notes
    index = (PLAYGROUND / "plain" / "index.html").read_text()
    imports = json.loads(re.search(r'<script type="importmap">(.*?)</script>', index, re.S).group(1))["imports"]
    assert imports == {"marked": "/playground/shared/vendor/marked.esm.js",
                       "dompurify": "/playground/shared/vendor/purify.es.mjs"}
    assert not re.search(r'(src|href)="(https?:)?//', index), "no CDN"


def test_plain_page_serves_its_vendored_libraries_only(markdown_server: LiveServer) -> None:
    for path in ("shared/vendor/marked.esm.js", "shared/vendor/purify.es.mjs", "shared/markdown.js"):
        response = httpx.get(f"{markdown_server.url}/playground/{path}")
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/javascript")  # module scripts need a JS type
        assert response.content == (PLAYGROUND / path).read_bytes()
    for path in ("shared/vendor/../../package.json", "shared/../package.json", "node_modules/marked/lib/marked.esm.js",
                 "package-lock.json"):
        assert httpx.get(f"{markdown_server.url}/playground/{path}").status_code == 404, path
