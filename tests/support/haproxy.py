"""A real HAProxy (Debian's `haproxy`, 2.6) in front of replicas on loopback, run with the config we ship,
deploy/haproxy.cfg, unchanged: its addresses come from the environment (CHAINS_LISTEN, CHAINS_REPLICA_1..3,
HAPROXY_STATS_SOCKET), so the config the tests run is the config an operator copies.

    with running_haproxy(replicas) as balancer:
        balancer.url                       # the frontend
        balancer.wait_for_states({"replica1": "UP", ...})
        balancer.cut("replica2")           # HAProxy closes every connection it holds to that replica

The runtime API (its stats socket, in a temporary directory of the test's) tells the servers' states as the
health checks on /health/ready see them, and can cut a replica's connections: a real cut, from the balancer's
side of the wire. HAProxy runs under the tests' harness (tests.support.servers): its own process group, its own
log file (HAProxy logs every request and every change of a server's state there), dies with the test process.
"""

from __future__ import annotations

import csv
import io
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import HOST, ROOT, LiveServer, clean_env, free_port, start_process, stop_process

HAPROXY = "/usr/sbin/haproxy"
CONFIG = ROOT / "deploy" / "haproxy.cfg"
BACKEND = "replicas"  # the backend's name in deploy/haproxy.cfg
SERVER_NAMES = ("replica1", "replica2", "replica3")  # its server lines, in order


@dataclass
class Balancer:
    process: LiveServer  # haproxy itself; its `url` is the frontend's
    stats_socket: Path
    replicas: dict[str, LiveServer]  # by server name in the config

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def port(self) -> int:
        return self.process.port

    def command(self, line: str, seconds: float = 5) -> str:
        """One runtime API command, its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(seconds)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_stats(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers, by server name: `status` (UP, DOWN, `UP 1/2` going down, `DOWN
        1/2` going up, MAINT…), `scur` (connections open now), `stot` (connections so far)…"""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["svname"] in self.replicas}

    def states(self) -> dict[str, str]:
        """Each server's state as the health checks see it."""
        return {name: row["status"] for name, row in self.server_stats().items()}

    def wait_for_states(self, wanted: Mapping[str, str], seconds: float = 15) -> float:
        """Waits until the servers named in `wanted` are in those states (e.g. {"replica1": "DOWN"}); returns how
        long that took. Raises with the last states seen after `seconds`."""
        started = time.monotonic()
        deadline = started + seconds
        while True:
            states = self.states()
            if all(states.get(name) == state for name, state in wanted.items()):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy's servers are {states}, not {dict(wanted)}, after {seconds} s")
            time.sleep(0.05)

    def cut(self, name: str) -> None:
        """HAProxy closes every connection of this server's: its clients see their responses end mid-body."""
        answer = self.command(f"shutdown sessions server {BACKEND}/{name}")
        assert answer.strip() == "", answer

    def name_of(self, replica: LiveServer) -> str:
        return next(name for name, server in self.replicas.items() if server is replica)


def start_haproxy(replicas: list[LiveServer], stats_dir: Path, seconds: float = 15) -> Balancer:
    """HAProxy on a free loopback port with deploy/haproxy.cfg in front of these replicas (three: the config's
    server lines), up once its frontend answers `/health` through a replica and every server is UP."""
    assert len(replicas) == len(SERVER_NAMES), f"deploy/haproxy.cfg has {len(SERVER_NAMES)} server lines"
    port = free_port()
    stats_socket = stats_dir / "haproxy.sock"
    env = clean_env(CHAINS_LISTEN=f"{HOST}:{port}", HAPROXY_STATS_SOCKET=str(stats_socket),
                    **{f"CHAINS_REPLICA_{i}": f"{HOST}:{replica.port}" for i, replica in enumerate(replicas, 1)})
    # -db: in the foreground, logging to stdout (the harness's log file); -f: the config as shipped.
    process = start_process([HAPROXY, "-db", "-f", str(CONFIG)], env, "haproxy", "/health", port, seconds)
    balancer = Balancer(process, stats_socket, dict(zip(SERVER_NAMES, replicas)))
    try:
        balancer.wait_for_states(dict.fromkeys(SERVER_NAMES, "UP"), seconds)
    except BaseException:
        stop_process(process)
        raise
    return balancer


@contextmanager
def running_haproxy(replicas: list[LiveServer], seconds: float = 15) -> Iterator[Balancer]:
    """`start_haproxy` for the block, its stats socket in a temporary directory; stopped however the block ends."""
    with tempfile.TemporaryDirectory(prefix="haproxy-") as stats_dir:
        balancer = start_haproxy(replicas, Path(stats_dir), seconds)
        try:
            yield balancer
        finally:
            stop_process(balancer.process)
