"""chains.observability.upstream: what an upstream's answer counts as in `chains_upstream_failures`."""

from __future__ import annotations

import pytest

from chains.observability.upstream import failure_kind


@pytest.mark.parametrize(("status", "kind"), [
    (200, None), (204, None), (307, None), (399, None),
    (400, "client_error"), (404, "client_error"), (422, "client_error"),
    (401, "auth"), (403, "auth"), (429, "rate_limited"),
    (500, "server_error"), (502, "server_error"), (503, "server_error"),
])
def test_each_failed_answer_has_its_bounded_kind(status: int, kind: str | None) -> None:
    assert failure_kind(status) == kind
