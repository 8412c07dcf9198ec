"""The openai provider over real upstreams (issue #25), on live servers on 127.0.0.1:

- usage: the provider asks the upstream for it on every call, whatever the client asked of us, and what it reports
  reaches /chat `done.usage`, the /v1 completion's `usage` and its include_usage chunk, and /metrics
  (`gen_ai_client_token_usage_sum`), number for number (here the scripted upstream's; llama.cpp's server's in
  tests/e2e/openai/test_upstream_usage.py);
- failover over OPENAI_BASE_URL's list: a refused connection or a 503 before the first chunk moves the request to
  the next upstream, which the stream log line and `chains_upstream_answers` name, and the one that failed is not
  tried again while it cools down; a failure after the first chunk is the stream's typed error, never another
  upstream's text spliced in;
- the cap: with OPENAI_MAX_CONCURRENCY=N an upstream never has more than N calls of ours at once, one request
  waits in the queue (OPENAI_QUEUE_SIZE=1) and then completes, the next gets 503 `upstream_busy` with Retry-After
  in each surface's shape;
- bad settings (an empty list element, a URL without its scheme, a negative cap) stop start-up with one line.

The upstreams: tests/support/fault_upstream.py, two instances, scripted per request, each logging what it was asked
and when."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fault_upstream import TOKENS
from tests.support.fixtures import app_fixture, pointed_at, upstream_fixture, url_of
from tests.support.logs import logfmt_pairs
from tests.support.servers import HOST, ROOT, LiveServer, clean_env, free_port
from tests.support.sse import Event, parse_sse, sse_request

SCRIPTED_REPLY = "".join(TOKENS)  # what the fault upstream answers when scripted "ok"
SCRIPTED_USAGE = {"prompt_tokens": 7, "completion_tokens": len(TOKENS), "total_tokens": 7 + len(TOKENS)}
USER = [{"role": "user", "content": "hi there"}]
CAP = 2  # OPENAI_MAX_CONCURRENCY of the capped server

first_upstream = upstream_fixture("tests.support.fault_upstream:app", "fault-upstream-first",
                                  doc="A fault upstream, first in the failover servers' lists.")
second_upstream = upstream_fixture("tests.support.fault_upstream:app", "fault-upstream-second",
                                   doc="Another fault upstream, second in those lists: the one to fail over to.")


@pytest.fixture(scope="module")
def dead_port() -> int:
    """A loopback port nothing listens on (refused at once); a test may listen on it later, to see who knocks."""
    return free_port()


def upstream_list(*parts: Callable[[pytest.FixtureRequest], str]) -> Callable[[pytest.FixtureRequest], str]:
    """OPENAI_BASE_URL as a comma-separated list of settings resolved when the app starts."""
    return lambda request: ",".join(part(request) for part in parts)


def dead_url(request: pytest.FixtureRequest) -> str:
    return f"http://{HOST}:{request.getfixturevalue('dead_port')}/v1"


TWO_UPSTREAMS = {**pointed_at("first_upstream", "fault"),
                 "OPENAI_BASE_URL": upstream_list(url_of("first_upstream", "/v1"), url_of("second_upstream", "/v1"))}

scripted_usage_server = app_fixture("scripted-usage-server", **pointed_at("first_upstream", "fault"),
                                    OPENAI_TIMEOUT="10", doc="The openai provider pointed at one fault upstream.")
refused_first_server = app_fixture(
    "refused-first-server", **{**pointed_at("first_upstream", "fault"),
                               "OPENAI_BASE_URL": upstream_list(dead_url, url_of("second_upstream", "/v1"))},
    OPENAI_TIMEOUT="5",
    doc="First in the list: a port nothing listens on; second: a working fault upstream.")
failover_server = app_fixture(
    "failover-server", **TWO_UPSTREAMS, OPENAI_TIMEOUT="10",
    doc="Two fault upstreams, in order.")
mid_stream_server = app_fixture(
    "mid-stream-server", **TWO_UPSTREAMS, OPENAI_TIMEOUT="10",
    doc="Two fault upstreams, in order, neither cooled down yet.")
capped_server = app_fixture(
    "capped-server", **pointed_at("first_upstream", "fault"), OPENAI_TIMEOUT="10",
    OPENAI_MAX_CONCURRENCY=str(CAP), OPENAI_QUEUE_SIZE="1",
    doc=f"One fault upstream taking {CAP} calls at once, one more request waiting.")


# --- helpers ---------------------------------------------------------------------------------------------------

def script(upstream: LiveServer, faults: list[str]) -> None:
    """The upstream's next answers; its log starts afresh."""
    httpx.post(upstream.url + "/_script", json={"faults": faults}, timeout=10).raise_for_status()


def upstream_log(upstream: LiveServer) -> list[dict[str, Any]]:
    return httpx.get(upstream.url + "/_log", timeout=10).json()


def chat(server: LiveServer, body: dict[str, Any]) -> list[Event]:
    response = httpx.post(server.url + "/chat", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return parse_sse(response.text)


def sdk(server: LiveServer) -> openai.OpenAI:
    # No retries: each test sees exactly what the server answered.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-unused", max_retries=0, timeout=60)


def scrape(server: LiveServer) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def token_usage(server: LiveServer) -> dict[str, float]:
    """`gen_ai_client_token_usage_sum` by token type, over every route, chain and model."""
    sums = {"input": 0.0, "output": 0.0}
    for name, labels, value in scrape(server):
        if name == "gen_ai_client_token_usage_sum":
            sums[labels["token_type"]] += value
    return sums


def answers(server: LiveServer) -> dict[str, float]:
    """`chains_upstream_answers` by upstream."""
    return {labels["upstream"]: value for name, labels, value in scrape(server)
            if name == "chains_upstream_answers_total"}


def usage_grows_to(server: LiveServer, before: dict[str, float], grown: dict[str, int]) -> dict[str, float]:
    """The token usage sums once they have grown by `grown` (a stream's record lands as it ends: poll, bounded),
    or as they are after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        now = token_usage(server)
        if all(now[kind] - before[kind] >= grown[kind] for kind in grown) or time.monotonic() > deadline:
            return {kind: now[kind] - before[kind] for kind in now}
        time.sleep(0.05)


def stream_end_fields(server: LiveServer, run_id: str) -> dict[str, str]:
    """The fields of this run's `stream end` log line (the server's stderr), once it is written (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in server.output().splitlines()
                 if " stream end " in line and f"run_id={run_id} " in line]
        if lines:
            assert len(lines) == 1, lines
            return dict(logfmt_pairs(lines[0].split(" stream end ", 1)[1]))
        assert time.monotonic() < deadline, f"no stream end line for {run_id} in {server.log}"
        time.sleep(0.05)


def three(usage: dict[str, Any] | Any) -> dict[str, int]:
    """prompt, completion and total tokens of a usage (a dict, or the SDK's object)."""
    fields = ("prompt_tokens", "completion_tokens", "total_tokens")
    if isinstance(usage, dict):
        return {name: usage[name] for name in fields}
    return {name: getattr(usage, name) for name in fields}


def done_of(events: list[Event]) -> dict[str, Any]:
    assert events[-1].event == "done", [(e.event, e.data) for e in events[-3:]]
    return events[-1].json()


# --- usage -----------------------------------------------------------------------------------------------------

def test_usage_from_a_scripted_upstream_reaches_every_surface(first_upstream: LiveServer,
                                                             scripted_usage_server: LiveServer) -> None:
    server = scripted_usage_server
    before = token_usage(server)
    script(first_upstream, ["ok", "ok", "ok"])
    done = done_of(chat(server, {"message": "hi"}))
    assert done["full_response"] == SCRIPTED_REPLY
    assert three(done["usage"]) == SCRIPTED_USAGE
    assert done["usage"].get("completion_tokens_details") is None  # the upstream sent none
    client = sdk(server)
    completion = client.chat.completions.create(model="single-turn", messages=USER)
    assert completion.usage is not None and three(completion.usage) == SCRIPTED_USAGE
    chunks = list(client.chat.completions.create(model="single-turn", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert three(chunks[-1].usage) == SCRIPTED_USAGE
    assert all(chunk.usage is None for chunk in chunks[:-1])
    # The provider asked the upstream for usage every time, whatever the client asked of us.
    asked = upstream_log(first_upstream)
    assert [(e["stream"], e["include_usage"]) for e in asked] == [(True, True)] * 3
    grown = {"input": 3 * SCRIPTED_USAGE["prompt_tokens"], "output": 3 * SCRIPTED_USAGE["completion_tokens"]}
    assert usage_grows_to(server, before, grown) == grown


# --- failover --------------------------------------------------------------------------------------------------

def test_a_refused_first_upstream_fails_over_and_cools_down(dead_port: int, second_upstream: LiveServer,
                                                           refused_first_server: LiveServer) -> None:
    server = refused_first_server
    first, second = f"http://{HOST}:{dead_port}/v1", f"{second_upstream.url}/v1"
    script(second_upstream, [])
    events = chat(server, {"message": "hi"})
    assert done_of(events)["full_response"] == SCRIPTED_REPLY
    assert stream_end_fields(server, events[0].json()["run_id"])["upstream"] == second
    # The first is cooling down now: listen on its port, so that a connection to it would be seen.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, dead_port))
        listener.listen(8)
        listener.setblocking(False)
        events = chat(server, {"message": "hi again"})
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked: the second request went straight to the second upstream
    assert done_of(events)["full_response"] == SCRIPTED_REPLY
    assert stream_end_fields(server, events[0].json()["run_id"])["upstream"] == second
    assert answers(server) == {second: 2}, first  # the first never answered (no sample at all)
    assert len(upstream_log(second_upstream)) == 2


def test_a_503_fails_over_and_the_cool_down_skips_it_next_time(first_upstream: LiveServer,
                                                               second_upstream: LiveServer,
                                                               failover_server: LiveServer) -> None:
    server = failover_server
    first, second = f"{first_upstream.url}/v1", f"{second_upstream.url}/v1"
    script(first_upstream, ["503"])  # then "ok": were it asked again, it would answer
    script(second_upstream, [])
    run_ids = []
    for message in ("hi", "hi again"):
        events = chat(server, {"message": message})
        assert done_of(events)["full_response"] == SCRIPTED_REPLY
        run_ids.append(events[0].json()["run_id"])
    # One request to the first across two of ours: no SDK retry (it is not the last), then skipped while cooling.
    assert [(e["fault"], e["include_usage"]) for e in upstream_log(first_upstream)] == [("503", True)]
    assert [(e["fault"], e["include_usage"]) for e in upstream_log(second_upstream)] == [("ok", True)] * 2
    assert [stream_end_fields(server, run_id)["upstream"] for run_id in run_ids] == [second, second]
    assert answers(server).get(first, 0) == 0 and answers(server)[second] == 2


def test_a_failure_after_the_first_token_is_the_streams_error(first_upstream: LiveServer,
                                                              second_upstream: LiveServer,
                                                              mid_stream_server: LiveServer) -> None:
    server = mid_stream_server
    script(first_upstream, ["drop"])  # three tokens, then the connection is cut
    script(second_upstream, [])
    events = chat(server, {"message": "hi"})
    assert [e.event for e in events] == ["start", "message", "message", "message", "error"]
    assert [e.json()["token"] for e in events[1:4]] == TOKENS[:3]
    assert events[-1].json()["type"] == "upstream_error"
    assert upstream_log(second_upstream) == []  # no text from it spliced in: it was never asked
    assert [e["fault"] for e in upstream_log(first_upstream)] == ["drop"]
    assert stream_end_fields(server, events[0].json()["run_id"])["upstream"] == f"{first_upstream.url}/v1"


# --- the cap ---------------------------------------------------------------------------------------------------

async def first_token(lines: AsyncIterator[str]) -> None:
    async with asyncio.timeout(15):
        async for line in lines:
            if line.startswith('data: {"token"'):
                return
    raise AssertionError("the stream ended before its first token")


def ended(entry: dict[str, Any]) -> float:
    """When an upstream request stopped being open: its client left, or its answer ended."""
    return float(entry["left"] if entry["left"] is not None else entry["closed"])


def most_at_once(log: list[dict[str, Any]]) -> int:
    """The most requests the upstream had open at one time, from when each started and ended."""
    edges = sorted([(e["started"], 1) for e in log] + [(ended(e), -1) for e in log])  # an end sorts first
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def test_the_cap_bounds_calls_in_flight_and_its_queue_refuses_the_rest(first_upstream: LiveServer,
                                                                      capped_server: LiveServer) -> None:
    server = capped_server
    script(first_upstream, ["slow"] * CAP + ["ok"])  # CAP replies of 20 s (closed early below), then a quick one

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client, AsyncExitStack() as held:
            slow: list[tuple[httpx.Response, AsyncIterator[str]]] = []
            for i in range(CAP):
                response = await held.enter_async_context(client.stream("POST", "/chat", json={"message": f"{i}"}))
                assert response.status_code == 200
                lines = response.aiter_lines()  # kept: an iterator dropped would close its response
                await first_token(lines)
                slow.append((response, lines))
            assert [e["fault"] for e in upstream_log(first_upstream)] == ["slow"] * CAP  # both slots taken
            # Two more at once: one takes the queue's place, the other finds it taken.
            pair = [asyncio.create_task(sse_request(HOST, server.port, "POST", "/chat", {"message": f"more {i}"},
                                                    timeout=30)) for i in range(2)]
            finished, _ = await asyncio.wait(pair, timeout=15, return_when=asyncio.FIRST_COMPLETED)
            assert len(finished) == 1, "neither of the two was refused"
            refused = finished.pop().result()
            [waiting] = [task for task in pair if not task.done()]
            assert refused.status == 503, refused
            assert int(refused.headers["retry-after"]) >= 1
            body = json.loads(refused.body)
            assert set(body) == {"error", "type"} and body["type"] == "upstream_busy", body
            # /v1 while the queue is full: OpenAI's error shape, which the SDK reads.
            async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="sk-unused", max_retries=0,
                                          timeout=15) as v1:
                with pytest.raises(openai.APIStatusError) as busy:
                    await v1.chat.completions.create(model="single-turn", messages=USER)  # type: ignore[arg-type]
            error = busy.value
            assert error.status_code == 503 and error.code == "upstream_busy", error.body
            assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "param", "code"}
            assert int(error.response.headers["retry-after"]) >= 1
            assert not waiting.done() and len(upstream_log(first_upstream)) == CAP  # it waits, upstream unasked
            await slow[0][0].aclose()  # a slot frees: the waiting request goes upstream and completes
            result = await asyncio.wait_for(waiting, 15)
            assert result.error is None and result.status == 200, result
            assert result.events[-1].event == "done", result.events[-3:]
            assert result.events[-1].json()["full_response"] == SCRIPTED_REPLY
        # Leaving the block closed the other slow stream.

    asyncio.run(scenario())
    deadline = time.monotonic() + 10
    log = upstream_log(first_upstream)
    while any(e["closed"] is None for e in log) and time.monotonic() < deadline:
        time.sleep(0.05)
        log = upstream_log(first_upstream)
    assert [e["fault"] for e in log] == ["slow"] * CAP + ["ok"]  # the refused two never reached it
    assert all(e["closed"] is not None for e in log), log
    assert max(e["in_flight"] for e in log) == CAP, log  # counted by the upstream as each arrived
    assert most_at_once(log) == CAP, log  # and from the times each was open
    assert log[CAP]["started"] >= min(ended(e) for e in log[:CAP]), "the waiting request did not wait"
    assert all(e["tokens"] < 400 for e in log[:CAP])  # closed early, not streamed to the end


# --- configuration ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("settings", "named"), [
    ({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1,,"}, "OPENAI_BASE_URL"),
    ({"OPENAI_BASE_URL": "127.0.0.1:9000/v1"}, "OPENAI_BASE_URL"),
    ({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OPENAI_MAX_CONCURRENCY": "-1"}, "OPENAI_MAX_CONCURRENCY"),
], ids=["empty-element", "no-scheme", "negative-cap"])
def test_a_bad_upstream_setting_stops_start_up_with_one_line(settings: dict[str, str], named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "server:app", "--host", HOST, "--port", "0"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env=clean_env(CHAT_PROVIDER="openai", OPENAI_API_KEY="sk-test", **settings))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"config error: {named}: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
