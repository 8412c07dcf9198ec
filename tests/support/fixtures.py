"""Pytest fixtures over the server harness (`tests.support.servers`): one factory for a fixture that serves our
app, so that a test module says which settings it needs in one line instead of repeating start, yield and stop.

    runs_server = app_fixture("runs-server", CHAT_PROVIDER="fake", FAKE_REPLY_TOKENS="20")
    fault_server = app_fixture("v1-fault-server", CHAT_PROVIDER="openai",
                               OPENAI_BASE_URL=url_of("fault_upstream", "/v1"), ...)

A setting is a string, or a function of the fixture request resolved when the app starts (`url_of`: the URL of a
server another fixture provides). pytest names the fixture after the variable it is assigned to. `upstream_fixture`
and `server_fixture` do the same for the tests' own upstreams and any other server. For apps a test starts itself,
the `serve_app` fixture (imported by tests/conftest.py) hands out `start_app` and stops them at the test's end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Literal, Protocol

import pytest

from tests.support.servers import LiveServer, running_app, start_app, start_upstream, stopping

Scope = Literal["session", "package", "module", "class", "function"]
Setting = str | Callable[[pytest.FixtureRequest], str]


def url_of(fixture: str, path: str = "") -> Callable[[pytest.FixtureRequest], str]:
    """A setting read when the app starts: the URL of the server fixture `fixture` provides, plus `path`."""
    def resolve(request: pytest.FixtureRequest) -> str:
        server: LiveServer = request.getfixturevalue(fixture)
        return server.url + path
    return resolve


def pointed_at(fixture: str, model: str, key: str = "sk-test-not-a-real-key") -> dict[str, Setting]:
    """Settings for our app with CHAT_PROVIDER=openai, pointed at the OpenAI-compatible server `fixture` provides."""
    return {"CHAT_PROVIDER": "openai", "OPENAI_API_KEY": key, "OPENAI_BASE_URL": url_of(fixture, "/v1"),
            "OPENAI_MODEL": model}


def _resolved(settings: dict[str, Setting], request: pytest.FixtureRequest) -> dict[str, str]:
    return {key: value if isinstance(value, str) else value(request) for key, value in settings.items()}


def server_fixture(start: Callable[[pytest.FixtureRequest], LiveServer], *, scope: Scope = "module",
                   doc: str | None = None) -> Callable[..., Iterator[LiveServer]]:
    """A fixture yielding the server `start(request)` starts, for `scope`, stopped at the scope's end."""
    def server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
        with stopping(start(request)) as live:
            yield live
    server.__doc__ = doc
    return pytest.fixture(scope=scope)(server)


def app_fixture(name: str, *, scope: Scope = "module", workers: int = 1, doc: str | None = None,
                **settings: Setting) -> Callable[..., Iterator[LiveServer]]:
    """A fixture serving our app, `start_app(name, workers, **settings)`, for `scope`."""
    return server_fixture(lambda request: start_app(name, workers, **_resolved(settings, request)), scope=scope,
                          doc=doc or f"Our app as {name!r}.")


def upstream_fixture(app: str, name: str, *, scope: Scope = "module",
                     doc: str | None = None) -> Callable[..., Iterator[LiveServer]]:
    """A fixture serving one of the tests' own upstreams, `start_upstream(app, name)`, for `scope`."""
    return server_fixture(lambda request: start_upstream(app, name), scope=scope, doc=doc or f"`{app}` under uvicorn.")


class ServeApp(Protocol):
    """The `serve_app` fixture's value: `start_app`'s signature."""

    def __call__(self, name: str, workers: int = 1, quiet: bool = False, **settings: str) -> LiveServer: ...


@pytest.fixture
def serve_app() -> Iterator[ServeApp]:
    """Starts our app as `start_app` does, for apps a test starts itself (with settings of its own, or to stop
    them): every app started through it stops when the test ends, the last started first."""
    with ExitStack() as stack:
        def serve(name: str, workers: int = 1, quiet: bool = False, **settings: str) -> LiveServer:
            return stack.enter_context(running_app(name, workers, quiet, **settings))
        yield serve
