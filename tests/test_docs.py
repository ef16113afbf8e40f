"""The docs say what the code does: the configuration reference is generated and current."""

from __future__ import annotations

from pathlib import Path

from kryten_llm.config import ALL_COMMANDS, Settings
from kryten_llm.tools._config_docs import render

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    current = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    assert current == render(), (
        "run: python -m kryten_llm.tools._config_docs > docs/CONFIGURATION.md"
    )


def test_every_section_and_field_is_documented() -> None:
    text = render()
    for section in Settings.model_fields:
        assert f"## `{section}`" in text
    for line in text.splitlines():
        if line.startswith("| `"):
            assert line.rstrip(" |").split("|")[-1].strip(), f"undocumented field: {line}"


def test_readme_names_the_commands_it_promises() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in (
        "pip install -e .",
        "kryten-llm demo",
        "python -m pytest",
        "--validate-config",
        "--dry-run",
        "kryten-llm stats",
        "kryten-llm replay",
    ):
        assert command in readme, command


def test_readme_lists_every_chat_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ALL_COMMANDS:
        shown = "!chat <question>" if name == "ask" else f"!chat {name}"
        assert f"| `{shown}" in readme, name
