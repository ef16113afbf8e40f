"""Operator mistakes caught at validate time: non-finite and absurd numbers, duplicate keys,
deep nesting, regexes that backtrack catastrophically, and a readable file with a key in it."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import pytest

from kryten_llm._regex_check import backtracking_risk
from kryten_llm.config import (
    DEFAULT_ARTIFACT_PATTERNS,
    ConfigError,
    build_settings,
    load_settings,
)
from tests.test_cli_config import EXAMPLE, run_cli

SECRET = "sk-live-THIS-MUST-NEVER-BE-PRINTED"


def write(tmp_path: Path, text: str, name: str = "config.json", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def validate(path: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = run_cli("--validate-config", "--config", str(path), env=env)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.returncode, output


# --- deep nesting ---------------------------------------------------------------------------


def test_a_deeply_nested_config_is_a_config_error(tmp_path: Path) -> None:
    code, output = validate(write(tmp_path, "[" * 100_000 + "]" * 100_000, "deep.json"))
    assert code == 2
    assert "deep.json cannot be used" in output and "nested too deeply" in output


def test_a_config_nested_past_the_limit_names_the_path(tmp_path: Path) -> None:
    text = '{"usage": {"prices": ' + '{"m": ' * 40 + "1" + "}" * 41 + "}"
    code, output = validate(write(tmp_path, text))
    assert code == 2 and "usage.prices.m.m" in output and "nested deeper than 32" in output


# --- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"rate_limits": {"global_cooldown_seconds": Infinity}}', "rate_limits.global_cooldown"),
        ('{"rate_limits": {"user_cooldown_seconds": NaN}}', "rate_limits.user_cooldown_seconds"),
        (
            '{"triggers": [{"name": "t", "patterns": ["x"], "cooldown_seconds": 1e999}]}',
            "triggers.0",
        ),
        ('{"usage": {"daily_budget_usd": -Infinity}}', "usage.daily_budget_usd"),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    code, output = validate(write(tmp_path, text))
    assert code == 2 and expected in output and "is not a finite number" in output, output


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KRYTEN_LLM_RATE_LIMITS_GLOBAL_COOLDOWN_SECONDS", "inf"),
        ("KRYTEN_LLM_LLM_MANAGER_REPLY_DEADLINE_SECONDS", "nan"),
        ("KRYTEN_LLM_RATE_LIMITS", '{"global_cooldown_seconds": Infinity}'),
        ("KRYTEN_LLM_TRIGGERS", '[{"name": "t", "patterns": ["x"], "cooldown_seconds": NaN}]'),
    ],
)
def test_non_finite_env_overrides_are_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        build_settings({}, "test")
    assert "finite number" in err.value.report()


@pytest.mark.parametrize("value", ["{not json", "[" * 100_000])
def test_env_overrides_that_are_not_json_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KRYTEN_LLM_RATE_LIMITS", value)
    with pytest.raises(ConfigError) as err:
        build_settings({}, "test")
    report = err.value.report()
    assert "(environment)" in report and "KRYTEN_LLM_RATE_LIMITS" in report


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("response_log", "max_bytes", 10**15),
        ("rate_limits", "global_cooldown_seconds", 1e9),
        ("rate_limits", "global_max_per_hour", 10**12),
        ("rate_limits", "user_max_per_hour", 10**9),
        ("rate_limits", "mention_cooldown_seconds", 10**8),
        ("usage", "daily_budget_usd", 1e12),
        ("listener", "max_chat_chars", 10**9),
        ("listener", "max_event_bytes", 2**40),
    ],
)
def test_absurd_sizes_are_refused(section: str, field: str, value: float) -> None:
    with pytest.raises(ConfigError) as err:
        build_settings({section: {field: value}}, "test")
    assert f"{section}.{field}: Input should be less than or equal to" in err.value.report()


def test_absurd_trigger_numbers_are_refused() -> None:
    trigger = {"name": "t", "patterns": ["x"], "cooldown_seconds": 1e10}
    with pytest.raises(ConfigError, match=r"triggers\.0\.cooldown_seconds"):
        build_settings({"triggers": [trigger]}, "test")


def test_absurd_keep_alive_is_refused() -> None:
    provider = {"type": "ollama", "base_url": "http://127.0.0.1:11434", "keep_alive": 10**12}
    with pytest.raises(ConfigError, match=r"llm_providers\.local\.keep_alive: must be -1"):
        build_settings({"llm_providers": {"local": provider}}, "test")


def test_the_byte_limit_must_leave_room_for_the_text_limit() -> None:
    with pytest.raises(ConfigError) as err:
        build_settings({"listener": {"max_chat_chars": 20_000, "max_event_bytes": 200_000}}, "t")
    assert "listener: max_event_bytes 200000 would drop chat lines" in err.value.report()
    build_settings({"listener": {"max_chat_chars": 20_000, "max_event_bytes": 244_096}}, "t")


# --- duplicate keys -------------------------------------------------------------------------


def test_duplicate_keys_are_named_with_their_path(tmp_path: Path) -> None:
    text = (
        '{"llm_providers": {"main": {"model": "a", "api_key_env": "K", "model": "b"}},'
        ' "rate_limits": {"user_max_per_hour": 3},'
        ' "rate_limits": {"user_max_per_hour": 30}}'
    )
    code, output = validate(write(tmp_path, text))
    assert code == 2
    assert "llm_providers.main: duplicate key 'model'" in output
    assert "(top level): duplicate key 'rate_limits'" in output


def test_repeated_comments_are_not_duplicates(tmp_path: Path) -> None:
    code, output = validate(write(tmp_path, '{"_comment": "a", "_comment": "b"}'))
    assert code == 0, output


# --- regular expressions --------------------------------------------------------------------

CATASTROPHIC = (
    "(a+)+$",
    "(a|a)*$",
    "(.*)*x",
    "(a|aa)*$",
    "(aa?)*$",
    r"(\w+\s?)+$",
    r"^([a-z0-9]+\.)*com$",
    "(a|ab|b)*$",
    "(x(a|a))+$",
)
SAFE = (
    "(?:ok|okay)+",
    "(ok(ay)?)+",
    r"\bkung\s*fu\b",
    "(?:lol|lmao|rofl)+",
    "(a+)?",
    "a++",
    "(?>a+)+",
    r"[\w.]+@[\w.]+",
    r"(\w|\d)+",
    "karate|taekwondo",
    "(?:x[0-9]{3})+",
    r"(?i)\b(?:ha)+\b",
    *DEFAULT_ARTIFACT_PATTERNS,
)


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_are_recognised(pattern: str) -> None:
    assert backtracking_risk(pattern) is not None


@pytest.mark.parametrize("pattern", SAFE)
def test_safe_patterns_are_accepted(pattern: str) -> None:
    assert backtracking_risk(pattern) is None


def test_the_refused_patterns_really_do_backtrack() -> None:
    """Not a guess: each refused pattern needs far longer on a short hostile line."""
    cases = (("(a+)+$", 22), ("(a|a)*$", 22), ("(a|aa)*$", 28), ("(aa?)*$", 28))
    for pattern, length in cases:
        started = time.perf_counter()
        re.match(pattern, "a" * length + "!")
        assert time.perf_counter() - started > 0.005, pattern


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"triggers": [{"name": "t", "patterns": ["re:(a+)+$"]}]}, "triggers.0.patterns"),
        ({"safety": {"blocked_patterns": ["(a|a)*"]}}, "safety.blocked_patterns"),
        ({"validation": {"blocked_patterns": ["(.*)*x"]}}, "validation.blocked_patterns"),
        ({"message_processing": {"artifact_patterns": [r"^(\w+\s?)+:"]}}, "artifact_patterns"),
    ],
)
def test_operator_regexes_that_backtrack_are_config_errors(
    tmp_path: Path, config: dict[str, object], where: str
) -> None:
    code, output = validate(write(tmp_path, json.dumps(config)))
    assert code == 2
    assert where in output and "can backtrack catastrophically" in output, output


# --- a readable file with a key in it -------------------------------------------------------

WITH_KEY = json.dumps({"llm_providers": {"main": {"api_key": SECRET}}})


def test_an_inline_key_in_a_world_readable_file_is_warned_about(tmp_path: Path) -> None:
    path = write(tmp_path, WITH_KEY, mode=0o644)
    code, output = validate(path)
    assert code == 0, output  # a warning, not a failure
    assert f"Configuration {path}: llm_providers.main.api_key" in output
    assert "other users can read (mode 0644)" in output
    assert f"chmod 600 {path}" in output and "api_key_env" in output
    assert SECRET not in output


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_load_settings_warns_for_group_readable_files_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kryten_llm.config")
    load_settings(write(tmp_path, WITH_KEY, "private.json", mode=0o600))
    assert not caplog.records
    load_settings(write(tmp_path, WITH_KEY, "group.json", mode=0o640))
    assert len(caplog.records) == 1 and "group.json" in caplog.records[0].getMessage()
    caplog.clear()
    load_settings(write(tmp_path, '{"llm_providers": {"m": {"api_key_env": "K"}}}', mode=0o644))
    assert not caplog.records  # no key in the file: nothing to warn about


def test_other_inline_secrets_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kryten_llm.config")
    text = json.dumps({"nats": {"password": SECRET}, "control": {"token": SECRET}})
    load_settings(write(tmp_path, text, mode=0o604))
    message = caplog.records[0].getMessage()
    assert "nats.password, control.token" in message and SECRET not in message


def test_the_example_config_still_passes_every_check() -> None:
    result = run_cli("--validate-config", "--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
