"""A browser `EventSource` opened on `GET /chat` in headless Chromium receives start → tokens → done."""

from __future__ import annotations

from playwright.sync_api import Page

from tests.support.sse import run_positions

COLLECT = """
async (query) => new Promise((resolve, reject) => {
  const events = [];
  const source = new EventSource('/chat?' + new URLSearchParams(query));
  source.addEventListener('start', (e) => events.push({type: 'start', data: JSON.parse(e.data), id: e.lastEventId}));
  source.onmessage = (e) => events.push({type: 'token', data: JSON.parse(e.data), id: e.lastEventId});
  source.addEventListener('done', (e) => {
    events.push({type: 'done', data: JSON.parse(e.data), id: e.lastEventId});
    source.close();  // a finished stream must be closed, or EventSource reconnects and generates again
    resolve(events);
  });
  source.addEventListener('error', (e) => { source.close(); reject(new Error('stream error: ' + (e.data || 'connection'))); });
  setTimeout(() => { source.close(); reject(new Error('timed out')); }, 20000);
})
"""


def test_event_source_receives_start_tokens_done(slow_fake_server, page: Page) -> None:
    page.goto(slow_fake_server.url + "/playground/")  # same origin as the API
    events = page.evaluate(COLLECT, {"message": "讲个笑话", "system_prompt": "你是一个有用的助手"})
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    tokens = [e["data"]["token"] for e in events if e["type"] == "token"]
    assert len(tokens) == 8
    assert "".join(tokens) == events[-1]["data"]["full_response"]
    assert run_positions([e["id"] for e in events])[1] == list(range(len(events)))
