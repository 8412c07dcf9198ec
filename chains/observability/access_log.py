"""uvicorn's access line, made safe to keep: no user text, nothing forged.

uvicorn logs `<client>:<port> - "<method> <path>?<query> HTTP/<version>" <status>` on the `uvicorn.access` logger,
its record's args `(client_addr, method, full_path, http_version, status_code)`. As given, that line holds what a
user typed (`GET /chat?message=…`) and whatever a client behind a trusted proxy wrote in X-Forwarded-For. The app
installs a filter on that logger (`install_access_log_filter`, from server.py's create_app) that rewrites the args
before any handler formats them, so it works however the app is served: the project's launcher, plain
`uvicorn server:app`, any number of workers (each imports the app after uvicorn has configured its logging).

- The client: its address normalised as every limit counts it (chains.common.scope.normalised_address), so a
  forwarded value that is not an IP address is `invalid`, never its text.
- The query: each value left out (`/chat?message=…`), the names kept when they look like names; LOG_FULL_URLS
  keeps the query as sent.
- The path, the method and the version: any byte outside printable ASCII percent-encoded (uvicorn has already
  made `"` `%22`), so no request can end the line or add a field.
"""

from __future__ import annotations

import logging
import re

from chains.common.scope import normalised_address

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "…"  # a query value left out
# A query parameter's name shown as it is: short, and of the characters of names (not of a sentence).
_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")
_UNSAFE = re.compile(r"[^\x21-\x7e]")


def _percent_encoded(match: re.Match[str]) -> str:
    char = match.group()  # uvicorn decodes the path as Latin-1: one byte a character
    return "".join(f"%{byte:02X}" for byte in (char.encode("latin-1") if ord(char) < 0x100 else char.encode()))


def printable(text: str) -> str:
    """`text` with every character outside printable ASCII (space included) percent-encoded."""
    return text if text.isascii() and text.isprintable() and " " not in text else _UNSAFE.sub(_percent_encoded, text)


def redacted_query(query: str) -> str:
    """The query's names without their values: `message=hi&stream` → `message=…&…` (a bare word may be text)."""
    shown = []
    for part in query.split("&"):
        name, has_value, _ = part.partition("=")
        shown.append(f"{name}={REDACTED}" if has_value and _NAME.fullmatch(name) else REDACTED)
    return "&".join(shown)


def logged_path(full_path: str, full_urls: bool) -> str:
    path, has_query, query = full_path.partition("?")
    if not has_query:
        return printable(path)
    # Redacted, the query is names of `_NAME`'s characters and REDACTED: nothing left to encode.
    return f"{printable(path)}?{printable(query) if full_urls or not query else redacted_query(query)}"


def logged_client(client_addr: str) -> str:
    """uvicorn's `host:port` (`%s:%d` of the scope's client), the host normalised; empty when there is none."""
    if not client_addr:
        return client_addr
    host, _, port = client_addr.rpartition(":")
    return f"{normalised_address(host)}:{port if port.isdigit() else 0}"


class AccessLineFilter(logging.Filter):
    """Rewrites uvicorn's access record in place (see the module's docstring); passes every record on."""

    def __init__(self, full_urls: bool) -> None:
        super().__init__()
        self.full_urls = full_urls

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:  # uvicorn's access record; anything else is left alone
            client_addr, method, full_path, http_version, status_code = args
            record.args = (logged_client(str(client_addr)), printable(str(method)),
                           logged_path(str(full_path), self.full_urls), printable(str(http_version)), status_code)
        return True


def install_access_log_filter(full_urls: bool) -> AccessLineFilter:
    """The filter on uvicorn's access logger, replacing one an earlier app of this process installed."""
    logger = logging.getLogger(ACCESS_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, AccessLineFilter)]:
        logger.removeFilter(old)
    installed = AccessLineFilter(full_urls)
    logger.addFilter(installed)
    return installed
