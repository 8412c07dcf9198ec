"""Runs on the wire: what a request says about its run (the disconnect policy, `Last-Event-ID`, its key), and
the documentation of the events a resumed stream carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Header, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

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
    return RunCaller(owner=request.scope.get(API_KEY_ID), last_event_id=last_event_id or None,
                     on_disconnect=parse_on_disconnect(on_disconnect, ["query", "on_disconnect"]),
                     address=client_address(request.scope))


ON_DISCONNECT = TypeAdapter(Annotated[str | None, Field(max_length=16)])
LAST_EVENT_ID = TypeAdapter(Annotated[str | None, Field(max_length=200)])
Problems = list[dict[str, object]]


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], given: object, where: str, problems: Problems) -> M | None:
    """`given` as `model`, once; its problems (located as FastAPI locates them: `where` first) added to
    `problems`."""
    try:
        return model.model_validate(given, from_attributes=True)  # as FastAPI validates
    except ValidationError as exc:
        problems += [{**error, "loc": (where, *error["loc"])} for error in exc.errors(include_url=False)]
        return None


def validated_value(adapter: TypeAdapter[str | None], given: str | None, loc: tuple[str, str],
                    problems: Problems) -> str | None:
    try:
        return adapter.validate_python(given)
    except ValidationError as exc:
        problems += [{**error, "loc": (*loc, *error["loc"])} for error in exc.errors(include_url=False)]
        return None


def caller_of(request: Request, problems: Problems) -> RunCaller | None:
    """`run_caller` without FastAPI's per-request solving, for the routes served by hand (chains.api.chat.router):
    the same checks and the same problems, in FastAPI's order (a dependency's own parameters first; the
    dependency runs, and may refuse, only when they are valid)."""
    before = len(problems)
    on_disconnect = validated_value(ON_DISCONNECT, request.query_params.get("on_disconnect"),
                                    ("query", "on_disconnect"), problems)
    last_event_id = validated_value(LAST_EVENT_ID, request.headers.get("last-event-id"),
                                    ("header", "last-event-id"), problems)
    if len(problems) > before:
        return None
    return RunCaller(owner=request.scope.get(API_KEY_ID), last_event_id=last_event_id or None,
                     on_disconnect=parse_on_disconnect(on_disconnect, ["query", "on_disconnect"]),
                     address=client_address(request.scope))


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
