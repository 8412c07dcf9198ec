"""The Prometheus metrics: the OTel GenAI names in their Prometheus form, then ours (`chains_*`).

Labels are bounded: route, chain, provider, model, and closed lists (ending, status, error type, token type);
never user text, never a run id. With `--workers N` the launcher sets `PROMETHEUS_MULTIPROC_DIR` (a fresh
directory per server start) before any worker imports this module, so prometheus_client writes each value to a
per-process file and `render()` adds the processes up: any worker's scrape shows the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

STREAM_LABELS = ("route", "chain", "provider", "model")

# vLLM's buckets, with sub-millisecond ones in front: a scripted or cached model answers that fast.
TTFT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
GAP_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
                    163.84, 327.68, 655.36)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)

time_to_first_token = Histogram(
    "gen_ai_server_time_to_first_token_seconds", "Time from the request to the first token of a stream",
    STREAM_LABELS, buckets=TTFT_BUCKETS)
time_per_output_token = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Per stream: the mean gap between tokens after the first", STREAM_LABELS, buckets=GAP_BUCKETS)
token_usage = Histogram(
    "gen_ai_client_token_usage", "Tokens per generation by token type (input, output); _sum counts them all",
    (*STREAM_LABELS, "token_type"), buckets=TOKEN_BUCKETS)
operation_duration = Histogram(
    "gen_ai_client_operation_duration_seconds", "Time from the request to a stream's terminal event",
    STREAM_LABELS, buckets=DURATION_BUCKETS)
longest_gap = Histogram(
    "chains_stream_longest_gap_seconds", "Per stream: the longest silence between two tokens",
    STREAM_LABELS, buckets=GAP_BUCKETS)
stream_endings = Counter(
    "chains_stream_endings", "Streams ended, by how: done, cancelled, disconnect, timeout, shutdown, or the error "
    "type", (*STREAM_LABELS, "ending"))
streams_open = Gauge(
    "chains_streams_open", "Generations in flight", STREAM_LABELS, multiprocess_mode="livesum")
requests = Counter(
    "chains_http_requests", "HTTP requests answered, by route template, status and error type (the body's "
    "`type`; `validation` for a 422; empty below 400)", ("route", "method", "status", "error_type"))
local_queue_wait = Histogram(
    "chains_local_queue_wait_seconds", "Local model: from a generation's submission to its first decode step",
    ("model",), buckets=TTFT_BUCKETS)
local_queue_depth = Gauge(
    "chains_local_queue_depth", "Local model: generations waiting for the decode thread", ("model",),
    multiprocess_mode="livesum")
local_running = Gauge(
    "chains_local_generations_running", "Local model: generations decoding now", ("model",),
    multiprocess_mode="livesum")
time_to_first_reasoning = Histogram(
    "chains_time_to_first_reasoning_seconds", "Time from the request to a reasoning model's first piece of "
    "thinking (streams with reasoning only)", STREAM_LABELS, buckets=TTFT_BUCKETS)
time_to_first_answer = Histogram(
    "chains_time_to_first_answer_seconds", "Time from the request to the answer's first token (after any "
    "reasoning; the gen_ai time to first token counts either)", STREAM_LABELS, buckets=TTFT_BUCKETS)
# The upstream label is one of the configured OPENAI_BASE_URL list (without credentials): bounded.
upstream_retries = Counter(
    "chains_upstream_retries", "Upstream (OpenAI-compatible) calls that were retries of a failed one",
    ("model", "upstream"))
upstream_failures = Counter(
    "chains_upstream_failures", "Upstream answers that failed, by kind: rate_limited (429), auth (401/403), "
    "client_error (other 4xx), server_error (5xx)", ("model", "upstream", "kind"))
upstream_answers = Counter(
    "chains_upstream_answers", "Generations an upstream answered (its first chunk arrived)", ("model", "upstream"))
upstream_failovers = Counter(
    "chains_upstream_failovers", "Generations that moved past an upstream before its first chunk (refused, timed "
    "out, 5xx, 429) to the next one, or failed when it was the last", ("model", "upstream"))


def render() -> tuple[bytes, str]:
    """The text a scrape gets, and its content type: every worker's values, summed, in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
