"""chains.common.keys in-process: the key matcher (a check mutated to accept a prefix, an empty key or a near miss
must fail here), the key a request presents, the failed-key throttle; the sign-in sessions: the cookie's codec
(what it holds, that a changed character or another key's signature is refused), expiry, sign-out's bounded
revocation, and the cookie a request presents."""

from __future__ import annotations

import hmac
from typing import Any

import pytest
from pydantic import SecretStr

from chains.common import keys
from chains.common.keys import COUNTED_REFUSALS, FailedAuth, KeyMatcher, Session, Sessions, key_id, presented_session
from chains.middleware.auth import presented_key


class Clock:
    """A clock the test moves (Unix seconds, as time.time)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.25

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def digest_comparisons(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The lengths of each pair hmac.compare_digest is given, in order (the comparisons still happen)."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", counting)
    return calls


# --- the key matcher, the key a request presents, the throttle -------------------------------------------------

MATCHED = "k3y-Alpha-7Q2x9Zr4"
MATCHED_OTHER = "second-key-5d1c"
NON_ASCII = "clé-ключ-鍵-🔑"


@pytest.fixture
def match() -> KeyMatcher:
    return KeyMatcher([SecretStr(MATCHED), SecretStr(MATCHED_OTHER), SecretStr(NON_ASCII)])


@pytest.mark.parametrize("candidate", [MATCHED, MATCHED_OTHER, NON_ASCII, MATCHED.encode(), NON_ASCII.encode()])
def test_each_configured_key_matches(match: KeyMatcher, candidate: str | bytes) -> None:
    assert match(candidate)


WRONG: list[tuple[str, Any]] = [
    ("none", None),
    ("empty", ""),
    ("empty bytes", b""),
    ("one character", MATCHED[0]),
    ("prefix", MATCHED[:-1]),
    ("half", MATCHED[: len(MATCHED) // 2]),
    ("suffix", MATCHED[1:]),
    ("one character added", MATCHED + "x"),
    ("one character changed at the start", "K" + MATCHED[1:]),
    ("one character changed in the middle", MATCHED[:8] + ("X" if MATCHED[8] != "X" else "Y") + MATCHED[9:]),
    ("one character changed at the end", MATCHED[:-1] + "5"),
    ("upper case", MATCHED.upper()),
    ("lower case", MATCHED.lower()),
    ("leading space", " " + MATCHED),
    ("trailing space", MATCHED + " "),
    ("trailing newline", MATCHED + "\n"),
    ("tab inside", MATCHED[:4] + "\t" + MATCHED[4:]),
    ("NUL after", MATCHED + "\x00"),
    ("two keys joined", MATCHED + MATCHED_OTHER),
    ("two keys with a comma", f"{MATCHED},{MATCHED_OTHER}"),
    ("non-ASCII prefix", NON_ASCII[:-1]),
    ("non-ASCII as Latin-1 bytes", NON_ASCII.encode("utf-8").decode("latin-1")),
    ("non-ASCII normalized differently", NON_ASCII.replace("é", "e\u0301")),
    ("over-long", MATCHED * 100_000),
    ("over-long with the key at the start", MATCHED + "a" * 1_000_000),
]


@pytest.mark.parametrize("candidate", [c for _, c in WRONG], ids=[name for name, _ in WRONG])
def test_near_misses_do_not_match(match: KeyMatcher, candidate: Any) -> None:
    assert not match(candidate)


def test_every_key_is_compared_whichever_matches(match: KeyMatcher, digest_comparisons: list[tuple[int, int]]
                                                 ) -> None:
    """Constant time: hmac.compare_digest on equal-length digests for every configured key, no early exit."""
    calls = digest_comparisons
    for candidate in (MATCHED, MATCHED_OTHER, NON_ASCII, "wrong", "", MATCHED * 1000):
        calls.clear()
        match(candidate)
        assert calls == [(32, 32)] * 3, candidate  # three keys, three digest comparisons, whatever the candidate


def test_no_keys_or_an_empty_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        KeyMatcher([])
    with pytest.raises(ValueError):
        KeyMatcher([SecretStr(MATCHED), SecretStr("")])


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
    assert match(presented_key(scope((b"authorization", f"Bearer {MATCHED}".encode()))))
    assert match(presented_key(scope((b"x-api-key", NON_ASCII.encode()))))


# --- failed keys per address -----------------------------------------------------------------------------------

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


# --- sign-in sessions --------------------------------------------------------------------------------------------

KEY = b"session-key-Alpha-7Q2x"
OTHER = b"session-key-Beta-91kd"
TTL = 3600.0


def sessions(*configured: bytes, clock: Clock | None = None, ttl: float = TTL, **kwargs: Any) -> Sessions:
    return Sessions(list(configured or (KEY, OTHER)), ttl, clock or Clock(), **kwargs)


def test_a_session_names_its_key_as_a_header_would_and_holds_no_key() -> None:
    signer = sessions()
    cookie = signer.issue(KEY)
    session = signer.verify(cookie)
    assert isinstance(session, Session) and session.key_id == key_id(KEY)  # the runs' owner, by header or cookie
    assert KEY.decode() not in cookie and key_id(KEY) not in cookie
    assert set(cookie) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")  # no quoting
    version, payload, mac = cookie.split(".")
    assert version == "v1" and len(payload) == len(mac) == 43  # 32 bytes each, base64url without padding
    other = signer.verify(signer.issue(OTHER))
    assert isinstance(other, Session) and other.key_id == key_id(OTHER)


def test_each_sign_in_is_a_session_of_its_own() -> None:
    signer = sessions()
    issued = [signer.verify(signer.issue(KEY)) for _ in range(50)]
    assert len({s.session_id for s in issued if isinstance(s, Session)}) == 50


def test_a_replica_with_the_same_keys_accepts_it_and_one_without_its_key_does_not() -> None:
    cookie = sessions(KEY, OTHER).issue(KEY)
    assert isinstance(sessions(OTHER, KEY).verify(cookie), Session)  # same keys, any order, no shared state
    assert isinstance(KeyMatcher([KEY.decode()]).sessions.verify(cookie), Session)
    assert sessions(OTHER).verify(cookie) == "unknown key"  # the key was removed from API_KEYS
    assert sessions(OTHER, b"session-key-Gamma").verify(cookie) == "unknown key"


def test_only_a_configured_key_gets_a_session() -> None:
    with pytest.raises(ValueError):
        sessions(KEY).issue(OTHER)


def changed(text: str, at: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:at] + alphabet[(alphabet.index(text[at]) + 1) % 64] + text[at + 1:]


def test_every_changed_character_is_refused_as_not_ours() -> None:
    signer = sessions()
    cookie = signer.issue(KEY)
    for at in range(3, len(cookie)):
        if cookie[at] == ".":
            continue
        verdict = signer.verify(changed(cookie, at))
        assert not isinstance(verdict, Session) and verdict in COUNTED_REFUSALS, (at, verdict)


def test_a_session_signed_by_another_key_under_this_keys_id_is_refused() -> None:
    """The MAC is what proves the key: a payload naming KEY's signer, signed with OTHER's secret, is refused."""
    signer = sessions()
    _, payload, _ = signer.issue(KEY).split(".")
    _, _, other_mac = signer.issue(OTHER).split(".")
    assert signer.verify(f"v1.{payload}.{other_mac}") == "bad signature"


@pytest.mark.parametrize("value", [
    "", "v1", "v1..", "v1.a.b", KEY.decode(), "v2." + "A" * 43 + "." + "A" * 43, "v1." + "A" * 43 + "." + "A" * 42,
    "v1." + "A" * 43 + "." + "A" * 43 + ".x", "v1." + "A" * 43 + "=." + "A" * 43, "v1." + "A" * 42 + "+." + "A" * 43,
    "v1." + "é" * 43 + "." + "A" * 43, "v1." + "A" * 10_000 + "." + "A" * 43,
])
def test_malformed_values_are_refused_as_not_ours(value: str) -> None:
    assert sessions().verify(value) == "malformed"


def test_a_non_canonical_spelling_of_a_cookie_is_refused() -> None:
    """43 base64 characters carry 258 bits: the last one's two spare bits must be zero, so a cookie has one
    spelling only."""
    signer = sessions()
    version, payload, mac = signer.issue(KEY).split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = alphabet[alphabet.index(mac[-1]) ^ 1]  # the same 256 bits, another last character
    assert signer.verify(f"{version}.{payload}.{mac[:-1]}{spare}") == "malformed"


def test_a_session_expires_after_its_ttl_and_an_expired_one_is_not_counted() -> None:
    clock = Clock()
    signer = sessions(clock=clock, ttl=2.5)
    assert signer.max_age == 3
    cookie = signer.issue(KEY)
    clock.now += 2.5
    assert isinstance(signer.verify(cookie), Session)  # at least the TTL: the expiry is rounded up
    clock.now += 0.75
    assert signer.verify(cookie) == "expired" and "expired" not in COUNTED_REFUSALS


def test_sign_out_revokes_that_session_only() -> None:
    signer = sessions()
    mine, other = signer.issue(KEY), signer.issue(KEY)
    session = signer.verify(mine)
    assert isinstance(session, Session)
    signer.revoke(session)
    signer.revoke(session)  # twice is once
    assert signer.verify(mine) == "signed out" and "signed out" not in COUNTED_REFUSALS
    assert isinstance(signer.verify(other), Session)
    assert isinstance(sessions().verify(mine), Session)  # another process knows nothing of it: until it expires


def test_revocations_are_bounded_and_forget_the_expired_first() -> None:
    clock = Clock()
    signer = sessions(clock=clock, max_revoked=3)
    cookies = []
    for _ in range(5):
        cookies.append(signer.issue(KEY))
        clock.now += 10  # each expires 10 s after the one before
    for cookie in reversed(cookies):  # revoked latest first: the bound must drop by expiry, not by order
        session = signer.verify(cookie)
        assert isinstance(session, Session)
        signer.revoke(session)
    assert len(signer._revoked) == 3
    assert [signer.verify(cookie) for cookie in cookies[2:]] == ["signed out"] * 3  # the longest-lived kept
    clock.now = 1_800_000_000.25 + TTL + 25  # the first three have expired on their own
    session = signer.verify(signer.issue(KEY))
    assert isinstance(session, Session)
    signer.revoke(session)
    assert len(signer._revoked) == 3  # the expired one dropped, the new one in


def test_the_mac_is_compared_in_constant_time(digest_comparisons: list[tuple[int, int]]) -> None:
    calls = digest_comparisons
    signer = sessions()
    cookie = signer.issue(KEY)
    signer.verify(cookie)
    signer.verify(cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BA"))
    assert calls == [(32, 32), (32, 32)]


# --- the cookie a request presents ---------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    (b"theme=dark", None),
    (b"theme=dark; session=v1.abc.def", "v1.abc.def"),
    (b"session=", ""),
    (b"api_key=raw-key", None),  # the old cookie: not a session, and never a key
    (b"\x00\x01;;==", None),
    (b'other="a b [c]"; session=v1.abc.def', "v1.abc.def"),  # another app's cookie http.cookies cannot parse
    (b"session=first; session=second", "first"),
    (b"xsession=v1.abc.def", None),
])
def test_presented_session(header: bytes | None, expected: str | None) -> None:
    headers = [(b"cookie", header)] if header is not None else []
    assert presented_session({"headers": headers}) == expected
