"""API keys, as the auth middleware (chains.middleware.auth) and the sign-in page (chains.api.sign_in) both need
them: the configured keys compared in constant time, the sign-in sessions signed with them, wrong keys counted per
address, and the cookie's name.

The sign-in cookie holds a session, never the key: `v1.<payload>.<mac>`, both base64url, where the payload is the
signing key's id (8 bytes, derived from the key), a random session id (16 bytes) and the expiry (Unix seconds,
8 bytes), and the MAC is HMAC-SHA256 over `v1.` + payload with a secret derived from the key itself. So a leaked
cookie is not a leaked key; replicas with the same API_KEYS accept each other's cookies, with no shared state;
a key removed from API_KEYS takes its cookies with it; and a session ends at its expiry (SESSION_TTL), or when it
signs out (revoked in this process only: another replica, or this one after a restart, accepts it until it
expires).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import SecretStr

COOKIE = "session"  # the cookie the sign-in page sets (HttpOnly, SameSite=Strict, Secure over TLS)


def _raw(key: SecretStr | str | bytes) -> bytes:
    value = key.get_secret_value() if isinstance(key, SecretStr) else key
    return value if isinstance(value, bytes) else value.encode()


def key_id(key: str | bytes) -> str:
    """A fingerprint of a key (never the key): the owner of the runs started with it, by header or by cookie."""
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest()[:32]


class KeyMatcher:
    """The configured keys, compared in constant time: the candidate against every key, with no early exit.

    Each side is hashed first (SHA-256), so every comparison is between two 32-byte digests: its time depends
    neither on where the candidate differs, nor on the length of a key or of the candidate.
    """

    def __init__(self, keys: Sequence[SecretStr | str | bytes], session_ttl: float = 43_200.0,
                 clock: Callable[[], float] = time.time) -> None:
        raw = [_raw(key) for key in keys]
        self._digests = [hashlib.sha256(key).digest() for key in raw]
        if not self._digests or any(len(key) == 0 for key in raw):
            raise ValueError("API keys must be non-empty")
        # The sessions signed with these keys: what the sign-in page issues and the cookie carries.
        self.sessions = Sessions(raw, session_ttl, clock)

    def __call__(self, candidate: str | bytes | None) -> bool:
        if candidate is None:
            return False
        given = hashlib.sha256(candidate if isinstance(candidate, bytes) else candidate.encode()).digest()
        matched = False
        for digest in self._digests:  # all of them, whichever matches
            matched |= hmac.compare_digest(given, digest)
        return matched and len(candidate) > 0


def presented_session(scope: Mapping[str, Any]) -> str | None:
    """The sign-in cookie's value in an ASGI scope's headers, as sent; None when there is none. Read by hand, not
    with http.cookies, which gives up on a whole header at one cookie it cannot parse — and a browser sends this
    site every cookie of its host, other ports' apps' too."""
    headers: Iterable[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name != b"cookie":
            continue
        for pair in value.decode("latin-1").split(";"):
            cookie, has_value, text = pair.strip().partition("=")
            if has_value and cookie == COOKIE:
                return text.strip()  # the first, as RFC 6265 orders them: the most specific path
    return None


# --- sign-in sessions -------------------------------------------------------------------------------------------

_VERSION = "v1"
_SECRET_LABEL = b"chains sign-in session v1"  # a key's MAC secret is HMAC(key, this): the key itself never signs
_SIGNER_BYTES, _SESSION_ID_BYTES, _EXPIRY_BYTES = 8, 16, 8
_PAYLOAD_BYTES = _SIGNER_BYTES + _SESSION_ID_BYTES + _EXPIRY_BYTES
_MAC_BYTES = 32
_BASE64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".decode())

# Why a cookie is refused. The first three are not a session this deployment signed (a guess, a tampered cookie,
# a key since removed): the wrong-key throttle counts them. The last two are genuine sessions that have ended,
# which a browser may well still hold: refused (and cleared), not counted.
Refusal = Literal["malformed", "unknown key", "bad signature", "expired", "signed out"]
COUNTED_REFUSALS: frozenset[Refusal] = frozenset({"malformed", "unknown key", "bad signature"})


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str  # the signing key's fingerprint (`key_id`): the owner of the runs, as with the key in a header
    session_id: bytes
    expires: int  # Unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, size: int) -> bytes | None:
    """`size` bytes from their one canonical unpadded base64url text, else None (no second spelling of a cookie)."""
    if len(text) != math.ceil(size * 4 / 3) or not _BASE64URL.issuperset(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if len(data) == size and _b64(data) == text else None


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, _VERSION.encode() + b"." + payload, hashlib.sha256).digest()


class Sessions:
    """Issues and checks the sign-in cookie's signed sessions (the module's docstring has the format). Signing
    needs no state; sign-out revokes a session in this process, in a bounded set (`max_revoked`; the one nearest
    its own expiry is forgotten first) from which expired sessions are dropped."""

    def __init__(self, keys: Sequence[bytes], ttl: float, clock: Callable[[], float] = time.time,
                 max_revoked: int = 100_000) -> None:
        self.ttl, self.clock, self.max_revoked = ttl, clock, max_revoked
        self._signers: dict[bytes, tuple[bytes, str]] = {}  # signer id → (MAC secret, key_id)
        for key in keys:
            secret = self._secret(key)
            self._signers[self._signer_id(secret)] = (secret, key_id(key))
        self._revoked: dict[bytes, int] = {}  # session id → its expiry
        self._revoked_by_expiry: list[tuple[int, bytes]] = []  # a heap of the same

    @staticmethod
    def _secret(key: bytes) -> bytes:
        return hmac.new(key, _SECRET_LABEL, hashlib.sha256).digest()

    @staticmethod
    def _signer_id(secret: bytes) -> bytes:
        return hmac.new(secret, b"signer id", hashlib.sha256).digest()[:_SIGNER_BYTES]

    @property
    def max_age(self) -> int:
        """The cookie's Max-Age: the session's whole life, in whole seconds."""
        return math.ceil(self.ttl)

    def issue(self, key: SecretStr | str | bytes) -> str:
        """A new session for `key`, one of the configured keys (the caller has matched it), as the cookie's value."""
        secret = self._secret(_raw(key))
        signer = self._signer_id(secret)
        if signer not in self._signers:
            raise ValueError("not a configured key")
        expires = math.ceil(self.clock() + self.ttl)
        payload = signer + secrets.token_bytes(_SESSION_ID_BYTES) + expires.to_bytes(_EXPIRY_BYTES, "big")
        return f"{_VERSION}.{_b64(payload)}.{_b64(_mac(secret, payload))}"

    def verify(self, value: str) -> Session | Refusal:
        """The session a cookie's value holds, or why it is refused. The MAC is compared in constant time."""
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            return "malformed"
        payload, mac = _unb64(parts[1], _PAYLOAD_BYTES), _unb64(parts[2], _MAC_BYTES)
        if payload is None or mac is None:
            return "malformed"
        signer = self._signers.get(payload[:_SIGNER_BYTES])
        if signer is None:  # signed with a key no longer in API_KEYS, or never
            return "unknown key"
        secret, owner = signer
        if not hmac.compare_digest(mac, _mac(secret, payload)):
            return "bad signature"
        expires = int.from_bytes(payload[_SIGNER_BYTES + _SESSION_ID_BYTES:], "big")
        if expires <= self.clock():
            return "expired"
        session_id = payload[_SIGNER_BYTES:_SIGNER_BYTES + _SESSION_ID_BYTES]
        if session_id in self._revoked:
            return "signed out"
        return Session(owner, session_id, expires)

    def revoke(self, session: Session) -> None:
        """Sign-out: this session is refused from now on, in this process, until it would have expired anyway."""
        now = self.clock()
        while self._revoked_by_expiry and self._revoked_by_expiry[0][0] <= now:  # expired: refused anyway
            self._revoked.pop(heapq.heappop(self._revoked_by_expiry)[1], None)
        if session.session_id in self._revoked:
            return
        self._revoked[session.session_id] = session.expires
        heapq.heappush(self._revoked_by_expiry, (session.expires, session.session_id))
        while len(self._revoked) > self.max_revoked:
            self._revoked.pop(heapq.heappop(self._revoked_by_expiry)[1], None)


class FailedAuth:
    """Wrong keys per client address in a sliding window. Memory is bounded: at most `max_addresses` are
    tracked, the least recently failing one forgotten first."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = 10_000) -> None:
        self.limit, self.window, self.clock, self.max_addresses = limit, window, clock, max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Seconds until this address may try a key again, or None if it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self.clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[-self.limit] + self.window - now))

    def record(self, address: str) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[address] = failures  # most recent last
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
