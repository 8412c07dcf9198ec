"""A strict Server-Sent Events parser for the tests, following the HTML spec's rules (CR, LF or CRLF ends a line)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(text: str) -> list[Event]:
    """Every event of a complete stream, in order; comment lines are kept on the next event.

    Unlike a browser, a block with an `event:` field but no data (LangServe's `event: end`) is kept too.
    """
    events: list[Event] = []
    data: list[str] = []
    current = Event()
    named = False
    for line in _LINE_END.split(text):
        if line == "":
            if data or named:
                current.data = "\n".join(data)
                events.append(current)
            current, data, named = Event(), [], False  # a comment-only block (heartbeat) dispatches nothing
            continue
        if line.startswith(":"):
            current.comments.append(line[1:])
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            current.event, named = value, True
        elif name == "data":
            data.append(value)
        elif name == "id":
            current.id = value
    return events
