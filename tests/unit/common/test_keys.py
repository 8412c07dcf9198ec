"""chains.common.keys' sign-in sessions: the cookie's codec (what it holds, that a changed character or another
key's signature is refused), expiry, sign-out's bounded revocation, and the cookie a request presents."""

from __future__ import annotations

import hmac
from typing import Any

import pytest

from chains.common import keys
from chains.common.keys import COUNTED_REFUSALS, KeyMatcher, Session, Sessions, key_id, presented_session

KEY = b"session-key-Alpha-7Q2x"
OTHER = b"session-key-Beta-91kd"
TTL = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.25

    def __call__(self) -> float:
        return self.now


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


def test_the_mac_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", counting)
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
