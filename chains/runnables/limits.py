"""Input limits, checked where inputs are validated (every route's pydantic models): every text field goes
through `within_limit` (or `user_text`). Set once at start-up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InputLimits:
    max_input_chars: int = 32_000  # one message, or a whole conversation with its system prompt
    max_messages: int = 100


LIMITS = InputLimits()


def configure(max_input_chars: int, max_messages: int) -> None:
    LIMITS.max_input_chars, LIMITS.max_messages = max_input_chars, max_messages


def user_text(text: str) -> str:
    """A message the user typed: not blank, not longer than MAX_INPUT_CHARS."""
    if not text.strip():
        raise ValueError("must not be empty or only whitespace")
    return within_limit(text)


def within_limit(text: str) -> str:
    """Any text a request gives: at most MAX_INPUT_CHARS, and valid Unicode."""
    if len(text) > LIMITS.max_input_chars:
        raise ValueError(f"has {len(text)} characters, more than MAX_INPUT_CHARS={LIMITS.max_input_chars}")
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
    if count > LIMITS.max_messages:
        raise ValueError(f"{count} messages, more than MAX_MESSAGES={LIMITS.max_messages}")
    if characters > LIMITS.max_input_chars:
        raise ValueError(f"{characters} characters in all, more than MAX_INPUT_CHARS={LIMITS.max_input_chars}")
