"""API keys, as the auth middleware (chains.middleware.auth) and the sign-in page (chains.api.sign_in) both need
them: the configured keys compared in constant time, wrong keys counted per address, and the cookie's name."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from pydantic import SecretStr

COOKIE = "api_key"  # the cookie the sign-in page sets (HttpOnly, SameSite=Strict)


class KeyMatcher:
    """The configured keys, compared in constant time: the candidate against every key, with no early exit.

    Each side is hashed first (SHA-256), so every comparison is between two 32-byte digests: its time depends
    neither on where the candidate differs, nor on the length of a key or of the candidate.
    """

    def __init__(self, keys: Sequence[SecretStr | str | bytes]) -> None:
        raw = [key.get_secret_value() if isinstance(key, SecretStr) else key for key in keys]
        self._digests = [hashlib.sha256(key if isinstance(key, bytes) else key.encode()).digest() for key in raw]
        if not self._digests or any(len(key) == 0 for key in raw):
            raise ValueError("API keys must be non-empty")

    def __call__(self, candidate: str | bytes | None) -> bool:
        if candidate is None:
            return False
        given = hashlib.sha256(candidate if isinstance(candidate, bytes) else candidate.encode()).digest()
        matched = False
        for digest in self._digests:  # all of them, whichever matches
            matched |= hmac.compare_digest(given, digest)
        return matched and len(candidate) > 0


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
