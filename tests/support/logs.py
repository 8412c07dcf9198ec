"""Reading the server's log lines as an operator's tools would: logfmt's `key=value` pairs, strictly."""

from __future__ import annotations

import re

# One pair: a name, `=`, then a double-quoted value (with backslash escapes) or a bare one, then a space or the end.
PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?:\s|$)')


def logfmt_pairs(text: str) -> list[tuple[str, str]]:
    """Every `key=value` pair of a logfmt text, in order; fails if anything between them is not one."""
    pairs, at = [], 0
    while at < len(text):
        match = PAIR.match(text, at)
        assert match, f"not logfmt at {at}: {text[at:]!r}"
        pairs.append((match.group(1), match.group(2)))
        at = match.end()
    return pairs
