"""Personas: the built-ins, configured ones, a channel's own default, and what they change."""

from __future__ import annotations

from pathlib import Path

import pytest

from kryten_llm.config import BUILTIN_PERSONAS, ConfigError, build_settings


def test_built_in_personas_are_there_and_default_is_the_personality() -> None:
    settings = build_settings({}, "t")
    table = settings.persona_table()
    assert list(table)[:4] == ["default", "concise", "technical", "creative"]
    assert table["default"].apply(settings.personality) == settings.personality
    concise = table["concise"].apply(settings.personality)
    assert concise.response_style == BUILTIN_PERSONAS["concise"].style
    assert concise.character_name == settings.personality.character_name  # the name stays


def test_configured_personas_join_or_replace_built_ins_and_channels_pick_one(
    tmp_path: Path,
) -> None:
    prompt = tmp_path / "pirate.txt"
    prompt.write_text("You are a pirate.", encoding="utf-8")
    settings = build_settings(
        {
            "personas": {
                "pirate": {"system_prompt_file": str(prompt)},
                "concise": {"style": "tiny"},
            },
            "cytube": [
                {"domain": "d", "channel": "a", "username": "bot", "persona": "pirate"},
                {"domain": "d", "channel": "b", "username": "bot"},
            ],
        },
        "t",
    )
    assert settings.persona_table()["concise"].style == "tiny"
    assert settings.persona_table()["pirate"].apply(settings.personality).system_prompt_file
    assert [settings.default_persona(c) for c in settings.channels] == ["pirate", "default"]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"personas": {"Loud One": {}}}, "not a persona name"),
        ({"personas": {"default": {"style": "x"}}}, "`default` is the personality"),
        ({"cytube": {"channel": "a", "persona": "nobody"}}, "unknown persona 'nobody'"),
        ({"personas": {"p": {"system_prompt_file": "missing.txt"}}}, "not found"),
        ({"memory": {"max_chars": 2000}, "state": {"max_value_bytes": 4096}}, "max_chars"),
        ({"commands": {"prefix": "! chat"}}, "pattern"),
        ({"commands": {"enabled": ["help", "dance"]}}, "dance"),
    ],
)
def test_bad_persona_memory_and_command_settings_are_reported(
    config: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(config, "t")
    assert problem in caught.value.report()
