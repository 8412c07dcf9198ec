"""chains.api.runs.protocol: what a request says about its run — the disconnect policy, checked where it is given."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError

from chains.api.runs.protocol import MAX_GRACE_SECONDS, parse_on_disconnect

WHERE = ["query", "on_disconnect"]


@pytest.mark.parametrize(("given", "policy"), [
    (None, "cancel"), ("cancel", "cancel"), ("continue", "continue"), ("0", 0.0), ("2.5", 2.5), (7, 7.0),
    (str(MAX_GRACE_SECONDS), MAX_GRACE_SECONDS),
])
def test_the_policies_and_a_grace_in_seconds(given: str | float | None, policy: object) -> None:
    assert parse_on_disconnect(given, WHERE) == policy


@pytest.mark.parametrize("given", ["-1", "3600.5", "nan", "inf", "soon", "CANCEL", ""])
def test_anything_else_is_refused_naming_the_parameter(given: str) -> None:
    with pytest.raises(RequestValidationError) as refused:
        parse_on_disconnect(given, WHERE)
    [error] = refused.value.errors()
    assert error["loc"] == WHERE and error["msg"] == (
        f"on_disconnect must be `cancel`, `continue` or seconds from 0 to 3600, not {given!r}")
