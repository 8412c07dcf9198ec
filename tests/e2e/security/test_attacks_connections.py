"""Connection floods against a live server on loopback (issue "Hardening, round two", item 2), each bounded in
count and time: MAX_CONNECTIONS_PER_ADDRESS, and idle connections closed first when the worker is full.

The attack that got through: 2,100 silent sockets from one address, reconnecting as the header timeout closed
them, held the worker at MAX_CONNECTIONS; 24 of 25 /health probes from another client got 503. Here the server
has MAX_CONNECTIONS=300 and MAX_CONNECTIONS_PER_ADDRESS=100; the floods come from loopback addresses of their own
(127.0.0.2, …: Linux routes 127.0.0.0/8 to lo), the honest clients from others. The module's last test checks that
after all of them the server is healthy, its RSS within RSS_GROWTH_BOUND_MB of where it started, and nothing is
left over.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.attacks import (
    STALL_BOUND_S,
    AttackedServer,
    HealthProbe,
    client_from,
    loopback,
    process_stats,
    read_all,
    status_of,
)
from tests.support.servers import running_app
from tests.support.sse import parse_sse

MAX_CONNECTIONS = 300
PER_ADDRESS = 100
HEADER_TIMEOUT_S = 4  # long enough that what a test checks happens before the silent sockets time out
REPLY_TOKENS, TOKEN_DELAY_MS = 40, 75  # a /chat reply streams for 3 s
SETTINGS = {
    "CHAT_PROVIDER": "fake", "FAKE_REPLY_TOKENS": str(REPLY_TOKENS), "FAKE_TOKEN_DELAY_MS": str(TOKEN_DELAY_MS),
    "MAX_CONNECTIONS": str(MAX_CONNECTIONS), "MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
    "HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
}
RSS_GROWTH_BOUND_MB = 32
# Sockets the server may hold besides the connections counted: the probe's, a test's own, the listening socket.
FD_SLACK = 10
# A /health slower than this while a flood churns connections means the event loop stalled (the shared bound,
# STALL_BOUND_S, is for attacks that cost the server far less per second than a few thousand connects).
FLOOD_STALL_BOUND_S = 1.0
assert FLOOD_STALL_BOUND_S >= STALL_BOUND_S
OPEN_FILES_NEEDED = 2048  # this process's sockets at the worst moment (~500), with room to spare
FIRST_FLOODER = loopback(1)  # the first test's attacker; the last finds nothing of it left in the server


def raise_open_file_limit(needed: int) -> None:
    """The floods take hundreds of sockets here and in the server (which inherits this limit): the soft limit
    up to the hard one if it is lower than `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard),
                                                    hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed, f"ulimit -Hn is {hard}: this suite needs {needed}"


@dataclass
class Flooded(AttackedServer):
    _addresses: Iterator[int] = field(default_factory=lambda: iter(range(2, 250)))

    def address(self) -> str:
        """A loopback address no other test of the module uses (the server keeps nothing by address after a
        test, but a fresh one makes each test's count start from 0)."""
        return loopback(next(self._addresses))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.server.process.pid}/fd"))


@pytest.fixture(scope="module")
def flooded() -> Iterator[Flooded]:
    raise_open_file_limit(OPEN_FILES_NEEDED)
    with running_app("connections-attack-server", **SETTINGS) as server:
        httpx.post(server.url + "/chat", json={"message": "hi"}, timeout=30)  # first-use costs in the baseline
        time.sleep(0.5)
        yield Flooded(server, process_stats(server))


@pytest.fixture(autouse=True)
def rss_after_each_attack(request: pytest.FixtureRequest, flooded: Flooded) -> Iterator[None]:
    with flooded.measuring(request.node.name):
        yield


# --- the attackers' side ---------------------------------------------------------------------------------------

@dataclass
class Silent:
    """What silent sockets from one address saw: the bytes the server sent them (none, it just closes), how many
    it closed within `early_s` of their opening (made room; HEADER_TIMEOUT closes the rest later), how many
    opened in all."""
    early_s: float
    opened: int = 0
    closed_early: int = 0
    received: bytes = b""


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_silent(address: str, port: int) -> Connection:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))


async def until_closed(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection, and whether it did within `seconds`."""
    data = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return data, False
    except ConnectionError:
        pass
    return data, True


async def flood(address: str, port: int, sockets: int, seconds: float, reconnect_after: float,
                early_s: float = 1.0) -> Silent:
    """`sockets` silent connections from `address`, each opened again `reconnect_after` s after the server
    closes it, for `seconds`: at most sockets × (seconds / reconnect_after + 1) connects."""
    seen = Silent(early_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def one() -> None:
        while (left := deadline - loop.time()) > 0:
            reader, writer = await open_silent(address, port)
            seen.opened += 1
            opened_at = loop.time()
            data, closed = await until_closed(reader, left)
            seen.received += data
            seen.closed_early += closed and loop.time() - opened_at < early_s
            writer.close()
            await asyncio.sleep(reconnect_after)

    await asyncio.gather(*(one() for _ in range(sockets)))
    return seen


async def hold_silent(addresses: list[str], port: int, each: int) -> list[Connection]:
    """`each` silent connections from every one of `addresses`, opened together."""
    return await asyncio.gather(*(open_silent(address, port) for address in addresses for _ in range(each)))


def close_all(connections: list[Connection]) -> None:
    for _, writer in connections:
        writer.close()


async def closed_now(connections: list[Connection]) -> int:
    """How many of `connections` the server has closed by now (after a moment for its FINs to arrive)."""
    await asyncio.sleep(0.2)
    return sum(reader.at_eof() or reader.exception() is not None for reader, _ in connections)


async def get_health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int | None:
    """GET /health on a kept-alive connection: its status, or None if the server closed the connection."""
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    await reader.readexactly(length)
    return status_of(head)


def assert_probe_always_served(probe: HealthProbe) -> None:
    assert probe.failures == 0, probe.statuses
    assert len(probe.latencies) >= 3
    assert probe.slowest < FLOOD_STALL_BOUND_S, f"/health took {probe.slowest * 1000:.0f} ms during the flood"


# --- one address far beyond its cap ----------------------------------------------------------------------------

def test_one_address_flooding_beyond_its_cap_and_reconnecting_leaves_others_served(flooded: Flooded) -> None:
    """The attack of the issue, scaled: 400 silent sockets from one address (4 × its cap, more than
    MAX_CONNECTIONS), each reconnecting 0.5 s after the server closes it, for 3 s. The server holds at most 100
    of them, closes the others without a word, and a probe from another address gets 200 every time."""
    attacker, fds_before = FIRST_FLOODER, flooded.fds()
    most_fds = 0

    async def attack() -> Silent:
        nonlocal most_fds
        flooding = asyncio.create_task(flood(attacker, flooded.port, sockets=400, seconds=3, reconnect_after=0.5))
        while not flooding.done():
            most_fds = max(most_fds, flooded.fds())
            await asyncio.sleep(0.1)
        return await flooding

    with HealthProbe(flooded.server.url, address=flooded.address()) as probe:
        seen = asyncio.run(attack())
    assert seen.received == b""  # nothing was asked: nothing answered
    assert seen.opened >= 700 and seen.closed_early >= 300, seen  # it reconnected, and was cut back each time
    assert most_fds <= fds_before + PER_ADDRESS + FD_SLACK, (fds_before, most_fds)
    assert_probe_always_served(probe)
    # The operator is told, in one line, not one per connection (the launcher shows the project's INFO lines).
    said = [line for line in flooded.server.output().splitlines() if "connections closed unanswered" in line]
    assert 1 <= len(said) <= 3 and attacker in said[0], said


# --- many addresses, each within its cap -----------------------------------------------------------------------

def test_addresses_within_their_caps_filling_the_worker_make_room_for_an_honest_client(flooded: Flooded) -> None:
    """Four addresses with 90 silent sockets each (within the cap, 360 together: past MAX_CONNECTIONS). The idle
    ones are closed first to keep the worker at 300, so a client from a fifth address is served."""
    attackers = [flooded.address() for _ in range(4)]
    honest = flooded.address()

    def honest_client() -> list[int]:
        with client_from(honest, flooded.server.url, timeout=10) as client:
            return [client.get("/health").status_code for _ in range(3)]

    async def attack() -> tuple[int, list[int], int]:
        silent = await hold_silent(attackers, flooded.port, 90)
        try:
            statuses = await asyncio.to_thread(honest_client)
            return await closed_now(silent), statuses, flooded.fds()
        finally:
            close_all(silent)

    fds_before = flooded.fds()
    started = time.monotonic()
    closed, statuses, fds_during = asyncio.run(attack())
    assert time.monotonic() - started < HEADER_TIMEOUT_S  # what was seen is the cap's doing, not the timeout's
    assert statuses == [200, 200, 200]
    assert 360 - MAX_CONNECTIONS <= closed <= 360 - MAX_CONNECTIONS + 3 + FD_SLACK, closed  # the room made, no more
    assert fds_during <= fds_before + MAX_CONNECTIONS + FD_SLACK


def test_honest_keep_alive_reuse_below_the_cap_is_untouched_while_the_worker_is_full(flooded: Flooded) -> None:
    """40 kept-alive connections from one address, reused for a request before, during and after four others fill
    the worker past MAX_CONNECTIONS with 90 silent sockets each: every request is answered on the same
    connection; the room is made from the addresses holding the most."""
    attackers = [flooded.address() for _ in range(4)]
    honest = flooded.address()

    async def scenario() -> tuple[list[list[int | None]], int]:
        connections = [await open_silent(honest, flooded.port) for _ in range(40)]
        silent: list[Connection] = []
        try:
            rounds = [await asyncio.gather(*(get_health(*pair) for pair in connections))]
            silent = await hold_silent(attackers, flooded.port, 90)
            for _ in range(2):
                rounds.append(await asyncio.gather(*(get_health(*pair) for pair in connections)))
            return rounds, await closed_now(silent)
        finally:
            close_all(silent + connections)

    started = time.monotonic()
    rounds, attackers_closed = asyncio.run(scenario())
    assert time.monotonic() - started < HEADER_TIMEOUT_S
    assert rounds == [[200] * 40] * 3  # None would be a connection closed under it
    assert attackers_closed >= 360 + 40 - MAX_CONNECTIONS


# --- a request in progress on the flooding address -------------------------------------------------------------

def test_a_stream_from_the_flooding_address_is_not_closed_while_its_address_floods(flooded: Flooded) -> None:
    """A /chat reply streaming for 3 s on the oldest connection of an address that then opens 300 silent sockets
    (3 × its cap), reconnecting: the silent ones are closed to make room, the stream never is."""
    attacker = flooded.address()

    def stream() -> str:
        with client_from(attacker, flooded.server.url, timeout=30) as client:
            return client.post("/chat", json={"message": "hi"}).text

    async def attack() -> tuple[str, Silent]:
        streaming = asyncio.create_task(asyncio.to_thread(stream))
        await asyncio.sleep(0.5)  # the stream is under way: its connection is the address's oldest
        seen = await flood(attacker, flooded.port, sockets=300, seconds=2, reconnect_after=0.5)
        return await streaming, seen

    text, seen = asyncio.run(attack())
    events = parse_sse(text)
    assert [event.event for event in events] == ["start"] + ["message"] * REPLY_TOKENS + ["done"]
    assert "".join(e.json()["token"] for e in events[1:-1]) == events[-1].json()["full_response"]
    assert seen.closed_early >= 200 and seen.received == b"", seen  # the flood was cut back meanwhile


# --- nothing idle ---------------------------------------------------------------------------------------------

CHAT_BODY = json.dumps({"message": "hi"}).encode()
CHAT = (b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY))


def test_beyond_max_connections_with_none_idle_a_request_gets_503_with_retry_after(flooded: Flooded) -> None:
    """The last resort: 300 replies streaming (30 from each of 10 addresses, within MAX_STREAMS_PER_CLIENT and
    the cap), so nothing is idle; a request on one more connection gets a clear 503 + Retry-After, the streams
    all end, and then the same client is served."""
    addresses = [flooded.address() for _ in range(10)]
    newcomer = flooded.address()

    async def scenario() -> tuple[list[bytes], bytes]:
        streams = await asyncio.gather(*(open_silent(address, flooded.port) for address in addresses
                                         for _ in range(MAX_CONNECTIONS // len(addresses))))
        extras: list[Connection] = []
        try:
            for _, writer in streams:
                writer.write(CHAT)
            heads = await asyncio.gather(*(reader.readuntil(b"\r\n\r\n") for reader, _ in streams))
            assert all(status_of(head) == 200 for head in heads)  # each one's reply under way: none idle
            extras.append(reader_writer := await open_silent(newcomer, flooded.port))
            reader_writer[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = await read_all(reader_writer[0], 5)
            return await asyncio.gather(*(read_all(reader, 30) for reader, _ in streams)), refused
        finally:
            close_all(streams + extras)

    replies, refused = asyncio.run(scenario())
    assert status_of(refused) == 503, refused[:300]
    assert b"retry-after: 1" in refused.lower() and b"MAX_CONNECTIONS=300" in refused
    assert all(reply.count(b'data: {"token"') == REPLY_TOKENS and b"\nevent: done\n" in reply
               and reply.endswith(b"\r\n0\r\n\r\n") for reply in replies)  # each whole, to its last chunk
    with client_from(newcomer, flooded.server.url, timeout=10) as client:
        assert client.get("/health").status_code == 200


# --- after all of them -----------------------------------------------------------------------------------------

def test_after_every_flood_the_server_is_healthy_and_nothing_leaked(flooded: Flooded) -> None:
    """Tasks, threads and fds back to where they started; RSS within RSS_GROWTH_BOUND_MB; and no connection left
    counted: the address that flooded first may use its whole cap again, none of it closed to make room."""
    flooded.assert_settled(RSS_GROWTH_BOUND_MB)

    async def whole_cap() -> list[int | None]:
        connections = [await open_silent(FIRST_FLOODER, flooded.port) for _ in range(PER_ADDRESS)]
        try:
            return await asyncio.gather(*(get_health(*pair) for pair in connections))
        finally:
            close_all(connections)

    assert asyncio.run(whole_cap()) == [200] * PER_ADDRESS
