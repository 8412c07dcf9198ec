"""Runs: every stream is a run kept in a bounded store — resumed with `Last-Event-ID`, cancelled by id, joined
from any replica with Redis."""
