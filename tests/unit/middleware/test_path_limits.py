"""chains.middleware.path_limits: paths refused before any route decodes them."""

from __future__ import annotations

import pytest

from chains.middleware.path_limits import PathLimits
from tests.support.asgi import Inner, call, scope


@pytest.mark.parametrize(("path", "status", "kind"), [
    ("/single-turn/c/" + "a" * 17 + "/invoke", 414, "config_hash_too_long"),
    ("/single-turn/c/" + "a" * 16 + "/invoke", 200, None),
    ("/single-turn/c/" + "a" * 17, 414, "config_hash_too_long"),
    ("/playground/x\x00.js", 400, "invalid_path"),
    ("/single-turn/playground/assets/", 404, "not_found"),
    ("/single-turn/playground/", 200, None),
    ("/single-turn/playground/assets/index.js", 200, None),
    ("/chat", 200, None),
])
async def test_paths_refused_before_any_route_decodes_them(path: str, status: int, kind: str | None) -> None:
    inner = Inner()
    answer = await call(PathLimits(inner, max_config_hash_chars=16), scope(method="GET", path=path))
    assert answer.status == status and inner.called == (status == 200)
    if kind:
        assert answer.json()["type"] == kind and "\x00" not in answer.json()["error"]
    if status == 414:
        assert answer.json()["error"] == "the config hash has 17 characters, more than MAX_CONFIG_HASH_CHARS=16"
