"""`--validate-config` and config loading: clear reports, right exit codes, no secrets shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kryten_llm.config import (
    ConfigError,
    Settings,
    build_settings,
    load_settings,
    redact,
    strip_comments,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.json"
SECRET = "sk-live-THIS-MUST-NEVER-BE-PRINTED"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KRYTEN_LLM_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kryten_llm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=full_env,
    )


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_example_config_is_valid() -> None:
    result = run_cli("--validate-config", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


EXAMPLE_SECTIONS = frozenset(
    {"nats", "cytube", "personality", "personas", "llm_providers", "triggers"}
)
"""Sections that describe one deployment (its bus, channels, characters, models and words):
their example values are examples. Everywhere else the example shows the defaults."""


def example_departures(example: dict[str, Any]) -> list[str]:
    """Fields of the example whose value is not the default and that no `_<field>` comment
    explains, as `section.field: example vs default`."""
    defaults = Settings().model_dump(mode="json")
    found = []
    for section, fields in strip_comments(example).items():
        if section in EXAMPLE_SECTIONS or not isinstance(fields, dict):
            continue
        for name, value in fields.items():
            default = defaults[section][name]
            if value != default and f"_{name}" not in example[section]:
                found.append(f"{section}.{name}: {value!r} vs default {default!r}")
    return found


def test_the_example_shows_the_defaults_or_says_why() -> None:
    example = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert example_departures(example) == []
    # ...and the check notices a silent departure, such as the `workers: 16` it once showed.
    example["message_processing"]["workers"] = 16
    assert example_departures(example) == ["message_processing.workers: 16 vs default 32"]


def test_validate_config_reports_dry_run_as_the_command_line_sets_it() -> None:
    result = run_cli("--dry-run", "--validate-config", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "dry run:   on (--dry-run)" in result.stdout
    plain = run_cli("--validate-config", "--config", str(EXAMPLE))
    assert "dry run:   off" in plain.stdout


def test_validate_config_names_an_unset_key_variable_never_a_value(tmp_path: Path) -> None:
    config = {
        "llm_providers": {
            "hosted": {"type": "openrouter", "api_key_env": "KLLM_TEST_UNSET_KEY"},
            "keyed": {"api_key_env": "KLLM_TEST_SET_KEY", "priority": 200},
        }
    }
    path = write(tmp_path, config)
    result = run_cli(
        "--validate-config",
        "--config",
        str(path),
        env={"KLLM_TEST_SET_KEY": SECRET, "KLLM_TEST_UNSET_KEY": ""},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1. hosted (openrouter, llama3.2, key unset: KLLM_TEST_UNSET_KEY)" in out
    assert "2. keyed (openai_compatible, llama3.2, key set (KLLM_TEST_SET_KEY))" in out
    assert "warning: LLM provider 'hosted': api_key_env names KLLM_TEST_UNSET_KEY" in out
    assert "'keyed'" not in out.split("warning:", 1)[1]
    assert SECRET not in out + result.stderr


def test_an_environment_override_is_a_note_not_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, {"rate_limits": {"global_max_per_minute": "lots"}})
    broken = run_cli(
        "--validate-config", "--config", str(path), env={"KRYTEN_LLM_TESTING_DRY_RUN": "true"}
    )
    assert broken.returncode != 0
    assert "(1 problem(s))" in broken.stderr
    assert "note: environment overrides in effect: KRYTEN_LLM_TESTING_DRY_RUN" in broken.stderr
    valid = run_cli("--validate-config", env={"KRYTEN_LLM_TESTING_DRY_RUN": "true"})
    assert valid.returncode == 0
    assert "note: environment overrides in effect: KRYTEN_LLM_TESTING_DRY_RUN" in valid.stdout
    assert "dry run:   on" in valid.stdout


def test_embedded_defaults_are_valid() -> None:
    result = run_cli("--validate-config")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"nats": {"connect_timeout_seconds": "soon"}}, "nats.connect_timeout_seconds"),
        ({"cytube": [{"domain": "cytu.be", "channel": ""}]}, "cytube.0.channel"),
        (
            {"llm_providers": {"main": {"base_url": "ftp://nope", "api_key": SECRET}}},
            "llm_providers.main.base_url",
        ),
        ({"llm_providers": {"main": {"api_key": 12345678}}}, "llm_providers.main.api_key"),
        ({"triggers": [{"name": "t"}]}, "triggers.0.patterns: required field is missing"),
        ({"triggers": [{"name": "t", "patterns": ["re:(x"]}]}, "invalid regular expression"),
        ({"rate_limts": {}}, "rate_limts: Extra inputs are not permitted"),
        ({"llm_providers": {}}, "at least one provider must be enabled"),
        ({"llm_providers": {"a": {"fallback": ["b"]}}}, "'a' falls back to unknown ['b']"),
        (
            {"usage": {"cheaper_provider": "x", "on_budget_exhausted": "cheaper_provider"}},
            "cheaper_provider 'x' is not a configured provider",
        ),
        ([1, 2], "must be a JSON object"),
        ("{not json", "invalid JSON at line 1 column 2"),
    ],
)
def test_broken_configs_are_reported_clearly(
    tmp_path: Path, content: object, expected: str
) -> None:
    result = run_cli("--validate-config", "--config", str(write(tmp_path, content)))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert expected in output, output
    assert "Traceback" not in output
    assert SECRET not in output and "12345678" not in output


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = run_cli("--validate-config", "--config", str(tmp_path / "nope.json"))
    assert missing.returncode != 0 and "file not found" in missing.stderr
    directory = run_cli("--validate-config", "--config", str(tmp_path))
    assert directory.returncode != 0 and "is a directory" in directory.stderr
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    unreadable = run_cli("--validate-config", "--config", str(binary))
    assert unreadable.returncode != 0 and "cannot be read" in unreadable.stderr
    for result in (missing, directory, unreadable):
        assert "Traceback" not in result.stderr


def test_run_with_a_broken_config_exits_cleanly(tmp_path: Path) -> None:
    result = run_cli("--config", str(write(tmp_path, "{")))
    assert result.returncode != 0 and "invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_overrides_the_file_and_secrets_come_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        {
            "nats": {"url": "nats://file:4222"},
            "llm_providers": {"main": {"api_key_env": "MY_LLM_KEY"}},
        },
    )
    monkeypatch.setenv("KRYTEN_LLM_NATS_URL", "nats://env:4222")
    monkeypatch.setenv("KRYTEN_LLM_TESTING_DRY_RUN", "true")
    monkeypatch.setenv("KRYTEN_LLM_MESSAGE_PROCESSING_MAX_MESSAGE_LENGTH", "120")
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    settings = load_settings(path)
    assert settings.nats.url == "nats://env:4222"
    assert settings.testing.dry_run is True
    assert settings.message_processing.max_message_length == 120
    assert settings.llm_providers["main"].resolve_api_key() == SECRET
    assert SECRET not in repr(settings)


def test_env_override_errors_name_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRYTEN_LLM_MESSAGE_PROCESSING_MAX_MESSAGE_LENGTH", "tiny")
    with pytest.raises(ConfigError) as err:
        build_settings({}, "test")
    report = err.value.report()
    assert "message_processing.max_message_length" in report
    assert "KRYTEN_LLM_MESSAGE_PROCESSING_MAX_MESSAGE_LENGTH" in report


def test_single_channel_or_list() -> None:
    one = build_settings({"cytube": {"domain": "d", "channel": "c", "username": "u"}}, "t")
    many = build_settings(
        {
            "cytube": [
                {"domain": "d", "channel": "c", "username": "u"},
                {"domain": "e", "channel": "c", "username": "u"},
            ]
        },
        "t",
    )
    assert len(one.channels) == 1 and len(many.channels) == 2
    with pytest.raises(ConfigError, match="listed twice"):
        build_settings(
            {"cytube": [{"domain": "d", "channel": "C"}, {"domain": "d", "channel": "c"}]}, "t"
        )


def test_comments_are_allowed_at_any_depth_and_ignored() -> None:
    settings = build_settings(
        {
            "_comment": "hi",
            "nats": {"_comment": "x", "url": "nats://bus.example:4222"},
            "triggers": [{"_why": "greetings", "name": "hello", "patterns": ["hello"]}],
        },
        "t",
    )
    assert settings.nats.url == "nats://bus.example:4222"
    assert [t.name for t in settings.triggers] == ["hello"]
    assert settings.triggers[0].patterns == ["hello"]
    # Only a leading underscore makes a comment: any other unknown key is still an error.
    with pytest.raises(ConfigError, match="comment"):
        build_settings({"nats": {"comment": "x"}}, "t")


def test_redact_hides_secret_looking_keys_at_any_depth() -> None:
    data = {
        "api_key": "k",
        "nested": [{"token": "t", "password": "p"}],
        "api_key_env": "NAME",
        "model": "m",
    }
    assert redact(data) == {
        "api_key": "***redacted***",
        "nested": [{"token": "***redacted***", "password": "***redacted***"}],
        "api_key_env": "NAME",
        "model": "m",
    }
