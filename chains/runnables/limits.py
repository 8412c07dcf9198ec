"""Input limits, checked where inputs are validated (every route's pydantic models): every text field goes
through `within_limit` (or `user_text`), every conversation through `conversation_size`.

The limits are the app's, not the process's: each app passes its `InputLimits` (from its settings) to the
middleware that sets them for the requests it serves (chains.middleware.input_limits), and the validators read
them from the request's context. Outside a request (a test, the bench) the defaults hold. Two apps in one process
each keep their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_input_chars: int = 32_000  # one message, or a whole conversation with its system prompt
    max_messages: int = 100


DEFAULT_LIMITS = InputLimits()
# The limits of the request being validated; its middleware sets them, its tasks (a generation) inherit them.
_current: ContextVar[InputLimits] = ContextVar("input_limits", default=DEFAULT_LIMITS)


@contextmanager
def input_limits(limits: InputLimits) -> Iterator[None]:
    """`limits` hold for what is validated inside the block (and the tasks it starts)."""
    token = _current.set(limits)
    try:
        yield
    finally:
        _current.reset(token)


def user_text(text: str) -> str:
    """A message the user typed: not blank, not longer than MAX_INPUT_CHARS."""
    if not text.strip():
        raise ValueError("must not be empty or only whitespace")
    return within_limit(text)


def within_limit(text: str) -> str:
    """Any text a request gives: at most MAX_INPUT_CHARS, and valid Unicode."""
    limit = _current.get().max_input_chars
    if len(text) > limit:
        raise ValueError(f"has {len(text)} characters, more than MAX_INPUT_CHARS={limit}")
    if not text.isascii():
        # JSON's "\ud800" is a lone surrogate: not Unicode, so neither the model's tokenizer nor a response
        # can encode it (it was a 500 from the local model, a broken stream from /stream_events).
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"has an unpaired surrogate (U+{ord(text[exc.start]):04X} at character {exc.start}): "
                             "not valid Unicode") from None
    return text


def conversation_size(count: int, characters: int) -> None:
    limits = _current.get()
    if count > limits.max_messages:
        raise ValueError(f"{count} messages, more than MAX_MESSAGES={limits.max_messages}")
    if characters > limits.max_input_chars:
        raise ValueError(f"{characters} characters in all, more than MAX_INPUT_CHARS={limits.max_input_chars}")
