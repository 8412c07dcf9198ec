"""chains.common.settings in-process: a bad setting is one line naming it (never echoing a secret), the cross-field
rules, comma lists from the environment, the CORS origins as one regex, and README's settings table rendered from
the fields. (Start-up as a process, and `.env`: tests/e2e/operations/test_settings.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chains.common import settings as settings_module
from chains.common.settings import ConfigError, Settings, load_settings, settings_table


def refusal(**overrides: object) -> str:
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, **overrides)
    message = str(refused.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_every_bad_field_is_named_in_one_line_with_what_was_given() -> None:
    message = refusal(chat_provider="fake", temperature=9, max_tokens="lots")
    assert message.split("; ") == [
        "TEMPERATURE: Input should be less than or equal to 2 (got 9)",
        "MAX_TOKENS: Input should be a valid integer, unable to parse string as an integer (got 'lots')"]


def test_a_secrets_bad_value_is_never_echoed() -> None:
    message = refusal(chat_provider="fake", openai_api_key=918273645)
    assert message == "OPENAI_API_KEY: Input should be a valid string" and "918273645" not in message


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"chat_provider": "openai"},
     "CHAT_PROVIDER=openai needs OPENAI_API_KEY (any non-empty value for a local server)"),
    ({"chat_provider": "local", "local_model_path": "/nonexistent/model.gguf"},
     "LOCAL_MODEL_PATH: /nonexistent/model.gguf does not exist or is not a file"),
    ({"chat_provider": "fake", "run_store_url": "http://cache:6379"},
     "RUN_STORE_URL: give redis://host:port/db (or rediss://, unix://), or leave it empty for the in-memory store"),
])
def test_the_cross_field_rules(overrides: dict[str, object], expected: str) -> None:
    assert refusal(**overrides) == expected


@pytest.mark.parametrize("url", ["redis://cache:6379/0", "rediss://cache:6380/1", "unix:///run/redis.sock"])
def test_the_run_store_urls_it_takes(url: str) -> None:
    assert load_settings(_env_file=None, chat_provider="fake", run_store_url=url).run_store_url == url


def test_the_provider_and_the_model_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_PROVIDER", raising=False)
    fake = load_settings(_env_file=None, chat_provider="fake")
    assert (fake.provider, fake.model_name) == ("fake", "scripted")
    openai = load_settings(_env_file=None, openai_api_key="sk-x", openai_model="gpt-test")
    assert (openai.provider, openai.model_name) == ("openai", "gpt-test")  # a key and no provider: openai
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    local = load_settings(_env_file=None, chat_provider="local", local_model_path=str(model))
    assert (local.provider, local.model_name) == ("local", "tiny.gguf")


def test_lists_come_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEYS", " key-one, key-two ,,")
    monkeypatch.setenv("CORS_ORIGINS", "https://chat.example.com,http://localhost:*")
    settings = load_settings(_env_file=None, chat_provider="fake")
    assert [key.get_secret_value() for key in settings.api_keys] == ["key-one", "key-two"]
    assert settings.cors_origins == ["https://chat.example.com", "http://localhost:*"]
    assert "key-one" not in repr(settings)  # secrets stay secret
    monkeypatch.setenv("API_KEYS", " , ")
    assert load_settings(_env_file=None, chat_provider="fake").api_keys == []  # blank: no keys, not an empty one


def test_env_file_names_the_file_of_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKE_REPLY_TOKENS", raising=False)
    env_file = tmp_path / "settings.env"
    env_file.write_text("FAKE_REPLY_TOKENS=7\n")
    monkeypatch.setenv("ENV_FILE", str(env_file))
    assert load_settings(chat_provider="fake").fake_reply_tokens == 7
    monkeypatch.setenv("ENV_FILE", "")  # empty: no file at all, as the tests run
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FAKE_REPLY_TOKENS=9\n")
    assert load_settings(chat_provider="fake").fake_reply_tokens == Settings.model_fields["fake_reply_tokens"].default


@pytest.mark.parametrize(("origins", "allowed", "refused"), [
    ("http://localhost:*", ["http://localhost", "http://localhost:5173"],
     ["http://localhost.evil.com", "http://localhostx", "https://localhost:5173", "http://localhost:abc"]),
    ("https://*.example.com", ["https://chat.example.com", "https://a.b.example.com"],
     ["https://example.com", "https://evil.com/.example.com", "http://chat.example.com"]),
    ("https://chat.example.com", ["https://chat.example.com"], ["https://chatxexample.com", "https://chat.example.co"]),
])
def test_cors_origins_are_one_regex_where_star_is_a_port_or_any_text_but_a_slash(
        origins: str, allowed: list[str], refused: list[str]) -> None:
    regex = re.compile(load_settings(_env_file=None, chat_provider="fake", cors_origins=origins).cors_origin_regex)
    assert all(regex.fullmatch(origin) for origin in allowed)  # CORSMiddleware matches the whole origin
    assert not any(regex.fullmatch(origin) for origin in refused)


def test_no_cors_origins_allow_none() -> None:
    regex = re.compile(load_settings(_env_file=None, chat_provider="fake", cors_origins=[]).cors_origin_regex)
    assert not regex.fullmatch("http://localhost") and not regex.fullmatch("")


# --- README's settings table ----------------------------------------------------------------------------------

def test_the_table_has_a_row_for_every_field_from_its_own_definition() -> None:
    rows = settings_table().splitlines()
    assert rows[:2] == ["| setting | default | accepts | meaning |", "| --- | --- | --- | --- |"]
    assert [row.split(" | ")[0].removeprefix("| ").strip("`") for row in rows[2:]] == [
        name.upper() for name in Settings.model_fields]
    assert "| `TEMPERATURE` | `0.7` | 0–2 | sampling temperature, every provider |" in rows
    assert any(row.startswith("| `LOG_FORMAT` | `text` | `text`, `json` | ") for row in rows)
    assert any(row.startswith("| `STREAM_TIMEOUT` | `300` | > 0, ≤ 3600 | ") for row in rows)
    assert any(row.startswith("| `API_KEYS` | none (open) | a comma-separated list | ") for row in rows)


def test_a_computed_or_secret_default_must_be_said_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = dict(settings_module.SHOWN_DEFAULTS)
    del shown["local_threads"]  # computed on this machine: its value would leak the machine into README
    monkeypatch.setattr(settings_module, "SHOWN_DEFAULTS", shown)
    with pytest.raises(ValueError, match="say in SHOWN_DEFAULTS how the default of LOCAL_THREADS is shown"):
        settings_table()


def test_a_lease_renewal_longer_than_half_the_lease_is_refused() -> None:
    """One late renewal must not lose a live replica its runs."""
    message = refusal(chat_provider="fake", run_lease_seconds=4, run_lease_renewal_seconds=2.5)
    assert message.startswith("RUN_LEASE_RENEWAL_SECONDS (2.5) must be at most half of RUN_LEASE_SECONDS (4)")
    assert load_settings(_env_file=None, chat_provider="fake", run_lease_seconds=4,
                         run_lease_renewal_seconds=2).run_lease_renewal_seconds == 2
