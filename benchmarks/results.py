"""The benchmark's last results, kept in one file and shown from it, so the docs cannot drift.

A standard run (`python -m benchmarks.run` or `--quick`: every measurement, no variant, no
`--set`, the default ladder, no profiler) records its figures, with the commit, date, wall
time and machine, in `benchmarks/results.json` (one entry per scale), and regenerates the
*Current results* section of docs/BENCHMARKS.md from that file. A test checks that the
section is what the file says (`render_section`), so a figure in that section is always the
output of the last recorded run, labelled with the commit it measured.

    python -m benchmarks.results     # regenerate the section from results.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPO_ROOT / "benchmarks" / "results.json"
DOC_PATH = REPO_ROOT / "docs" / "BENCHMARKS.md"
BEGIN = "<!-- results:begin (generated from benchmarks/results.json by benchmarks/results.py) -->"
END = "<!-- results:end -->"
SCALES = (
    ("full", "python -m benchmarks.run"),
    ("quick", "python -m benchmarks.run --quick"),
)
GIT_TIMEOUT_SECONDS = 10.0


def format_value(value: float | None, unit: str) -> str:
    """A figure as the benchmark's own table prints it."""
    if value is None:
        return "n/a"
    digits = {"ms": 2, "s": 3, "MiB": 1}.get(unit, 0)
    return f"{value:,.{digits}f} {unit}"


def duration(seconds: float) -> str:
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def commit() -> str:
    """The commit measured: short hash, `+local changes` when the tree differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=GIT_TIMEOUT_SECONDS,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=GIT_TIMEOUT_SECONDS,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" +local changes" if dirty else "")


def entry(
    figures: Sequence[Mapping[str, Any]],
    machine: Mapping[str, Any],
    wall_seconds: float,
    measured_commit: str,
    date: str | None = None,
) -> dict[str, Any]:
    """One scale's record: what `record` stores and `render_section` shows."""
    return {
        "commit": measured_commit,
        "date": date or datetime.now(UTC).date().isoformat(),
        "wall_seconds": round(wall_seconds, 1),
        "machine": dict(machine),
        "figures": [dict(f) for f in figures],
    }


def load(path: Path = RESULTS_PATH) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def record(scale: str, run: dict[str, Any], path: Path = RESULTS_PATH) -> dict[str, Any]:
    """Store `run` as the last result of `scale`; the other scale's result is kept."""
    results = load(path)
    results[scale] = run
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return results


def _machine(machine: Mapping[str, Any]) -> str:
    cpu = machine.get("cpu_model") or "unknown CPU"
    load = machine.get("load_average_1min")
    load_text = f", load average {load:.2f} at start" if isinstance(load, int | float) else ""
    return f"{machine.get('nproc', '?')} x {cpu}, Python {machine.get('python', '?')}{load_text}"


def _scale_lines(name: str, command: str, run: Mapping[str, Any] | None) -> list[str]:
    title = f"**{name.capitalize()} run** (`{command}`)"
    if not run:
        return [f"{title}: not recorded yet.", ""]
    lines = [
        f"{title}: commit {run['commit']}, {run['date']}, took {duration(run['wall_seconds'])}, "
        f"on {_machine(run.get('machine', {}))}.",
        "",
        "| figure | measured | target | result | notes |",
        "|---|---|---|---|---|",
    ]
    for f in run["figures"]:
        sign = ">=" if f.get("higher_is_better") else "<="
        target = f"{sign} {f['target']:,g} {f['unit']}"
        result = "PASS" if f.get("passed") else "FAIL"
        note = str(f.get("note", "")).replace("|", "\\|")
        lines.append(
            f"| {f['name']} | {format_value(f.get('value'), f['unit'])} | {target} | {result} "
            f"| {note} |"
        )
    return [*lines, ""]


def render_section(results: Mapping[str, Any]) -> str:
    """The *Current results* section, markers included."""
    lines = [
        BEGIN,
        "### Current results",
        "",
        "The last standard run of each scale, exactly as `benchmarks/run.py` recorded it in "
        "`benchmarks/results.json` (regenerated by every standard run; do not edit by hand). "
        "A figure from another commit than the one you are reading is only as current as that "
        "commit: re-run on a quiet machine to refresh it.",
        "",
    ]
    for name, command in SCALES:
        lines += _scale_lines(name, command, results.get(name))
    return "\n".join([*lines[:-1], END]) + "\n"


def current_section(doc: str) -> str:
    """The generated section as it stands in the doc (markers included)."""
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    return doc[start:end] + "\n"


def update_doc(results: Mapping[str, Any], path: Path = DOC_PATH) -> None:
    doc = path.read_text(encoding="utf-8")
    old = current_section(doc)
    path.write_text(doc.replace(old, render_section(results), 1), encoding="utf-8")


def main() -> int:
    update_doc(load())
    print(f"regenerated the current results in {DOC_PATH.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
