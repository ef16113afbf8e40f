"""The docs say what the code does: the configuration reference is generated and current."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from kryten_llm.config import ALL_COMMANDS, Settings
from kryten_llm.tools._config_docs import _model_of, render

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    current = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    assert current == render(), (
        "run: python -m kryten_llm.tools._config_docs > docs/CONFIGURATION.md"
    )


FIELD_ROW = re.compile(r"^\| `[^`]+` \|")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
"""A cell boundary: a `|` that is not escaped (`\\|` is a pipe inside a cell)."""


def row_cells(line: str) -> list[str]:
    """The cells of one markdown table row, stripped; an empty cell stays an empty string."""
    inner = line.strip()
    if not (inner.startswith("|") and inner.endswith("|")):
        raise AssertionError(f"not a table row: {line}")
    return [cell.strip() for cell in CELL_SPLIT.split(inner[1:-1])]


def row_problems(line: str) -> list[str]:
    """What is wrong with one field row: a cell count other than 4, an empty cell, a type
    whose brackets do not balance."""
    cells = row_cells(line)
    if len(cells) != 4:
        return [f"{len(cells)} cells, not 4"]
    problems = [
        f"empty {name} cell"
        for name, cell in zip(("field", "type", "default", "meaning"), cells, strict=True)
        if not cell
    ]
    type_name = cells[1].strip("`")
    if type_name.count("[") != type_name.count("]"):
        problems.append(f"unbalanced type {type_name!r}")
    return problems


def test_the_row_check_catches_an_empty_meaning_and_a_broken_type() -> None:
    """The check itself can fail: the two defects the reference once had are caught."""
    empty_meaning = "| `api_key` | `SecretStr \\| None` | `null` |  |"
    assert row_problems(empty_meaning) == ["empty meaning cell"]
    assert row_problems("| `max_emojis` | `Optional[int` | `null` | Keep at most. |") == [
        "unbalanced type 'Optional[int'"
    ]
    assert row_problems("| `url` | `str \\| None` | `null` | The server. |") == []


def test_every_section_and_field_is_documented() -> None:
    text = render()
    for section in Settings.model_fields:
        assert f"## `{section}`" in text
    rows = [line for line in text.splitlines() if FIELD_ROW.match(line)]
    assert len(rows) > 100
    problems = [f"{line}: {', '.join(p)}" for line in rows if (p := row_problems(line))]
    assert problems == []


def section_models() -> list[tuple[str, type[BaseModel]]]:
    """Every config model below `Settings`, with the path it is reached by."""
    found: list[tuple[str, type[BaseModel]]] = []
    pending: list[tuple[str, type[BaseModel]]] = [("", Settings)]
    while pending:
        path, model = pending.pop()
        for name, field in model.model_fields.items():
            sub = _model_of(field.annotation)
            if sub is not None:
                found.append((f"{path}{name}", sub))
                pending.append((f"{path}{name}.", sub))
    return found


def test_every_config_field_has_a_description() -> None:
    missing = [
        f"{path}.{name}"
        for path, model in section_models()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert missing == []


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
        "check",
        "kryten-llm --config config.json ask",
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


def test_the_benchmark_results_in_the_docs_are_the_recorded_ones() -> None:
    """docs/BENCHMARKS.md shows exactly what the last recorded runs wrote."""
    from benchmarks import results

    doc = (ROOT / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert results.current_section(doc) == results.render_section(results.load()), (
        "run: python -m benchmarks.results"
    )


def test_a_recorded_run_is_what_the_section_shows(tmp_path: Path) -> None:
    """The path a standard run takes: its figures, recorded, rendered; the other scale kept."""
    from benchmarks import results
    from benchmarks.run import Figure, figure_records

    figures = [
        Figure("RSS after 100,000 messages", 79.46, "MiB", 80.0, note="none lost; quick scale"),
        Figure("non-triggering chat, sustained with none lost", 27479.2, "msg/s", 20000, True),
        Figure("overhead p50 (mention -> say, minus LLM)", None, "ms", 2.0, note="a|b"),
    ]
    machine = {"nproc": 2, "cpu_model": "AMD EPYC", "python": "3.11.7", "load_average_1min": 0.3}
    path = tmp_path / "results.json"
    results.record("full", results.entry([], machine, 300, "aaaaaaa", "2026-12-01"), path)
    quick = results.entry(figure_records(figures), machine, 35.2, "bbbbbbb", "2026-12-02")
    recorded = results.record("quick", quick, path)
    assert set(recorded) == {"full", "quick"}
    section = results.render_section(results.load(path))
    assert (
        "**Full run** (`python -m benchmarks.run`): commit aaaaaaa, 2026-12-01, took 5 min 00 s"
        in section
    )
    assert (
        "**Quick run** (`python -m benchmarks.run --quick`): commit bbbbbbb, 2026-12-02, "
        "took 35 s, on 2 x AMD EPYC, Python 3.11.7, load average 0.30 at start."
    ) in section
    assert (
        "| RSS after 100,000 messages | 79.5 MiB | <= 80 MiB | PASS | none lost; quick scale |"
        in (section)
    )
    assert "| 27,479 msg/s | >= 20,000 msg/s | PASS |" in section
    assert "| n/a | <= 2 ms | FAIL | a\\|b |" in section
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"intro\n{results.render_section({})}outro\n", encoding="utf-8")
    results.update_doc(results.load(path), doc)
    updated = doc.read_text(encoding="utf-8")
    assert updated.startswith("intro\n") and updated.endswith("outro\n")
    assert results.current_section(updated) == section
