"""What the core tells observability (chains.observability) of each generation: it began (its labels), its first
token, and its end (the record); nothing per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StreamLabels:
    """Which surface a generation serves: bounded values only (never user text, never a run id)."""

    route: str = "/chat"
    chain: str = "system-prompt"


@dataclass(slots=True)
class StreamRecord:
    """What the core measured of one generation, handed to the observer once, at its end."""

    run_id: str
    labels: StreamLabels
    ending: str  # done, cancelled, disconnect, timeout, shutdown, or the error type
    finish_reason: str | None
    seconds: float  # from the request to the terminal event
    time_to_first_token: float | None  # the first output: a reasoning piece, or the answer's first token
    time_per_output_token: float | None  # mean gap between tokens after the first (OTel's definition)
    longest_gap: float | None  # the longest silence between two tokens (reasoning pieces included)
    token_events: int
    prompt_tokens: int | None
    completion_tokens: int | None
    time_to_first_reasoning: float | None = None  # None: the model did not reason aloud
    time_to_first_answer: float | None = None
    reasoning_events: int = 0
    reasoning_tokens: int | None = None
    upstream: str | None = None  # which upstream answered (the openai provider)


class StreamObserver(Protocol):
    """Metrics, traces and logs (chains.observability) see each generation begin and end; nothing per token."""

    def stream_started(self, labels: StreamLabels) -> object:
        """Returns a handle (e.g. a span) given back at the end."""
        ...

    def first_token(self, handle: object) -> None: ...

    def stream_ended(self, handle: object, record: StreamRecord) -> None: ...
