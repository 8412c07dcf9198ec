"""Drives the streaming core without a store or a server: one generation's encoded events, for the unit tests."""

from __future__ import annotations

from typing import Any

from chains.runnables.chat import ChatChain
from chains.streaming.events import EventFormat
from chains.streaming.generation import LiveStreams, StreamOptions, generate
from chains.streaming.run import Listener, Run, new_run_id


def token_events(chain: ChatChain, chain_input: Any, options: StreamOptions, fmt: EventFormat,
                 live: LiveStreams | None = None) -> Listener:
    """One generation's encoded events, for a caller that keeps no run: a run of its own, cancelled when the
    caller stops iterating (its disconnect policy is `cancel`)."""
    run = Run(new_run_id(), None, "cancel", max_events=1_000_000)
    listener = Listener(run)
    generate(run, chain, chain_input, options, fmt, live=live)
    return listener
