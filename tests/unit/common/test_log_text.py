"""chains.common.log_text: a value can neither end a log line nor pose as another field, and a safe value is
written as it is."""

from __future__ import annotations

import json

import orjson
import pytest

from chains.common.log_text import json_line, logfmt, logfmt_value, one_line
from tests.support.logs import logfmt_pairs

# A logfmt pair: a bare value, or a double-quoted one with backslash escapes.
HOSTILE = [
    "1.2.3.4 ending=done tokens=999 run_id=FAKE",
    'a" ending="done',
    "line\nstream end run_id=FAKE client=9.9.9.9",
    "cr\rx=1", "tab\tx=1", "nel\x85x=1", "ls\u2028x=1", "ps\u2029x=1", "vt\x0bff\x0cfs\x1cx=1",
    "bidi\u202eenod=gnidne", "nul\x00x=1", "esc\x1b[31mred", "back\\slash", "\\", '"', "=", "", " ",
]




def unquoted(value: str) -> str:
    if not value.startswith('"'):
        return value
    return value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_stays_one_field_on_one_line(value: str) -> None:
    line = logfmt({"run_id": "abc", "client": value, "ending": "done"})
    assert len(line.splitlines()) == 1 and line.isprintable()
    pairs = logfmt_pairs(line)
    assert [key for key, _ in pairs] == ["run_id", "client", "ending"]
    assert unquoted(pairs[1][1]) == value  # escaped, not lost: the value reads back as it was


@pytest.mark.parametrize(("value", "written"), [
    ("done", "done"), ("/chat", "/chat"), (3, "3"), (0.25, "0.25"), (None, "-"), ("127.0.0.1", "127.0.0.1"),
    ("2001:db8::1", "2001:db8::1"), ("讲个笑话", "讲个笑话"), ("", '""'), ("a b", '"a b"'), ("a=b", '"a=b"'),
    ('say "hi"', '"say \\"hi\\""'), ("a\nb", '"a\\nb"'), ("\x85", '"\\x85"'), ("\u2028", '"\\u2028"'),
    ("\U000e0001", '"\\U000e0001"'),
])
def test_values_as_written(value: object, written: str) -> None:
    assert logfmt_value(value) == written


@pytest.mark.parametrize("value", HOSTILE)
def test_json_lines_stay_one_line_and_the_same_value(value: str) -> None:
    line = json_line(orjson.dumps({"client": value}).decode())
    assert len(line.splitlines()) == 1
    assert json.loads(line) == {"client": value}


def test_one_line_escapes_and_bounds_free_text() -> None:
    assert one_line("/chat\nstream end run_id=FAKE") == "/chat\\nstream end run_id=FAKE"
    assert one_line("plain text") == "plain text"
    assert len(one_line("x" * 10_000, limit=100)) == 101
    for value in HOSTILE:
        assert len(one_line(value).splitlines()) <= 1 and one_line(value).isprintable()
