"""Round two's attacks on what runs let through, against live servers on loopback, each bounded in count and time:
runs that outlive their connection (the address's and the key's budgets), the local model's places, the per-client
stream cap on every route that holds a stream (GET /chat and joins included), the strings that reach a model
server, and the budgets across replicas that share Redis.

Clients come from addresses of their own: sockets bound to 127.0.0.2, 127.0.0.3, … (all of 127.0.0.0/8 is lo), so
the server sees them as different clients with no proxy header involved. The suite ends by checking that the
attacked server is healthy, within RSS_GROWTH_BOUND_MB of where it started, with nothing left over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from tests.support.attacks import ProcessStats, assert_settled, client_from, loopback, process_stats
from tests.support.clients import LONG
from tests.support.fixtures import app_fixture, pointed_at
from tests.support.servers import LiveServer, running_replicas, start_redis, stopping

KEYS = ("runs-key-one-5d1c", "runs-key-two-9a7e", "runs-key-three-2b4f", "runs-key-four-77c0")
PER_ADDRESS, PER_KEY, MAX_LIVE, STREAMS = 6, 10, 24, 4
SETTINGS = {
    "CHAT_PROVIDER": "fake", "FAKE_REPLY_TOKENS": "40", "FAKE_TOKEN_DELAY_MS": "100",  # a run takes 4 s
    "API_KEYS": ",".join(KEYS), "RUN_MAX_LIVE": str(MAX_LIVE), "MAX_LIVE_RUNS_PER_ADDRESS": str(PER_ADDRESS),
    "MAX_LIVE_RUNS_PER_KEY": str(PER_KEY), "MAX_STREAMS_PER_CLIENT": str(STREAMS),
}
RSS_GROWTH_BOUND_MB = 48
ATTEMPTS = 40  # more than RUN_MAX_LIVE: before the budgets, one address filled the whole store


def key(n: int) -> dict[str, str]:
    return {"X-API-Key": KEYS[n]}


runs_attack_server = app_fixture("runs-attack-server", **SETTINGS,
                                 doc="Scripted runs of 4 s; the live-run budgets small enough to reach.")


@pytest.fixture(scope="module")
def baseline(runs_attack_server: LiveServer) -> ProcessStats:
    with httpx.Client(base_url=runs_attack_server.url, headers=key(3), timeout=30) as client:  # warm up
        client.post("/chat", json={"message": "hi", "timeout": 1})
    time.sleep(1)
    return process_stats(runs_attack_server)


def start_and_hang_up(client: httpx.Client, headers: dict[str, str], message: str = "hi") -> httpx.Response:
    """A stream that keeps generating after its client goes (on_disconnect=continue): the answer's head and the
    first event are read, then the connection is dropped."""
    with client.stream("POST", "/chat", params={"on_disconnect": "continue"}, json={"message": message},
                       headers=headers) as response:
        if response.status_code == 200:
            next(response.iter_raw())
        else:
            response.read()
        return response


def until_no_runs(server: LiveServer, seconds: float = 15) -> None:
    """Waits for every run to end (each is 4 s): the next attack starts from an empty store."""
    deadline = time.monotonic() + seconds
    while httpx.get(server.url + "/health", timeout=5).json()["runs"]["live"] and time.monotonic() < deadline:
        time.sleep(0.2)


def test_runs_that_outlive_their_connection_count_against_their_address(runs_attack_server: LiveServer,
                                                                        baseline: ProcessStats) -> None:
    """The attack: open a stream with on_disconnect=continue, hang up, repeat. In 6.4 s one address held the whole
    RUN_MAX_LIVE, and every other client got 503 run_store_full. Now the address holds its budget, no more."""
    url = runs_attack_server.url
    statuses = []
    with client_from(loopback(1), url, timeout=30) as attacker:
        for _ in range(ATTEMPTS):
            response = start_and_hang_up(attacker, key(0))
            statuses.append(response.status_code)
            if response.status_code == 429:
                refusal = response
    assert statuses[:PER_ADDRESS] == [200] * PER_ADDRESS and set(statuses[PER_ADDRESS:]) == {429}, statuses
    assert refusal.headers["retry-after"] == "1"
    assert refusal.json()["type"] == "too_many_runs"
    assert (f"this client address has {PER_ADDRESS} runs generating (connected or not), the most "
            f"MAX_LIVE_RUNS_PER_ADDRESS={PER_ADDRESS} allows") in refusal.json()["error"]
    assert httpx.get(url + "/health").json()["runs"]["live"] == PER_ADDRESS  # the attacker's, still going
    # Another client, another key, another address: served while the attacker's runs still generate.
    with client_from(loopback(2), url, timeout=30) as victim:
        answer = victim.post("/chat", json={"message": "hi"}, headers=key(1))
    assert answer.status_code == 200 and "event: done" in answer.text
    until_no_runs(runs_attack_server)
    with client_from(loopback(1), url, timeout=30) as attacker:  # its runs ended: its budget is back
        assert start_and_hang_up(attacker, key(0)).status_code == 200
    until_no_runs(runs_attack_server)


def test_a_key_spread_over_addresses_has_one_budget(runs_attack_server: LiveServer) -> None:
    url = runs_attack_server.url
    refusals: dict[str, dict[str, str]] = {}
    accepted = 0
    for n in (3, 4, 5):
        with client_from(loopback(n), url, timeout=30) as attacker:
            for _ in range(PER_ADDRESS + 1):
                response = start_and_hang_up(attacker, key(2))
                if response.status_code == 429:
                    refusals[loopback(n)] = response.json()
                    break
                accepted += 1
    assert accepted == PER_KEY
    assert "this client address has 6 runs" in refusals[loopback(3)]["error"]
    assert "MAX_LIVE_RUNS_PER_KEY=10" in refusals[loopback(4)]["error"]  # its 5th: the key's 11th
    assert "this API key has 10 runs generating" in refusals[loopback(5)]["error"]
    with client_from(loopback(4), url, timeout=30) as other_key:  # that address, with another key, is served
        assert start_and_hang_up(other_key, key(3)).status_code == 200
    until_no_runs(runs_attack_server)


def test_get_chat_counts_against_the_per_client_stream_cap(runs_attack_server: LiveServer) -> None:
    """GET /chat (the tutorial's EventSource route) holds a stream like POST /chat: the cap counts it too."""
    url = runs_attack_server.url
    with ExitStack() as held, client_from(loopback(6), url, timeout=30, headers=key(3)) as client:
        reading = []  # each stream's iterator kept: a dropped one closes its response
        for _ in range(STREAMS):
            stream = held.enter_context(client.stream("GET", "/chat", params={"message": "hi"}))
            assert stream.status_code == 200
            reading.append(stream.iter_raw())
            next(reading[-1])
        extra = client.get("/chat", params={"message": "hi"})
        assert extra.status_code == 429 and extra.json()["type"] == "too_many_streams"
        assert f"MAX_STREAMS_PER_CLIENT={STREAMS}" in extra.json()["error"]
        posted = client.post("/chat", json={"message": "hi"})
        assert posted.status_code == 429  # the same budget, whatever the route
    until_no_runs(runs_attack_server)
    with client_from(loopback(6), url, timeout=30, headers=key(3)) as client:  # the streams closed: room again
        assert client.get("/chat", params={"message": "hi", "timeout": 0.3}).status_code == 200


def test_joins_hold_a_stream_each_and_start_no_run(runs_attack_server: LiveServer) -> None:
    """The rule, as docs/security.md says it: a join (`GET /chat/runs/{id}/stream`) holds a stream open, so it
    counts against MAX_STREAMS_PER_CLIENT; it starts nothing, so it counts against no run budget. Rejoining one
    run over and over got 32 streams, then 429s."""
    url = runs_attack_server.url
    with client_from(loopback(7), url, timeout=30, headers=key(3)) as owner:
        started = start_and_hang_up(owner, {})
        run_id = started.headers["x-run-id"]
    with ExitStack() as held, client_from(loopback(8), url, timeout=30, headers=key(3)) as joiner:
        reading = []
        for _ in range(STREAMS):
            join = held.enter_context(joiner.stream("GET", f"/chat/runs/{run_id}/stream"))
            assert join.status_code == 200
            reading.append(join.iter_raw())
            next(reading[-1])
        extra = joiner.get(f"/chat/runs/{run_id}/stream")
        assert extra.status_code == 429 and extra.json()["type"] == "too_many_streams"
        assert joiner.get(f"/chat/runs/{run_id}").status_code == 200  # a run's state holds no stream
        assert httpx.get(url + "/health").json()["runs"]["live"] == 1  # joins started nothing
    until_no_runs(runs_attack_server)


# --- the local model's places --------------------------------------------------------------------------------

local_attack_server = app_fixture(
    "runs-attack-local-server", CHAT_PROVIDER="local", LOCAL_QUEUE_SIZE="2", MAX_TOKENS="300", TEMPERATURE="0",
    doc="The embedded model with 3 places (one running, two waiting): a client's share is 2.")


def test_one_address_cannot_take_every_place_of_the_local_model(local_attack_server: LiveServer) -> None:
    """The attack filled the local model's queue with runs nobody listened to; the next client got 503. A client
    now holds at most LOCAL_QUEUE_PER_CLIENT places, never all of them, and the others are served."""
    url = local_attack_server.url
    statuses, refusal, runs = [], None, []
    with client_from(loopback(9), url, timeout=60) as attacker:
        for _ in range(5):  # as the attack did: the answer's head, then gone
            response = start_and_hang_up(attacker, {}, LONG)  # a reply of seconds
            statuses.append(response.status_code)
            if response.status_code == 200:
                runs.append(response.headers["x-run-id"])
            else:
                refusal = response.json()
        assert statuses[:2] == [200, 200] and set(statuses[2:]) == {429}, statuses
        assert refusal is not None and refusal["type"] == "too_many_runs"
        assert "this client address holds 2 of the local model's 3 places" in refusal["error"]
        with client_from(loopback(10), url, timeout=120) as victim:  # its place is there, behind the attacker's
            answer = victim.post("/v1/chat/completions", json={"model": "single-turn", "max_tokens": 8,
                                                               "messages": [{"role": "user", "content": "Say hi."}]})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        for run_id in runs:
            attacker.post(f"/chat/runs/{run_id}/cancel")


# --- strings that reach a model server ----------------------------------------------------------------------

openai_provider_server = app_fixture("runs-attack-openai-server", **pointed_at("fault_upstream", "fault"),
                                     doc="The openai provider in front of the scripted fault upstream.")


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_in_stop_is_a_4xx_not_a_500(openai_provider_server: LiveServer, stream: bool) -> None:
    """The attack: `"stop": ["\\ud800"]` reached langchain-openai and was a 500 (UnicodeEncodeError)."""
    body = (b'{"model": "conversation", "stream": %s, "stop": ["\\ud800"], '
            b'"messages": [{"role": "user", "content": "hi"}]}' % (b"true" if stream else b"false"))
    with httpx.Client(base_url=openai_provider_server.url, timeout=30) as client:
        answer = client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text[:300]
        assert answer.json()["error"]["param"] == "stop[0]" and "surrogate" in answer.json()["error"]["message"]
        named = client.post("/v1/chat/completions", content=body.replace(b'"stop": ["\\ud800"], ', b"").replace(
            b'"content": "hi"', b'"content": "hi", "name": "\\udfff"'), headers={"Content-Type": "application/json"})
        assert named.status_code == 400 and named.json()["error"]["param"] == "messages[0].name"  # not dropped
        fine = client.post("/v1/chat/completions", json={"model": "conversation", "stop": ["END"], "messages": [
            {"role": "user", "content": "hi"}]})
        assert fine.status_code == 200


# --- across replicas -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def replicas() -> Iterator[list[LiveServer]]:
    with stopping(start_redis()) as redis_server, running_replicas(
            ("runs-replica-a", "runs-replica-b"), CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="40",
            FAKE_TOKEN_DELAY_MS="100", RUN_STORE_URL=redis_server.url, MAX_LIVE_RUNS_PER_ADDRESS="4") as servers:
        yield servers


def test_an_address_has_one_budget_over_every_replica(replicas: list[LiveServer]) -> None:
    """With Redis the budget is counted over the replicas: alternating between them gets no more runs."""
    statuses = []
    for n in range(10):
        with client_from(loopback(11), replicas[n % 2].url, timeout=30) as attacker:
            statuses.append(start_and_hang_up(attacker, {}).status_code)
    assert statuses[:4] == [200] * 4 and set(statuses[4:]) == {429}, statuses
    with client_from(loopback(12), replicas[1].url, timeout=30) as victim:
        assert victim.post("/chat", json={"message": "hi", "timeout": 0.3}).status_code == 200


# --- after all of them ---------------------------------------------------------------------------------------

def test_after_the_run_attacks_the_server_is_healthy_and_nothing_leaked(runs_attack_server: LiveServer,
                                                                        baseline: ProcessStats) -> None:
    until_no_runs(runs_attack_server)
    assert_settled(runs_attack_server, baseline, RSS_GROWTH_BOUND_MB)
    health = httpx.get(runs_attack_server.url + "/health").json()
    assert health["runs"]["live"] == 0
    with client_from(loopback(13), runs_attack_server.url, timeout=30) as client:
        assert client.post("/chat", json={"message": "hi"}, headers=key(0)).status_code == 200
