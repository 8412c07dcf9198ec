"""The one harness that starts servers for the tests and the bench: our app as `make run` serves it
(`chains.hosting.launcher.command()`), or any other command (an upstream, a baseline), on a loopback port.

Each server
- runs in a process group of its own (`start_new_session`), so that `stop_process` stops it with its workers;
- dies with the process that started it, even one killed with SIGKILL: the kernel's parent-death signal
  (PR_SET_PDEATHSIG) kills the server, and a watchdog process (`tests.support.watchdog`) kills its whole group,
  the workers included, which no parent-death signal set from outside can reach;
- writes its own log file, `tests/artifacts/<name>-<pid>-<n>.log` (parallel runs and repeated starts of one name
  never share one);
- gets an explicit environment (`clean_env`): a short whitelist of the shell's variables (PATH, HOME, locale,
  temp and cache directories, the virtualenv, PYTHONPATH) plus the test's own settings, and `ENV_FILE=""`, so no
  `.env` is read unless the test names one.

`stop_all` stops whatever is still running (the test session's end calls it; so does interpreter exit).

The one way a test runs a server for a stretch of code: `with running_app(name, **settings) as server:` (or
`running_replicas`, `running_upstream`, `stopping(start_redis())`); pytest fixtures over it are in
`tests.support.fixtures`.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from chains.hosting import launcher

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
HOST = "127.0.0.1"

# What a server keeps of the shell's environment: enough to run Python and find its caches; no settings.
_KEPT = ("PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "XDG_CACHE_HOME", "VIRTUAL_ENV", "PYTHONPATH")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # resolved here: the child between fork and exec only calls it
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_serial = itertools.count(1)
_running: dict[int, LiveServer] = {}  # by pid: started and not yet stopped


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def clean_env(**settings: str) -> dict[str, str]:
    """The whitelist of the shell's environment, no `.env` (`ENV_FILE=""`), then exactly these settings (a test
    may pass ENV_FILE itself)."""
    env = {k: v for k, v in os.environ.items() if k in _KEPT or k.startswith("LC_")}
    env["ENV_FILE"] = ""
    env.update(settings)
    return env


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    watchdog: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def group(self) -> list[int]:
        """The live processes of its process group: the server, its workers and their helpers."""
        return group_members(self.process.pid)


def group_members(group: int) -> list[int]:
    """Processes (zombies excluded) whose process group is `group`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _parent, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z":
            members.append(int(entry.name))
    return members


def _die_with_the_starter() -> None:
    """Runs in the child between fork and exec: SIGKILL when the thread that started it ends."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _log_file(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}-{os.getpid()}-{next(_serial)}.log"


def _spawn(args: list[str], env: dict[str, str], name: str, url: str) -> LiveServer:
    """`args` in a process group of its own, logging to its own file, killed with this process (the parent-death
    signal, and a watchdog for what that misses)."""
    log = _log_file(name)
    # The parent-death signal fires when the starting *thread* ends: only set from the main thread, whose end is
    # the process's (the watchdog covers the rest).
    main_thread = threading.current_thread() is threading.main_thread()
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_the_starter if main_thread else None)
    watchdog = subprocess.Popen([sys.executable, "-m", "tests.support.watchdog", str(os.getpid()), str(process.pid)],
                                cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL, start_new_session=True)
    server = LiveServer(url, process, log, watchdog)
    _running[process.pid] = server
    return server


def start_process(args: list[str], env: dict[str, str], name: str, health_path: str, port: int,
                  seconds: float = 60) -> LiveServer:
    """Starts `args` (cwd: the repository) and waits until `health_path` answers 200. `env` is the whole
    environment: build it with `clean_env`."""
    server = _spawn(args, env, name, f"http://{HOST}:{port}")
    try:
        _wait_until_up(server, health_path, seconds)
    except BaseException:
        stop_process(server)
        raise
    return server


def _wait_until_up(server: LiveServer, path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not come up in {seconds}s:\n{server.output()}")


def start_app(name: str, workers: int = 1, quiet: bool = False, **settings: str) -> LiveServer:
    """The app on a free loopback port with exactly these settings, served as `make run` serves it."""
    port = free_port()
    return start_process(launcher.command(HOST, port, workers, quiet=quiet), clean_env(**settings), name, "/health",
                         port)


def start_upstream(app: str, name: str, health_path: str = "/v1/models") -> LiveServer:
    """A loopback server of the tests' own (`tests.support.fault_upstream:app`, `tests.support.otlp_receiver:app`…)
    under uvicorn on a free port, up once `health_path` answers 200."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port), "--log-level", "warning"]
    return start_process(args, clean_env(), name, health_path, port)


@contextmanager
def stopping(server: LiveServer) -> Iterator[LiveServer]:
    """`server` for the block, stopped however the block ends (stopping one already stopped does nothing)."""
    try:
        yield server
    finally:
        stop_process(server)


def running_app(name: str, workers: int = 1, quiet: bool = False,
                **settings: str) -> AbstractContextManager[LiveServer]:
    """`start_app` for the block: `with running_app("name", CHAT_PROVIDER="fake") as server: …`."""
    return stopping(start_app(name, workers, quiet, **settings))


@contextmanager
def running_replicas(names: tuple[str, ...], workers: int = 1, **settings: str) -> Iterator[list[LiveServer]]:
    """One app per name, all with these settings (replicas of one deployment), for the block."""
    with ExitStack() as stack:
        yield [stack.enter_context(running_app(name, workers, False, **settings)) for name in names]


def running_upstream(app: str, name: str, health_path: str = "/v1/models") -> AbstractContextManager[LiveServer]:
    """`start_upstream` for the block."""
    return stopping(start_upstream(app, name, health_path))


def stop_process(server: LiveServer, grace: float = 10) -> None:
    """SIGTERM to the server (uvicorn stops its workers itself), then SIGKILL to whatever of its process group is
    left after `grace` seconds (or at once, if the server has exited), then the watchdog. Returns once no process
    of the group is left (5 s at most)."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    deadline = time.monotonic() + 5  # a SIGKILLed process takes a moment to exit: stopped means gone
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if server.watchdog is not None:
        server.watchdog.kill()
        server.watchdog.wait()
    _running.pop(process.pid, None)


def stop_all() -> None:
    """Stops every server started here and not stopped yet (a fixture that never got to its teardown)."""
    for server in list(_running.values()):
        stop_process(server, grace=2)


atexit.register(stop_all)


def first_token_seconds(url: str) -> float:
    """Seconds until the first token of a fresh `/chat` request arrives; the request is then abandoned. On the
    embedded model (one generation at a time) it tells whether an earlier generation still holds the model."""
    started = time.monotonic()
    with httpx.stream("POST", url + "/chat", json={"message": "Say hi."}, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith('data: {"token"'):
                return time.monotonic() - started
    raise AssertionError("no token arrived")


REDIS_SERVER = "/usr/bin/redis-server"


def start_redis(port: int | None = None, seconds: float = 15, aof_dir: Path | None = None) -> LiveServer:
    """A real redis-server (Debian's) on loopback, managed like the other servers; its `url` is
    `redis://127.0.0.1:<port>`. `port`: start again on the port of one that was stopped. Nothing is persisted,
    unless `aof_dir`: then an append-only file there, fsynced every second (`appendonly yes`, `appendfsync
    everysec`), which a redis-server started again on the same directory reads back."""
    port = free_port() if port is None else port
    persistence = ["--appendonly", "no"] if aof_dir is None else [
        "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(aof_dir)]
    args = [REDIS_SERVER, "--port", str(port), "--bind", HOST, "--save", "", *persistence,
            "--protected-mode", "yes", "--daemonize", "no"]
    server = _spawn(args, clean_env(), "redis", f"redis://{HOST}:{port}")
    process = server.process
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_process(server)
            raise RuntimeError(f"redis-server exited with {process.returncode}:\n{server.output()}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            pass
        time.sleep(0.05)
    stop_process(server)
    raise RuntimeError(f"redis-server did not come up in {seconds}s:\n{server.output()}")
