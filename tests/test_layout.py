"""The package's rooms keep their import rules, and the repository stands on its own.

The rules are the ones each subpackage's docstring states: dependencies point one way
(tools -> daemon -> pipeline -> decide / reply -> llm -> config and types), and the daemon
never imports the tools. Read from the code's own imports, so a new arrow pointing back up
fails here before it reaches a reader.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kryten_llm"

BASE = frozenset(
    {"config", "types", "_throttle", "_bus", "logsetup", "redact", "events", "_regex_check"}
)
"""The ground floor: anything may import these, and they import only each other."""

ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset({"redact", "types", "_regex_check"}),
    "_regex_check": frozenset(),
    "types": frozenset(),
    "redact": frozenset(),
    "_throttle": frozenset(),
    "_bus": frozenset(),
    "logsetup": frozenset({"redact"}),
    "events": frozenset({"types", "config", "_throttle"}),
    "state": BASE,
    "context": BASE | {"state"},
    "memory": BASE | {"state", "context"},
    "response_log": BASE,
    "llm": BASE,
    "ops": BASE,
    "decide": BASE | {"state"},
    "reply": BASE | {"llm", "context", "state"},
    "commands": BASE | {"context", "decide", "memory", "state"},
    "pipeline": BASE
    | {"context", "response_log", "decide", "reply", "llm", "ops", "state", "memory", "commands"},
    "api": BASE
    | {"context", "decide", "reply", "llm", "ops", "pipeline", "state", "memory", "commands"},
    "daemon": BASE
    | {
        "context",
        "response_log",
        "decide",
        "reply",
        "llm",
        "ops",
        "pipeline",
        "state",
        "memory",
        "api",
    },
    "tools": BASE
    | {
        "context",
        "response_log",
        "decide",
        "reply",
        "llm",
        "ops",
        "pipeline",
        "daemon",
        "state",
        "memory",
        "commands",
        "api",
    },
    "cli": BASE | {"daemon", "tools"},
    "__main__": frozenset({"cli"}),
}
"""Room -> the rooms it may import (besides itself)."""


def room_of(module: str) -> str:
    """`kryten_llm.decide.limits` -> `decide`; `kryten_llm.config` -> `config`.

    A name imported from the package itself (`from kryten_llm import __version__`) gives a
    "room" that is no key of ALLOWED, and is passed over.
    """
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> set[str]:
    """The `kryten_llm...` modules a file imports (absolute imports only: the house style)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.update(n for n in names if n.startswith("kryten_llm."))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kryten_llm."))
    return found


def module_files() -> list[tuple[str, Path]]:
    files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        files.append((module.removesuffix(".__init__"), path))
    return files


def test_every_module_lives_in_a_known_room() -> None:
    rooms = {room_of(module) for module, _ in module_files()} - {""}
    assert rooms <= set(ALLOWED), f"rooms without import rules: {rooms - set(ALLOWED)}"


@pytest.mark.parametrize(("module", "path"), module_files(), ids=[m for m, _ in module_files()])
def test_imports_point_one_way(module: str, path: Path) -> None:
    room = room_of(module)
    if not room:
        return  # the package's face imports nothing
    allowed = ALLOWED[room] | {room}
    wrong = sorted(
        target
        for target in imports_of(path)
        if room_of(target) in ALLOWED and room_of(target) not in allowed
    )
    assert not wrong, f"{module} ({room}) may not import {wrong}"


def test_the_daemon_never_imports_the_tools() -> None:
    offenders = [
        module
        for module, path in module_files()
        if room_of(module) == "daemon"
        and any(room_of(target) == "tools" for target in imports_of(path))
    ]
    assert offenders == []


WORKSTATION_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|tmp|root|Users|mnt)/[\w.-]")
"""An absolute path of a developer's machine: the repository must not depend on one."""


def test_no_absolute_workstation_paths_in_the_repository() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    ).stdout.split(b"\0")
    hits = []
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if not path.is_file() or path.suffix in {".png", ".jpg", ".gz"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        hits += [f"{name.decode()}: {m.group(0)}" for m in WORKSTATION_PATH.finditer(text)]
    assert hits == []


OPERATOR_COMMANDS = ("demo", "check", "ask", "stats", "replay")
"""`kryten-llm` subcommands beside `run`: each is a tool, implemented in `tools/<name>.py`."""


def test_operator_commands_live_in_tools_and_load_only_when_asked_for() -> None:
    """`check`, `ask` and the others are tools: the daemon never needs them, and `run` does
    not pay for importing them (start-up time is measured, docs/BENCHMARKS.md)."""
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    top_level = {
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    assert not any(m.startswith("kryten_llm.tools") for m in top_level), top_level
    lazy = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node not in tree.body
    }
    for command in OPERATOR_COMMANDS:
        assert (PACKAGE / "tools" / f"{command}.py").is_file(), command
        assert f"kryten_llm.tools.{command}" in lazy, command
