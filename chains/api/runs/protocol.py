"""Runs on the wire: what a request says about its run (the disconnect policy, `Last-Event-ID`, its key), and
the documentation of the events a resumed stream carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Header, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

from chains.common.scope import API_KEY_ID, client_address
from chains.streaming.run import OnDisconnect

MAX_GRACE_SECONDS = 3600.0

ON_DISCONNECT_DOC = ("what happens to the run when its last listener goes away: `cancel` (default) stops it at "
                     "once; `continue` lets it run to its end, to be joined later; a number of seconds (0–3600) "
                     "waits that long for a listener to rejoin, then cancels")
LAST_EVENT_ID_DOC = ("resume after this event (`<run id>:<seq>`, the SSE `id:` of the last event received); an "
                     "EventSource sends it by itself when it reconnects")


def parse_on_disconnect(value: str | float | None, location: list[str]) -> OnDisconnect:
    if value is None:
        return "cancel"
    match value:
        case "cancel" | "continue":
            return value
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 <= seconds <= MAX_GRACE_SECONDS or seconds != seconds:
        raise RequestValidationError([{"loc": location, "type": "value_error", "msg": (
            f"on_disconnect must be `cancel`, `continue` or seconds from 0 to {MAX_GRACE_SECONDS:g}, not {value!r}")}])
    return seconds


@dataclass(frozen=True, slots=True)
class RunCaller:
    """Who asks, and how: the owner of a new run (a fingerprint of the API key, or None without keys), the run
    to rejoin (`Last-Event-ID`), the disconnect policy of a new run, and the client address it counts against
    (None: not counted by address)."""

    owner: str | None
    last_event_id: str | None
    on_disconnect: OnDisconnect
    address: str | None = None


async def run_caller(
    request: Request,
    on_disconnect: Annotated[str | None, Query(description=ON_DISCONNECT_DOC, max_length=16)] = None,
    last_event_id: Annotated[str | None, Header(description=LAST_EVENT_ID_DOC, max_length=200)] = None,
) -> RunCaller:
    """A dependency of every route that starts a run (async: a sync dependency would cost a thread hop)."""
    return caller(request, on_disconnect, last_event_id)


def caller(request: Request, on_disconnect: str | None, last_event_id: str | None) -> RunCaller:
    return RunCaller(owner=request.scope.get(API_KEY_ID), last_event_id=last_event_id or None,
                     on_disconnect=parse_on_disconnect(on_disconnect, ["query", "on_disconnect"]),
                     address=client_address(request.scope))


# --- the same, validated by hand (the routes `chains.api.chat.router.served_by` serves) --------------------------

T = TypeVar("T")
Problems = list[dict[str, object]]
ON_DISCONNECT = TypeAdapter(Annotated[str | None, Field(max_length=16)])
LAST_EVENT_ID = TypeAdapter(Annotated[str | None, Field(max_length=200)])


def validated(adapter: TypeAdapter[T], given: object, loc: tuple[str, ...], problems: Problems) -> T | None:
    """`given` validated once, as FastAPI validates a parameter (`from_attributes`); its problems, located as
    FastAPI locates them (`loc` first), added to `problems`."""
    try:
        return adapter.validate_python(given, from_attributes=True)
    except ValidationError as exc:
        problems += [{**error, "loc": (*loc, *error["loc"])} for error in exc.errors(include_url=False)]
        return None


def caller_of(request: Request, problems: Problems) -> RunCaller | None:
    """`run_caller` without FastAPI's per-request solving: the same checks and the same problems, in FastAPI's
    order (a dependency's own parameters first; the dependency runs, and may refuse, only when they are valid)."""
    before = len(problems)
    on_disconnect = validated(ON_DISCONNECT, request.query_params.get("on_disconnect"), ("query", "on_disconnect"),
                              problems)
    last_event_id = validated(LAST_EVENT_ID, request.headers.get("last-event-id"), ("header", "last-event-id"),
                              problems)
    return caller(request, on_disconnect, last_event_id) if len(problems) == before else None


@dataclass(frozen=True, slots=True)
class RunClient:
    """Who starts a run where the request says nothing else about it (`/v1`): the key's fingerprint (None
    without keys) and the client address; the run counts against both budgets."""

    owner: str | None = None
    address: str | None = None


ANONYMOUS = RunClient()  # counted against no budget (in-process callers: tests, the bench)


async def run_client(request: Request) -> RunClient:
    return RunClient(request.scope.get(API_KEY_ID), client_address(request.scope))


async def run_owner(request: Request) -> str | None:
    """A dependency of the routes that reach an existing run."""
    return request.scope.get(API_KEY_ID)
