"""The terminal event of a run whose replica was lost, as another replica builds it from the events the run kept
(chains.streaming.events.LOST_ENDINGS): for each surface's encoding, what the encoding itself would have sent had
it ended the run with that error — the client's parser cannot tell who wrote it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from chains.api.chat.protocol import JsonEvents, RawText
from chains.api.openai.protocol import ChatCompletionBody, ChatCompletionChunks
from chains.api.responses.protocol import STRIDE, ResponseEvents, ResponseRequest, frames_of
from chains.api.ui.protocol import UIMessageStream
from chains.streaming.events import LOST_ENDINGS, ErrorEvent, EventFormat, StartEvent

RUN = "B" * 22
# The last ones look like the encodings' own markers: a lost ending must not take them for them.
TOKENS = ["Hel", "lo", ", ", "wor", "ld\n", "\"quoted\" é 🙂", "text-end", '"type":"text-end"', "\nevent: x"]
LOST = ErrorEvent(error="the replica generating this run was lost", type="replica_lost")


def event_id(seq: int) -> bytes:
    return b"%b:%d" % (RUN.encode(), seq)


def sent(fmt: EventFormat, reasoning: list[str], tokens: list[str]) -> tuple[bytes, int]:
    """What the encoding sent for a start, reasoning pieces and tokens; and the next seq."""
    parts = [fmt.start(event_id(0), StartEvent(timestamp=1.0, run_id=RUN)) or b""]
    seq = 1
    for count, piece in enumerate(reasoning, 1):
        parts.append(fmt.reasoning(event_id(seq), piece, count))
        seq += 1
    for count, token in enumerate(tokens, 1):
        parts.append(fmt.tokens(event_id(seq), token, count))
        seq += 1
    return b"".join(parts), seq


FORMATS: dict[str, Callable[[], EventFormat]] = {
    "chat": JsonEvents,
    "raw": RawText,
    "chat.completion.chunk": lambda: ChatCompletionChunks("conversation", include_usage=True),
    "chat.completion": lambda: ChatCompletionBody("conversation"),
    "ui-message-stream": UIMessageStream,
}


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize(("reasoning", "tokens"), [([], TOKENS), (["think", "ing"], TOKENS), (["hm"], []), ([], [])])
def test_the_lost_ending_is_what_the_encoding_would_have_sent(name: str, reasoning: list[str],
                                                              tokens: list[str]) -> None:
    fmt = FORMATS[name]()
    assert fmt.name == name
    kept, seq = sent(fmt, reasoning, tokens)
    # The encoding's own ending, as the generating replica would have written it: it says what it had sent.
    own = copy.copy(fmt).error(event_id(seq), LOST.model_copy(update={"full_response": "".join(tokens),
                                                                       "token_count": len(tokens)}))
    assert LOST_ENDINGS[name](kept, event_id(seq), LOST) == own


def test_the_chat_ending_carries_the_partial_reply_its_count_and_its_own_id() -> None:
    kept, seq = sent(JsonEvents(), ["think"], TOKENS)
    ending = LOST_ENDINGS["chat"](kept, event_id(seq), LOST).decode()
    assert ending.startswith(f"id: {RUN}:{seq}\nevent: error\ndata: ")
    body = json.loads(ending.split("data: ", 1)[1])
    assert body == {"error": LOST.error, "type": "replica_lost", "full_response": "".join(TOKENS),
                    "token_count": len(TOKENS)}


def test_the_responses_ending_is_response_failed_with_the_output_so_far() -> None:
    fmt = ResponseEvents(ResponseRequest.model_validate({"model": "conversation", "input": "hi",
                                                         "metadata": {"k": "v"}}))
    kept, seq = sent(fmt, ["think"], TOKENS)
    lost = LOST_ENDINGS["responses"](kept, event_id(seq), LOST)
    own = fmt.error(event_id(seq), LOST)
    (frame,), (expected,) = frames_of(lost), frames_of(own)
    TypeAdapter(ResponseStreamEvent).validate_python(frame)  # what the openai SDK parses
    assert frame["type"] == "response.failed" and frame["sequence_number"] == seq * STRIDE
    for response in (frame["response"], expected["response"]):
        response.pop("completed_at")
    assert frame == expected
    assert frame["response"]["output"][-1]["content"][0]["text"] == "".join(TOKENS)
    assert frame["response"]["error"]["message"] == LOST.error


def test_an_encoding_without_an_ending_of_its_own_ends_in_the_plain_error_event() -> None:
    ending = LOST_ENDINGS["no-such-encoding"](b"anything", event_id(3), LOST)
    assert ending == b'id: %b\nevent: error\ndata: {"error":"%b","type":"replica_lost"}\n\n' % (
        event_id(3), LOST.error.encode())
