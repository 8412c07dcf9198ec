"""Paths refused before any route decodes them."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from chains.common.responses import refuse

_CONFIG_HASH = re.compile(r"/c/([^/]*)")
_PLAYGROUND_SUBDIRECTORY = re.compile(r"^/[^/]+/playground/.+/$")


class PathLimits:
    """Paths refused before any route decodes them: a LangServe config hash (`/<chain>/c/<hash>/…`) longer than
    MAX_CONFIG_HASH_CHARS (LangServe decompresses it in full first: a 64 KB hash grew to 392 million characters
    and 1.1 GB), a NUL byte (a 500 from the file system), a directory under a LangServe playground (a 500 with
    the site-packages path in it)."""

    def __init__(self, app: ASGIApp, max_config_hash_chars: int) -> None:
        self.app = app
        self.max_config_hash_chars = max_config_hash_chars

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            hashed = _CONFIG_HASH.search(path)
            if hashed is not None and len(hashed.group(1)) > self.max_config_hash_chars:
                await refuse(414, "config_hash_too_long", f"the config hash has {len(hashed.group(1))} characters, "
                             f"more than MAX_CONFIG_HASH_CHARS={self.max_config_hash_chars}")(scope, receive, send)
                return
            if "\x00" in path:
                await refuse(400, "invalid_path", "the path contains a NUL byte")(scope, receive, send)
                return
            if _PLAYGROUND_SUBDIRECTORY.match(path):
                await refuse(404, "not_found", "not found")(scope, receive, send)
                return
        await self.app(scope, receive, send)
