"""`kryten-llm stats LOGFILE [--plot FILE.png]`: what the bot did, from its JSONL response log.

The tuning loop is: run (or dry-run) for a while, read the stats, adjust cooldowns, triggers and
probabilities, repeat. The report answers the questions that loop asks:

- triggers fired, by type and name (which words fire too often or never);
- outcomes: replies (`sent` + `dry_run`) versus held back, by outcome and cause (which limit
  holds the bot back most). A reason's particulars (seconds left, a provider's status, a
  user's name) are not its cause: `response_log.reason_cause` reduces `user_cooldown: allowed
  again in 42.0 s` to `user_cooldown`, so one cause is one row, and one bar in the chart;
- LLM latency p50/p95/p99/max over records that carry `latency_ms` (nearest-rank percentiles);
- busiest users (triggers and replies, names compared case-insensitively);
- replies per hour (UTC).

Malformed lines (not JSON, not an object, no `outcome`) are skipped and counted, never fatal.
Names from the log are untrusted chat text: control characters are replaced before printing so
a hostile username cannot drive the terminal.

`run_stats(path, plot, out, include_rotated=False, err=sys.stderr) -> int` is the CLI entry:
0 on success, 1 if the log cannot be read, 2 if `--plot` was asked for without matplotlib
(install the `plot` extra). `summarise` and `format_report` are the testable pieces.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from kryten_llm.response_log import CAUSE_CHARS, REPLY_OUTCOMES, reason_cause
from kryten_llm.tools._tables import percent, safe, table

TOP_USERS = 10
CHART_BARS = 15
CHART_LABEL_CHARS = 72
EXIT_OK = 0
EXIT_UNREADABLE = 1
EXIT_NO_MATPLOTLIB = 2


@dataclass
class Summary:
    """Everything the report shows, counted in one pass over the log."""

    records: int = 0
    malformed_lines: int = 0
    bad_timestamps: int = 0
    triggers: Counter[tuple[str, str]] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    user_triggers: Counter[str] = field(default_factory=Counter)
    user_replies: Counter[str] = field(default_factory=Counter)
    replies_per_hour: Counter[str] = field(default_factory=Counter)

    @property
    def replies(self) -> int:
        return sum(n for (outcome, _), n in self.outcomes.items() if outcome in REPLY_OUTCOMES)

    def add(self, row: dict[str, Any]) -> None:
        outcome = _text(row.get("outcome"))
        reason = row.get("reason")
        reason = reason_cause(outcome, reason) if isinstance(reason, str) else ""
        user = _text(row.get("username")).lower()
        self.records += 1
        self.triggers[(_text(row.get("trigger_type")), _text(row.get("trigger_name")))] += 1
        self.outcomes[(outcome, reason)] += 1
        self.user_triggers[user] += 1
        latency = _latency(row.get("latency_ms"))
        if latency is not None:
            self.latencies_ms.append(latency)
        if outcome in REPLY_OUTCOMES:
            self.user_replies[user] += 1
            hour = _hour(row.get("timestamp"))
            if hour is None:
                self.bad_timestamps += 1
            else:
                self.replies_per_hour[hour] += 1


def _latency(value: Any) -> float | None:
    """A usable latency, or None for missing, non-numeric, negative or non-finite values."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else "?"


def _hour(timestamp: Any) -> str | None:
    """`2026-11-22 02:00` for any ISO-8601 timestamp (naive ones are taken as UTC)."""
    if not isinstance(timestamp, str):
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:00")


def summarise(lines: Iterable[str]) -> Summary:
    """Count a log's lines; malformed ones are counted and skipped."""
    summary = Summary()
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            summary.malformed_lines += 1
            continue
        if not isinstance(row, dict) or not isinstance(row.get("outcome"), str):
            summary.malformed_lines += 1
            continue
        summary.add(row)
    return summary


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (an observed value, so "p99 = 2300 ms" really happened)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# --- the text report -------------------------------------------------------------------------


def format_report(summary: Summary, source: str) -> str:
    total = summary.records
    lines = [f"Response log {source}: {total} record(s)"]
    if summary.malformed_lines:
        lines.append(f"  skipped {summary.malformed_lines} malformed line(s)")
    lines += ["", "Triggers fired"]
    lines += table(
        ["type", "name", "count", "share"],
        [
            [safe(kind), safe(name), str(n), percent(n, total)]
            for (kind, name), n in summary.triggers.most_common()
        ],
        text_columns=2,
    )
    lines += [
        "",
        f"Outcomes: {summary.replies} repl(ies) of {total} ({percent(summary.replies, total)})",
    ]
    lines += table(
        ["outcome", "reason", "count", "share"],
        [
            [safe(outcome), safe(reason, CAUSE_CHARS), str(n), percent(n, total)]
            for (outcome, reason), n in summary.outcomes.most_common()
        ],
        text_columns=2,
    )
    lines += ["", *_latency_lines(summary.latencies_ms), "", "Busiest users"]
    lines += table(
        ["user", "triggers", "replies"],
        [
            [safe(user), str(n), str(summary.user_replies[user])]
            for user, n in summary.user_triggers.most_common(TOP_USERS)
        ],
    )
    lines += ["", "Replies per hour (UTC)"]
    lines += table(
        ["hour", "replies"],
        [[hour, str(n)] for hour, n in sorted(summary.replies_per_hour.items())],
    )
    if summary.bad_timestamps:
        lines.append(f"  ({summary.bad_timestamps} repl(ies) with an unreadable timestamp)")
    return "\n".join(lines) + "\n"


def _latency_lines(latencies: list[float]) -> list[str]:
    if not latencies:
        return ["LLM latency: no records with latency_ms"]
    cells = [f"{percentile(latencies, p):.0f}" for p in (50, 95, 99)] + [f"{max(latencies):.0f}"]
    return [
        f"LLM latency (ms, {len(latencies)} call(s))",
        *table(["p50", "p95", "p99", "max"], [cells], text_columns=0),
    ]


# --- reading and the CLI entry ---------------------------------------------------------------


def log_files(path: Path, include_rotated: bool) -> list[Path]:
    """The log and, if asked, its rotated siblings (`.N` ... `.1`), oldest first."""
    if not include_rotated:
        return [path]
    rotated = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    return [*rotated, path]


def _read_lines(files: list[Path]) -> Iterator[str]:
    for file in files:
        with file.open("r", encoding="utf-8", errors="replace", newline="\n") as handle:
            yield from handle


def run_stats(
    path: Path,
    plot: Path | None,
    out: TextIO,
    include_rotated: bool = False,
    err: TextIO = sys.stderr,
) -> int:
    """Print the report for `path` to `out` (and draw `plot` if given); see the module doc."""
    plt = None
    if plot is not None:
        plt = _load_pyplot(err)
        if plt is None:
            return EXIT_NO_MATPLOTLIB
    files = log_files(path, include_rotated)
    try:
        summary = summarise(_read_lines(files))
    except OSError as exc:
        print(f"kryten-llm stats: cannot read {path}: {exc.strerror or exc}", file=err)
        return EXIT_UNREADABLE
    source = str(path) if len(files) == 1 else f"{path} (+{len(files) - 1} rotated)"
    out.write(format_report(summary, source))
    if plt is not None and plot is not None:
        _draw(plt, summary, plot)
        out.write(f"\nChart written to {plot}\n")
    return EXIT_OK


def _load_pyplot(err: TextIO) -> Any:
    # Imported by name: matplotlib is an optional extra, absent from most installs.
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")  # files only: never needs a display
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print(
            "kryten-llm stats: --plot needs matplotlib, which is not installed.\n"
            "  Install it with: pip install 'kryten-llm[plot]'  (or: pip install matplotlib)",
            file=err,
        )
        return None
    return plt


Bars = list[tuple[str, int]]


def chart_data(summary: Summary) -> dict[str, Bars]:
    """The bar charts' (label, count) pairs, most common first: one bar per row of the report.

    Labels are made terminal- and chart-safe; a bar is drawn at its own position, so two
    labels that look alike after cutting are still two bars.
    """
    triggers = summary.triggers.most_common(CHART_BARS)
    outcomes = summary.outcomes.most_common(CHART_BARS)
    return {
        "Triggers fired": [(safe(f"{k}:{n}", CHART_LABEL_CHARS), c) for (k, n), c in triggers],
        "Outcomes": [(safe(f"{o} {r}".strip(), CHART_LABEL_CHARS), c) for (o, r), c in outcomes],
    }


def _bars(axis: Any, title: str, bars: Bars) -> None:
    positions = list(range(len(bars)))
    axis.barh(positions, [count for _, count in bars])
    axis.set_yticks(positions, [label for label, _ in bars])
    axis.invert_yaxis()  # most common on top, as in the text report
    axis.set_title(title)


def _draw(plt: Any, summary: Summary, target: Path) -> None:
    """The same four views as the text report, as one PNG."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for axis, (title, bars) in zip(axes[0], chart_data(summary).items(), strict=True):
        _bars(axis, title, bars)
    axes[1][0].hist(summary.latencies_ms or [0], bins=30)
    axes[1][0].set_title("LLM latency (ms)")
    hours = sorted(summary.replies_per_hour.items())
    axes[1][1].plot([h for h, _ in hours], [n for _, n in hours], marker="o")
    axes[1][1].set_title("Replies per hour (UTC)")
    axes[1][1].tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
