"""/playground/stats in Chromium: the live page reads /metrics and shows what was driven (endings, streams open,
TTFT quantiles, tokens/s), and says so when /metrics refuses it."""

from __future__ import annotations

import re
import time

import httpx
from playwright.sync_api import Page, expect
from prometheus_client.parser import text_string_to_metric_families

from tests.support.browser import RECORD_TEXT_STATES
from tests.support.fixtures import ServeApp, app_fixture
from tests.support.servers import ARTIFACTS, LiveServer

stats_server = app_fixture("stats-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20", FAKE_TOKEN_DELAY_MS="5")


def test_the_stats_page_plots_the_streams_driven(stats_server: LiveServer, page: Page) -> None:
    page.goto(stats_server.url + "/playground/stats?poll_ms=300")
    page.evaluate(RECORD_TEXT_STATES)
    expect(page.locator("#status")).to_contain_text("updated", timeout=10_000)
    expect(page.locator("#endings")).to_have_text("none yet")
    for _ in range(3):
        assert "event: done" in httpx.post(stats_server.url + "/chat", json={"message": "hi"}, timeout=20).text
    httpx.post(stats_server.url + "/chat", json={"message": "hi", "timeout": 0.02}, timeout=20)
    expect(page.locator("#endings")).to_have_text("done 3 · timeout 1", timeout=10_000)
    expect(page.locator("#open")).to_have_text("0 open")
    output_tokens = sum(sample.value for family in text_string_to_metric_families(
        httpx.get(stats_server.url + "/metrics").text) for sample in family.samples
        if sample.name == "gen_ai_client_token_usage_sum" and sample.labels["token_type"] == "output")
    assert output_tokens >= 60  # three replies of 20, and what the timed-out one counted
    expect(page.locator("#tps")).to_contain_text(f"{output_tokens:g} in all")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = page.evaluate("window.__states")
        if any(re.search(r"p50 \d", state) for state in states) and any(
                re.search(r"\d+(\.\d+)? tokens/s", state) and not re.search(r"\b0 tokens/s", state)
                for state in states):
            break
        time.sleep(0.2)
    states = page.evaluate("window.__states")
    assert any(re.search(r"p50 \d[\d.e-]* · p99 \d", state) for state in states), [s for s in states if "p50" in s][:5]  # the TTFT of the streams
    assert any(re.search(r"time per token p99 \d", state) for state in states)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "stats-page.png"), full_page=True)
    canvas_drawn = page.evaluate("""() => {
        const canvas = document.getElementById('endings-chart');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        return data.some((v, i) => i % 4 === 3 && v > 0);
    }""")
    assert canvas_drawn


def test_the_stats_page_says_when_metrics_are_refused(serve_app: ServeApp, page: Page) -> None:
    server = serve_app("stats-keyed-server", CHAT_PROVIDER="fake", API_KEYS="stats-test-key")
    page.goto(server.url + "/playground/stats/?poll_ms=300")
    # With API_KEYS the page itself needs the key too: the browser is sent to sign in. Signed in, it works.
    page.get_by_label("API key").fill("stats-test-key")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.url + "/playground/stats/?poll_ms=300")
    expect(page.locator("#status")).to_contain_text("updated", timeout=10_000)
    page.context.clear_cookies()
    expect(page.locator("#status")).to_contain_text("cannot read /metrics: /metrics answered 401",
                                                     timeout=10_000)
