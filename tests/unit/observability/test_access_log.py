"""chains.observability.access_log: uvicorn's access record rewritten before it is formatted — no query values
(unless LOG_FULL_URLS), a client that is an IP address or `invalid`, nothing that ends the line. The record is
built and formatted the way uvicorn's own protocol and AccessFormatter do it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from uvicorn.logging import AccessFormatter
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from chains.observability.access_log import ACCESS_LOGGER, AccessLineFilter, install_access_log_filter


def access_line(client: tuple[str, int], path: str, query: bytes = b"", full_urls: bool = False,
                method: str = "GET") -> str:
    """The line the installed uvicorn (`h11_impl`, `httptools_impl`) logs for this request, through the filter."""
    scope = {"client": client, "raw_path": path.encode("latin-1"), "query_string": query}
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               (get_client_addr(scope), method, get_path_with_query_string(scope), "1.1", 200),
                               None)
    assert AccessLineFilter(full_urls).filter(record)
    return AccessFormatter("%(client_addr)s - \"%(request_line)s\" %(status_code)s", use_colors=False).format(record)


def test_query_values_are_left_out_and_their_names_kept() -> None:
    line = access_line(("10.0.0.1", 5000), "/chat", b"message=%E8%AE%B2%E4%B8%AA%E7%AC%91%E8%AF%9D&timeout=3")
    assert line == '10.0.0.1:5000 - "GET /chat?message=…&timeout=… HTTP/1.1" 200 OK'
    assert access_line(("10.0.0.1", 5000), "/health") == '10.0.0.1:5000 - "GET /health HTTP/1.1" 200 OK'


@pytest.mark.parametrize("query", [b"secret-text", b"my%20secret=1", b"a" * 65 + b"=1", b"=secret"])
def test_a_query_part_that_is_not_a_name_is_left_out_whole(query: bytes) -> None:
    line = access_line(("10.0.0.1", 5000), "/chat", query)
    assert "secret" not in line and "aaaa" not in line and "/chat?…" in line


def test_log_full_urls_keeps_the_query_as_sent() -> None:
    line = access_line(("10.0.0.1", 5000), "/chat", b"message=%E8%AE%B2", full_urls=True)
    assert line == '10.0.0.1:5000 - "GET /chat?message=%E8%AE%B2 HTTP/1.1" 200 OK'


@pytest.mark.parametrize(("client", "shown"), [
    (("1.2.3.4 ending=done tokens=999 run_id=FAKE", 0), "invalid:0"),  # X-Forwarded-For as uvicorn passes it on
    (('1.2.3.4" - "GET /admin HTTP/1.1" 200', 0), "invalid:0"),
    (("::ffff:10.0.0.2", 0), "10.0.0.2:0"),
    (("2001:DB8::1", 443), "2001:db8::1:443"),
])
def test_the_client_is_an_address_or_invalid(client: tuple[str, int], shown: str) -> None:
    assert access_line(client, "/chat").startswith(shown + ' - "GET /chat ')


@pytest.mark.parametrize("full_urls", [False, True])
def test_nothing_in_a_path_ends_the_line(full_urls: bool) -> None:
    line = access_line(("10.0.0.1", 1), "/a\nINFO:     9.9.9.9:1 - \"GET /x\x85\u00a0", b"q=\r\n", full_urls)
    assert len(line.splitlines()) == 1 and line.isprintable()
    assert "/a%0AINFO:%20%20%20%20%209.9.9.9:1%20-%20%22GET%20/x%85%A0" in line


def test_other_records_of_the_logger_pass_unchanged() -> None:
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "something else %s", ("x",), None)
    assert AccessLineFilter(False).filter(record) and record.args == ("x",)


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(ACCESS_LOGGER)
    before = list(logger.filters)
    yield logger
    logger.filters[:] = before


def test_an_app_built_again_replaces_the_filter(access_logger: logging.Logger) -> None:
    install_access_log_filter(False)
    installed = install_access_log_filter(True)
    ours = [f for f in access_logger.filters if isinstance(f, AccessLineFilter)]
    assert ours == [installed] and installed.full_urls
