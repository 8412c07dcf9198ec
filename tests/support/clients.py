"""What the tests of cancellation and disconnects share: a prompt that makes the embedded model talk for long, and
a client that reads a few events of a stream and then leaves."""

from __future__ import annotations

import time
from typing import Any

import httpx

# At MAX_TOKENS=2000 and temperature 0 the embedded model answers this for ~20 s: long enough that a reply still
# running after a disconnect shows, as a busy model, in the next request.
LONG = "Write a long story about a dragon who learns to bake bread. Make it at least 1000 words."
LONG_LOCAL: dict[str, str] = {"CHAT_PROVIDER": "local", "MAX_TOKENS": "2000", "TEMPERATURE": "0"}  # the settings


def read_then_leave(url: str, path: str, tokens: int, **kwargs: Any) -> float:
    """POSTs `path`, reads `tokens` data events (the start event counts as one), then drops the connection
    mid-stream; returns when it was dropped (time.time())."""
    with httpx.stream("POST", url + path, timeout=60, **kwargs) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data:"):
                seen += 1
                if seen > tokens:
                    break  # leaving the block closes the connection
        left = time.time()
    return left
