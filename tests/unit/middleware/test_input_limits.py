"""chains.middleware.input_limits: InputLimitsInScope puts its app's InputLimits in force for each request it
serves (the validators of chains.runnables.limits read them), in the tasks the request starts too; outside a request
the defaults hold, and two apps in one process keep their own limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chains.middleware.input_limits import InputLimitsInScope
from chains.runnables.limits import DEFAULT_LIMITS, InputLimits, conversation_size, within_limit
from tests.support.asgi import call, scope


class Validating:
    """A route that validates `text` as every request model does (after a pause, so requests interleave), in the
    request itself or in a task it starts (as a generation is), and answers what it found."""

    def __init__(self, text: str, in_task: bool = False, pause: float = 0.0) -> None:
        self.text, self.in_task, self.pause = text, in_task, pause

    def _check(self) -> str:
        try:
            within_limit(self.text)
        except ValueError as exc:
            return str(exc)
        return "ok"

    async def __call__(self, request: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(self.pause)
        if self.in_task:
            verdict = await asyncio.create_task(self._checked_later())
        else:
            verdict = self._check()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": verdict.encode()})

    async def _checked_later(self) -> str:
        await asyncio.sleep(0)
        return self._check()


async def test_a_request_is_validated_with_its_apps_limits() -> None:
    app = InputLimitsInScope(Validating("x" * 11), InputLimits(max_input_chars=10))
    assert (await call(app, scope())).body == b"has 11 characters, more than MAX_INPUT_CHARS=10"
    roomy = InputLimitsInScope(Validating("x" * 11), InputLimits(max_input_chars=11))
    assert (await call(roomy, scope())).body == b"ok"


async def test_the_tasks_a_request_starts_keep_its_limits() -> None:
    app = InputLimitsInScope(Validating("x" * 11, in_task=True), InputLimits(max_input_chars=10))
    assert (await call(app, scope())).body == b"has 11 characters, more than MAX_INPUT_CHARS=10"


async def test_two_apps_in_one_process_keep_their_own_limits_even_interleaved() -> None:
    strict = InputLimitsInScope(Validating("x" * 50, pause=0.02), InputLimits(max_input_chars=10))
    loose = InputLimitsInScope(Validating("x" * 50, pause=0.01), InputLimits(max_input_chars=100))
    answers = await asyncio.gather(*(call(app, scope()) for app in (strict, loose, strict, loose)))
    assert [answer.body for answer in answers] == [b"has 50 characters, more than MAX_INPUT_CHARS=10", b"ok"] * 2


async def test_outside_a_request_the_defaults_hold_again() -> None:
    await call(InputLimitsInScope(Validating("x"), InputLimits(max_input_chars=1, max_messages=1)), scope())
    assert within_limit("x" * DEFAULT_LIMITS.max_input_chars)  # the request's limits did not leak out
    with pytest.raises(ValueError, match=f"MAX_INPUT_CHARS={DEFAULT_LIMITS.max_input_chars}"):
        within_limit("x" * (DEFAULT_LIMITS.max_input_chars + 1))
    conversation_size(DEFAULT_LIMITS.max_messages, 10)


async def test_the_limits_are_reset_when_the_route_fails() -> None:
    async def failing(request: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("the route broke")

    with pytest.raises(RuntimeError):
        await call(InputLimitsInScope(failing, InputLimits(max_input_chars=1)), scope())
    assert within_limit("xy") == "xy"
