"""chains.runnables.limits: the input limits every request model's validators apply — a message not blank and not
too long, any text valid Unicode, a conversation within its turns and characters — under the limits in force."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chains.runnables.chat import ConversationInput, SystemPromptInput
from chains.runnables.limits import InputLimits, conversation_size, input_limits, user_text, within_limit

SMALL = InputLimits(max_input_chars=5, max_messages=2)


@pytest.mark.parametrize("text", ["", " ", "\n\t "])
def test_a_users_message_is_not_blank(text: str) -> None:
    with pytest.raises(ValueError, match="must not be empty or only whitespace"):
        user_text(text)


def test_text_is_at_most_max_input_chars_counted_in_characters() -> None:
    with input_limits(SMALL):
        assert within_limit("你好世界🙂") == "你好世界🙂"  # five characters
        assert user_text(" hi ") == " hi "  # kept as given
        with pytest.raises(ValueError) as refused:
            within_limit("abcdef")
    assert str(refused.value) == "has 6 characters, more than MAX_INPUT_CHARS=5"


def test_a_lone_surrogate_is_refused_with_its_place_and_a_pair_is_fine() -> None:
    with pytest.raises(ValueError) as refused:
        within_limit("ok \ud800 then")
    assert str(refused.value) == "has an unpaired surrogate (U+D800 at character 3): not valid Unicode"
    assert within_limit("\U0001f642") == "\U0001f642"


def test_a_conversation_is_within_its_turns_and_characters_in_all() -> None:
    with input_limits(SMALL):
        conversation_size(2, 5)
        with pytest.raises(ValueError, match=r"^3 messages, more than MAX_MESSAGES=2$"):
            conversation_size(3, 1)
        with pytest.raises(ValueError, match=r"^6 characters in all, more than MAX_INPUT_CHARS=5$"):
            conversation_size(2, 6)


def test_limits_nest_and_are_restored_when_a_block_ends() -> None:
    with input_limits(InputLimits(max_input_chars=10)):
        with input_limits(SMALL), pytest.raises(ValueError):
            within_limit("x" * 6)
        assert within_limit("x" * 10)
        with pytest.raises(ValueError):
            within_limit("x" * 11)


def test_the_chain_inputs_validate_under_the_limits_in_force() -> None:
    with input_limits(SMALL):
        with pytest.raises(ValidationError, match="MAX_INPUT_CHARS=5"):
            SystemPromptInput(message="abcdef")
        with pytest.raises(ValidationError, match="MAX_INPUT_CHARS=5"):  # the whole conversation, prompt included
            ConversationInput(messages=[{"role": "user", "content": "abc"}], system_prompt="def")  # type: ignore[list-item]
        with pytest.raises(ValidationError, match="MAX_MESSAGES=2"):
            ConversationInput(messages=[{"role": "user", "content": "a"}] * 3)  # type: ignore[list-item]
    assert SystemPromptInput(message="abcdef").message == "abcdef"  # outside: the defaults
