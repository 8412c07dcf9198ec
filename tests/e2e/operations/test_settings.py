"""A bad or missing setting stops start-up with one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chains.common.settings import ConfigError, load_settings
from tests.support.servers import ROOT, clean_env


def start_up(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """Start the real server process as a user would and let it fail (or serve /health once and stop)."""
    env = clean_env(**settings)
    return subprocess.run(
        [sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(("settings", "expected"), [
    ({"CHAT_PROVIDER": "gpt5"}, "config error: CHAT_PROVIDER: Input should be 'openai', 'local' or 'fake' (got 'gpt5')"),
    ({"CHAT_PROVIDER": "local", "LOCAL_MODEL_PATH": "/nonexistent/model.gguf"},
     "config error: LOCAL_MODEL_PATH: /nonexistent/model.gguf does not exist or is not a file"),
    ({"CHAT_PROVIDER": "openai"},
     "config error: CHAT_PROVIDER=openai needs OPENAI_API_KEY (any non-empty value for a local server)"),
    ({"CHAT_PROVIDER": "fake", "TEMPERATURE": "hot"},
     "config error: TEMPERATURE: Input should be a valid number, unable to parse string as a number (got 'hot')"),
])
def test_bad_setting_stops_start_up_with_one_line(tmp_path: Path, settings: dict[str, str], expected: str) -> None:
    result = start_up(tmp_path, **settings)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [expected], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_file_that_is_not_a_model_stops_start_up(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a GGUF file")
    result = start_up(tmp_path, CHAT_PROVIDER="local", LOCAL_MODEL_PATH=str(bogus))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"config error: LOCAL_MODEL_PATH: cannot load {bogus}: "), result.stderr
    assert "Traceback" not in result.stderr


def test_the_key_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, chat_provider="openai", openai_api_key="sk-secret-123", openai_timeout="soon")
    assert "sk-secret-123" not in str(info.value)
    assert "OPENAI_TIMEOUT" in str(info.value)


def test_default_provider_is_local_without_a_key_and_openai_with_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHAT_PROVIDER", "OPENAI_API_KEY", "LOCAL_MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)
    local = load_settings(_env_file=None)
    assert local.provider == "local"
    assert local.local_model_path is not None and local.local_model_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert load_settings(_env_file=None, openai_api_key="sk-x").provider == "openai"


def test_settings_come_from_a_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHAT_PROVIDER", "FAKE_REPLY_TOKENS", "CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("CHAT_PROVIDER=fake\nFAKE_REPLY_TOKENS=7\nCORS_ORIGINS=https://chat.example.com,http://localhost:*\n")
    settings = load_settings(_env_file=env_file)
    assert (settings.provider, settings.fake_reply_tokens) == ("fake", 7)
    assert settings.cors_origins == ["https://chat.example.com", "http://localhost:*"]
