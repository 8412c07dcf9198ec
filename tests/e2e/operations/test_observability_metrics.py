"""/metrics, the stream log line, on a live server (one worker, then two): known traffic driven through the fault
upstream — streams that end, a timeout, a cancel, an upstream 429 (retried twice), a 422 — then every counter and
histogram count checked against it, in Prometheus' text format as prometheus_client's parser reads it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import LiveServer, running_app
from tests.support.sse import parse_sse

MESSAGE = "observability-probe-text"  # must never reach a log line
STREAM = {"chain": "system-prompt", "model": "fault", "provider": "openai", "route": "/chat"}
DONE_STREAMS = 3


def script(upstream: LiveServer, faults: list[str]) -> None:
    httpx.post(upstream.url + "/_script", json={"faults": faults}).raise_for_status()


def scrape(server: LiveServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by name and labels; a fresh connection each time (so, with two workers, either may answer)."""
    with httpx.Client() as client:
        response = client.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def stream(server: LiveServer, body: dict[str, Any], stop_after_tokens: int | None = None,
           query: str = "") -> tuple[httpx.Response, list[Any]]:
    with httpx.stream("POST", server.url + "/chat" + query, json=body, timeout=30) as response:
        events, text = [], ""
        for chunk in response.iter_text():
            text += chunk
            events = parse_sse(text)
            if stop_after_tokens is not None and sum(e.event == "message" for e in events) >= stop_after_tokens:
                break
    return response, events


@pytest.fixture(scope="module", params=[1, 2], ids=["one-worker", "two-workers"])
def observed(request: pytest.FixtureRequest, fault_upstream: LiveServer) -> Iterator[tuple[LiveServer, dict[str, Any]]]:
    """A server, and what was driven through it."""
    workers: int = request.param
    with running_app(f"observed-{workers}", workers=workers, CHAT_PROVIDER="openai", OPENAI_API_KEY="sk-test",
                     OPENAI_BASE_URL=f"{fault_upstream.url}/v1", OPENAI_MODEL="fault", OPENAI_TIMEOUT="5",
                     OPENAI_MAX_RETRIES="2", LOG_FORMAT="json" if workers == 1 else "text") as server:
        yield server, {**drive(server, fault_upstream), "workers": workers}


def drive(server: LiveServer, upstream: LiveServer) -> dict[str, Any]:
    # The upstream as metrics label it: its URL (chains.models.upstreams.upstream_label).
    driven: dict[str, Any] = {"cancel_statuses": Counter(), "upstream": upstream.url + "/v1"}
    for _ in range(DONE_STREAMS):
        script(upstream, ["ok"])
        _, events = stream(server, {"message": MESSAGE})
        assert events[-1].event == "done" and events[-1].json()["status"] == "completed"
    script(upstream, ["slow"])  # 400 tokens 50 ms apart: the 0.3 s limit ends it
    _, events = stream(server, {"message": MESSAGE, "timeout": 0.3})
    assert events[-1].event == "error" and events[-1].json()["type"] == "timeout"
    script(upstream, ["slow"])  # left running (on_disconnect=continue), then cancelled
    response, _ = stream(server, {"message": MESSAGE}, stop_after_tokens=2, query="?on_disconnect=continue")
    run_id = response.headers["x-run-id"]
    for _ in range(40):  # with two workers and runs in memory, only the generating worker knows the run: 404
        cancel = httpx.post(server.url + f"/chat/runs/{run_id}/cancel", timeout=10)
        driven["cancel_statuses"][cancel.status_code] += 1
        if cancel.status_code == 200:
            assert cancel.json()["cancelled"] is True
            break
    assert driven["cancel_statuses"][200] == 1
    script(upstream, ["429"] * 3)  # the first call and both retries
    _, events = stream(server, {"message": MESSAGE})
    assert events[-1].event == "error" and events[-1].json()["type"] == "rate_limited"
    refused = httpx.post(server.url + "/chat", json={"message": MESSAGE, "buffer_size": 0}, timeout=10)
    assert refused.status_code == 422
    return driven


def test_every_counter_and_histogram_count_equals_the_traffic_driven(observed) -> None:
    server, driven = observed
    samples = scrape(server)
    streams = DONE_STREAMS + 3  # + timeout, cancel, 429
    with_tokens = DONE_STREAMS + 2  # the 429 never produced a token
    endings = {"done": DONE_STREAMS, "timeout": 1, "cancelled": 1, "rate_limited": 1}
    for ending, count in endings.items():
        assert value(samples, "chains_stream_endings_total", **STREAM, ending=ending) == count, ending
    assert sum(v for (name, _), v in samples.items() if name == "chains_stream_endings_total") == streams
    assert value(samples, "gen_ai_client_operation_duration_seconds_count", **STREAM) == streams
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_count", **STREAM) == with_tokens
    assert value(samples, "gen_ai_server_time_per_output_token_seconds_count", **STREAM) == with_tokens
    assert value(samples, "chains_stream_longest_gap_seconds_count", **STREAM) == with_tokens
    # Every upstream is asked for usage: the completed streams report it; the stopped ones (timeout, cancel) and the
    # 429 never got to the usage chunk, and nothing is counted that was not reported.
    assert value(samples, "gen_ai_client_token_usage_count", **STREAM, token_type="output") == DONE_STREAMS
    assert value(samples, "chains_streams_open", **STREAM) == 0
    assert value(samples, "chains_http_requests_total", route="/chat", method="POST", status="200",
                 error_type="") == streams
    assert value(samples, "chains_http_requests_total", route="/chat", method="POST", status="422",
                 error_type="validation") == 1
    cancel_route = "/chat/runs/{run_id}/cancel"
    assert value(samples, "chains_http_requests_total", route=cancel_route, method="POST", status="200",
                 error_type="") == 1
    assert value(samples, "chains_http_requests_total", route=cancel_route, method="POST", status="404",
                 error_type="not_found") == driven["cancel_statuses"][404]
    assert value(samples, "chains_upstream_retries_total", model="fault", upstream=driven["upstream"]) == 2
    assert value(samples, "chains_upstream_failures_total", model="fault", upstream=driven["upstream"],
                 kind="rate_limited") == 3
    upstream = {"model": "fault", "upstream": driven["upstream"]}
    assert value(samples, "chains_upstream_answers_total", **upstream) == with_tokens  # its first chunk came
    assert value(samples, "chains_upstream_failovers_total", **upstream) == 1  # the 429: the only upstream failed
    # Bounded labels: no run id, no message text anywhere in the exposition.
    labels = {v for (_, pairs) in samples for _, v in pairs}
    assert not any(MESSAGE in label for label in labels)


def test_token_usage_counts_what_the_model_reported() -> None:
    with running_app("observed-tokens", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20") as server:
        prompt_tokens = completion_tokens = 0
        for _ in range(3):
            _, events = stream(server, {"message": MESSAGE})
            usage = events[-1].json()["usage"]
            prompt_tokens += usage["prompt_tokens"]
            completion_tokens += usage["completion_tokens"]
        samples = scrape(server)
    labels = {**STREAM, "provider": "fake", "model": "scripted"}
    assert completion_tokens == 60
    assert value(samples, "gen_ai_client_token_usage_sum", **labels, token_type="output") == completion_tokens
    assert value(samples, "gen_ai_client_token_usage_sum", **labels, token_type="input") == prompt_tokens > 0
    assert value(samples, "gen_ai_client_token_usage_count", **labels, token_type="output") == 3
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_count", **labels) == 3


def test_scrapes_through_any_worker_agree(observed) -> None:
    """One connection asks /health (which worker) then /metrics: the same worker answers both."""
    server, driven = observed
    workers = driven["workers"]
    by_worker: dict[int, dict[Any, float]] = {}
    for _ in range(60):
        with httpx.Client() as client:
            pid = client.get(server.url + "/health").json()["pid"]
            text = client.get(server.url + "/metrics").text
        by_worker[pid] = {(sample.name, frozenset(sample.labels.items())): sample.value
                          for family in text_string_to_metric_families(text) for sample in family.samples
                          if sample.name.startswith(("chains_stream_endings", "gen_ai_"))}
        if len(by_worker) == workers:
            break
    assert len(by_worker) == workers
    first, *others = by_worker.values()
    assert first and all(other == first for other in others)


def test_one_log_line_per_stream_whose_fields_parse(observed) -> None:
    server, _ = observed
    lines = [line for line in server.output().splitlines()
             if line.startswith('{"event":"stream_end"') or " stream end " in line]
    assert MESSAGE not in server.output().replace(f'"message": "{MESSAGE}"', "")
    records = [json.loads(line) if line.startswith("{") else parse_text_line(line) for line in lines]
    assert Counter(r["ending"] for r in records) == {"done": DONE_STREAMS, "timeout": 1, "cancelled": 1,
                                                    "rate_limited": 1}
    assert len({r["run_id"] for r in records}) == len(records) == DONE_STREAMS + 3
    for record in records:
        assert record["route"] == "/chat" and record["chain"] == "system-prompt"
        assert record["client"] == "127.0.0.1"
        assert float(record["duration_s"]) > 0
        assert int(record["tokens"]) >= 0
        if record["ending"] == "done":
            assert float(record["ttft_s"]) > 0 and int(record["tokens"]) == 10  # the upstream's reply


def parse_text_line(line: str) -> dict[str, str]:
    """`… stream end key=value …`: every field a key=value pair."""
    return dict(pair.split("=", 1) for pair in line.split(" stream end ", 1)[1].split())
