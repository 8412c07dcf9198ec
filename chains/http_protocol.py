"""uvicorn's httptools protocol, accepting raw UTF-8 in the request line as curl sends it.

The tutorial's commands (`curl -X POST "http://localhost:8000/chat-token?message=讲个笑话"`) put raw UTF-8
bytes in the URL; curl sends them unencoded, and both of uvicorn's parsers reject them ("Invalid HTTP request
received"). Before the parser sees a new request, this percent-encodes the bytes >= 0x80 of its request line,
which is what a browser would have sent. Headers and bodies are untouched. Use with
`uvicorn server:app --http chains.http_protocol:Utf8RequestLineProtocol` (as `make run` does).
"""

from __future__ import annotations

import re

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_NON_ASCII = re.compile(rb"[\x80-\xff]")


def _percent_encode(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match.group()[0]


class Utf8RequestLineProtocol(HttpToolsProtocol):
    _at_request_start = True

    def data_received(self, data: bytes) -> None:
        if self._at_request_start:
            line_end = data.find(b"\n")
            request_line = data if line_end < 0 else data[:line_end]
            if not request_line.isascii():
                data = _NON_ASCII.sub(_percent_encode, request_line) + data[len(request_line):]
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._at_request_start = False
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._at_request_start = True
        super().on_message_complete()
