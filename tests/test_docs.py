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


def test_every_file_the_docs_name_exists() -> None:
    """A doc that points at a test or module that was renamed is a doc that lies."""
    import re

    named = re.compile(r"`((?:tests|kryten_llm|benchmarks|docs)/[\w/.-]+\.(?:py|md))`")
    in_package = re.compile(r"`((?:daemon|decide|reply|llm|ops|tools|state|memory)/[\w/.-]+\.py)`")
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        paths = [ROOT / p for p in named.findall(text)]
        paths += [ROOT / "kryten_llm" / p for p in in_package.findall(text)]
        missing += [f"{doc.name}: {p.relative_to(ROOT)}" for p in paths if not p.exists()]
    assert missing == []


def test_readme_lists_every_chat_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ALL_COMMANDS:
        shown = "!chat <question>" if name == "ask" else f"!chat {name}"
        assert f"| `{shown}" in readme, name
