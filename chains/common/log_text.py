"""Text that came with a request, made safe for a log line: a value can neither end the line nor pose as another
field. `logfmt` writes `key=value` pairs (logfmt's quoting); `one_line` makes any text a single printable line, for
the `%s` of a plain log message."""

from __future__ import annotations

from collections.abc import Mapping

# What may stand in a bare logfmt value: no space, `=` or `"`, and only printable characters (which excludes every
# control and format character and every line or paragraph separator that `str.splitlines` would break on).
_NEEDS_QUOTES = frozenset(' ="\\')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def logfmt_value(value: object) -> str:
    """A value as logfmt writes it: bare when it is safe so (the common case costs one scan), else double-quoted
    with `\\`, `"` and every non-printable character escaped. None is `-`."""
    if value is None:
        return "-"
    text = str(value)
    if text and text.isprintable() and _NEEDS_QUOTES.isdisjoint(text):  # both scans in C
        return text
    return '"' + "".join(_escaped(char) for char in text) + '"'


def logfmt(fields: Mapping[str, object]) -> str:
    """`key=value …` in the mapping's order; the keys are ours, the values may be anyone's."""
    return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())


# What JSON leaves raw but `str.splitlines` (and many a log viewer) breaks a line at.
_JSON_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_line(encoded: str) -> str:
    """A JSON text (orjson's: control characters already escaped) with the line breaks JSON allows raw escaped
    too: still the same JSON value, now one line by every reckoning."""
    return encoded.translate(_JSON_LINE_BREAKS) if not encoded.isascii() else encoded


def one_line(text: object, limit: int = 500) -> str:
    """Any text as one printable line of at most `limit` characters (plus an ellipsis): non-printable characters
    escaped as in `logfmt_value`, unquoted."""
    shown = str(text)
    shortened = len(shown) > limit
    if shortened:
        shown = shown[:limit]
    if not shown.isprintable() or "\\" in shown:
        shown = "".join(_escaped(char) if char != '"' else char for char in shown)
    return shown + ("…" if shortened else "")
