"""The test harness cleans up after itself (tests/support/servers.py): a server dies with the process that started
it, workers included, even when that process is killed; each start has its own log; a server reads no `.env` and
none of the shell's settings unless the test gives them; `running_app` stops its server however its block ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from chains.common.settings import DEFAULT_SYSTEM_PROMPT
from tests.support.fixtures import ServeApp
from tests.support.servers import ROOT, clean_env, group_members, running_app, stop_process

# A test run in miniature: starts a server through the harness, says which processes it made, then waits to be
# killed (as pytest was, by a segfault, when five servers were found orphaned 50 minutes later).
STARTER = """
import json, sys, time
from tests.support.servers import start_app
server = start_app("harness-orphan", workers=int(sys.argv[1]), CHAT_PROVIDER="fake")
time.sleep(1.0)  # uvicorn's workers have started their helpers
print(json.dumps({"server": server.process.pid, "watchdog": server.watchdog.pid, "group": server.group(),
                  "url": server.url}), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_dies_with_a_starter_that_is_killed(workers: int) -> None:
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(workers)], cwd=ROOT, env=clean_env(),
                               stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(starter.stdout.readline())  # type: ignore[union-attr]
        group = started["group"]
        assert started["server"] in group
        expected = 1 + workers if workers > 1 else 1  # one worker: uvicorn serves in its own process
        assert len(group) >= expected, f"expected the server and {workers} workers in its group: {group}"
        assert httpx.get(started["url"] + "/health", timeout=5).json()["status"] == "ok"
        starter.send_signal(signal.SIGKILL)  # no teardown, no atexit, no session hook
        starter.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in [*group, started["watchdog"]]):
            time.sleep(0.05)
        assert not [pid for pid in group if alive(pid)], "server processes outlived the run that started them"
        assert not alive(started["watchdog"]), "the watchdog outlived its server"
        assert not group_members(started["server"])
        with pytest.raises(httpx.HTTPError):
            httpx.get(started["url"] + "/health", timeout=1)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()


def test_stop_process_stops_the_workers_and_the_watchdog(serve_app: ServeApp) -> None:
    live = serve_app("harness-stop", workers=2, CHAT_PROVIDER="fake")
    time.sleep(0.5)
    members = live.group()
    assert len(members) >= 3
    stop_process(live)
    deadline = time.monotonic() + 5  # SIGKILL to the group is delivered at once, but a dying process takes a moment
    while [pid for pid in members if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in members if alive(pid)]
    assert live.watchdog is not None and live.watchdog.poll() is not None


def test_running_app_stops_the_server_however_the_block_ends() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), \
            running_app("harness-block", CHAT_PROVIDER="fake") as live:
        members = live.group()
        raise RuntimeError("the test failed")
    assert live.process.poll() is not None and not [pid for pid in members if alive(pid)]
    assert live.watchdog is not None and live.watchdog.poll() is not None


def test_each_start_writes_its_own_log(serve_app: ServeApp) -> None:
    first = serve_app("harness-twice", CHAT_PROVIDER="fake")
    second = serve_app("harness-twice", CHAT_PROVIDER="fake")
    assert first.log != second.log
    assert first.log.parent == second.log.parent == ROOT / "tests" / "artifacts"
    assert f":{first.port}" in first.output() and f":{second.port}" not in first.output()
    assert f":{second.port}" in second.output()


def test_the_environment_is_a_whitelist_plus_the_tests_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYSTEM_PROMPT", "from the shell")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-shell")
    monkeypatch.setenv("SOME_TOKEN", "secret")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = clean_env(CHAT_PROVIDER="fake")
    assert env["ENV_FILE"] == "" and env["CHAT_PROVIDER"] == "fake" and env["LC_ALL"] == "C.UTF-8"
    assert env["PATH"] == os.environ["PATH"]
    assert not {"SYSTEM_PROMPT", "OPENAI_API_KEY", "SOME_TOKEN"} & env.keys()
    assert set(env) <= {"PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "XDG_CACHE_HOME", "VIRTUAL_ENV", "PYTHONPATH",
                        "ENV_FILE", "CHAT_PROVIDER"} | {k for k in env if k.startswith("LC_")}


def test_a_settings_file_is_read_only_when_the_test_names_it(serve_app: ServeApp, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tmp_path / "settings.env"
    settings.write_text("SYSTEM_PROMPT=from the settings file\nMAX_MESSAGES=7\n")
    monkeypatch.setenv("SYSTEM_PROMPT", "from the shell")  # never reaches a server
    plain = serve_app("harness-env", CHAT_PROVIDER="fake")
    named = serve_app("harness-env", CHAT_PROVIDER="fake", ENV_FILE=str(settings))
    assert httpx.get(plain.url + "/chat/defaults").json() == {
        "system_prompt": DEFAULT_SYSTEM_PROMPT, "max_input_chars": 32000, "max_messages": 100}
    assert httpx.get(named.url + "/chat/defaults").json() == {
        "system_prompt": "from the settings file", "max_input_chars": 32000, "max_messages": 7}


def test_without_env_file_the_settings_would_read_dot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the harness sets ENV_FILE="": a `.env` in the working directory is otherwise read (chains.common.settings)."""
    from chains.common.settings import load_settings

    (tmp_path / ".env").write_text("SYSTEM_PROMPT=from a developer's .env\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYSTEM_PROMPT", raising=False)
    monkeypatch.delenv("ENV_FILE", raising=False)
    assert load_settings(chat_provider="fake").system_prompt == "from a developer's .env"
    monkeypatch.setenv("ENV_FILE", "")
    assert load_settings(chat_provider="fake").system_prompt == DEFAULT_SYSTEM_PROMPT
