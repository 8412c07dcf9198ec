"""The key matcher, the key a request presents, and the failed-key throttle, in-process: a check mutated to accept
a prefix, an empty key or a near miss must fail here."""

from __future__ import annotations

import hmac
from typing import Any

import pytest
from pydantic import SecretStr

from chains.common import keys
from chains.common.keys import FailedAuth, KeyMatcher
from chains.middleware.auth import presented_key

KEY = "k3y-Alpha-7Q2x9Zr4"
OTHER = "second-key-5d1c"
NON_ASCII = "clé-ключ-鍵-🔑"


@pytest.fixture
def match() -> KeyMatcher:
    return KeyMatcher([SecretStr(KEY), SecretStr(OTHER), SecretStr(NON_ASCII)])


@pytest.mark.parametrize("candidate", [KEY, OTHER, NON_ASCII, KEY.encode(), NON_ASCII.encode()])
def test_each_configured_key_matches(match: KeyMatcher, candidate: str | bytes) -> None:
    assert match(candidate)


WRONG: list[tuple[str, Any]] = [
    ("none", None),
    ("empty", ""),
    ("empty bytes", b""),
    ("one character", KEY[0]),
    ("prefix", KEY[:-1]),
    ("half", KEY[: len(KEY) // 2]),
    ("suffix", KEY[1:]),
    ("one character added", KEY + "x"),
    ("one character changed at the start", "K" + KEY[1:]),
    ("one character changed in the middle", KEY[:8] + ("X" if KEY[8] != "X" else "Y") + KEY[9:]),
    ("one character changed at the end", KEY[:-1] + "5"),
    ("upper case", KEY.upper()),
    ("lower case", KEY.lower()),
    ("leading space", " " + KEY),
    ("trailing space", KEY + " "),
    ("trailing newline", KEY + "\n"),
    ("tab inside", KEY[:4] + "\t" + KEY[4:]),
    ("NUL after", KEY + "\x00"),
    ("two keys joined", KEY + OTHER),
    ("two keys with a comma", f"{KEY},{OTHER}"),
    ("non-ASCII prefix", NON_ASCII[:-1]),
    ("non-ASCII as Latin-1 bytes", NON_ASCII.encode("utf-8").decode("latin-1")),
    ("non-ASCII normalized differently", NON_ASCII.replace("é", "e\u0301")),
    ("over-long", KEY * 100_000),
    ("over-long with the key at the start", KEY + "a" * 1_000_000),
]


@pytest.mark.parametrize("candidate", [c for _, c in WRONG], ids=[name for name, _ in WRONG])
def test_near_misses_do_not_match(match: KeyMatcher, candidate: Any) -> None:
    assert not match(candidate)


def test_every_key_is_compared_whichever_matches(match: KeyMatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time: hmac.compare_digest on equal-length digests for every configured key, no early exit."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", counting)
    for candidate in (KEY, OTHER, NON_ASCII, "wrong", "", KEY * 1000):
        calls.clear()
        match(candidate)
        assert calls == [(32, 32)] * 3, candidate  # three keys, three digest comparisons, whatever the candidate


def test_no_keys_or_an_empty_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        KeyMatcher([])
    with pytest.raises(ValueError):
        KeyMatcher([SecretStr(KEY), SecretStr("")])


# --- the key a request presents --------------------------------------------------------------------------------

def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


@pytest.mark.parametrize(("headers", "expected"), [
    ([], None),
    ([(b"authorization", b"Bearer abc")], b"abc"),
    ([(b"authorization", b"bearer abc")], b"abc"),  # the scheme is case-insensitive
    ([(b"authorization", b"BEARER  abc  ")], b"abc"),
    ([(b"authorization", b"Bearer ")], b""),  # an empty key is presented (and never matches)
    ([(b"authorization", b"Bearer")], None),
    ([(b"authorization", b"Basic YTpi")], None),
    ([(b"authorization", b"Bearerabc")], None),
    ([(b"x-api-key", b"abc")], b"abc"),
    ([(b"x-api-key", b"")], b""),
    ([(b"x-api-key", "ключ".encode())], "ключ".encode()),  # the bytes as sent
    # A cookie never carries a key: the sign-in cookie holds a signed session (tests/unit/common/test_keys.py).
    ([(b"cookie", b"theme=dark; api_key=abc")], None),
    ([(b"cookie", b"session=abc")], None),
    ([(b"cookie", b"api_key=")], None),
    ([(b"cookie", b"session=abc"), (b"x-api-key", b"abc")], b"abc"),
    ([(b"authorization", b"Bearer first"), (b"x-api-key", b"second")], b"first"),
])
def test_presented_key(headers: list[tuple[bytes, bytes]], expected: bytes | None) -> None:
    assert presented_key(scope(*headers)) == expected


def test_an_empty_bearer_is_refused(match: KeyMatcher) -> None:
    assert not match(presented_key(scope((b"authorization", b"Bearer "))))
    assert not match(presented_key(scope((b"x-api-key", b"   "))))
    assert match(presented_key(scope((b"authorization", f"Bearer {KEY}".encode()))))
    assert match(presented_key(scope((b"x-api-key", NON_ASCII.encode()))))


# --- failed keys per address -----------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_block_an_address_for_the_rest_of_the_window() -> None:
    clock = Clock()
    failures = FailedAuth(limit=3, window=60, clock=clock)
    for _ in range(2):
        failures.record("10.0.0.1")
        clock.now += 1
    assert failures.retry_after("10.0.0.1") is None  # two failures: still allowed
    failures.record("10.0.0.1")
    assert failures.retry_after("10.0.0.1") == 58  # the first failure, 2 s ago, frees a place in 58 s
    assert failures.retry_after("10.0.0.2") is None  # per address
    clock.now += 58
    assert failures.retry_after("10.0.0.1") is None
    assert failures.retry_after("10.0.0.1") is None


def test_failure_memory_is_bounded() -> None:
    failures = FailedAuth(limit=2, window=60, clock=Clock(), max_addresses=100)
    for i in range(1000):
        failures.record(f"10.0.{i // 256}.{i % 256}")
    assert len(failures._failures) == 100
