"""`kryten-llm stats`: the numbers from a generated log, malformed lines, rotation, --plot."""

from __future__ import annotations

import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from kryten_llm.config import ResponseLogSettings
from kryten_llm.response_log import ResponseLog, ResponseRecord, reason_cause
from kryten_llm.tools.stats import chart_data, percentile, run_stats, summarise


def row(
    user: str,
    outcome: str,
    hour: int,
    minute: int = 0,
    reason: str = "",
    kind: str = "mention",
    name: str = "mention",
    latency: float | None = None,
) -> dict[str, Any]:
    return ResponseRecord(
        channel="lounge",
        username=user,
        message="hi bot",
        outcome=outcome,
        reason=reason,
        trigger_type=kind,
        trigger_name=name,
        latency_ms=latency,
        dry_run=outcome == "dry_run",
        timestamp=f"2026-11-22T{hour:02d}:{minute:02d}:00.000Z",
    ).to_dict()


def generated_rows() -> list[dict[str, Any]]:
    rows = [row("Alice", "sent", 2, i, latency=100.0 * (i + 1)) for i in range(10)]
    rows += [
        row("bob", "rate_limited", 2, 30, "user_cooldown", "trigger_word", "movies")
        for _ in range(3)
    ]
    rows += [
        row("BOB", "dry_run", 3, 5, kind="trigger_word", name="movies", latency=2000)
        for _ in range(2)
    ]
    rows += [row("carol", "spam", 3, 10, "penalty") for _ in range(4)]
    rows += [row("dave", "llm_failed", 3, 20, "all providers failed")]
    return rows


MALFORMED = ["not json at all", "[1, 2]", '{"no_outcome": 1}', '{"outcome": 5}', "{truncated"]


def write_log(path: Path, rows: list[dict[str, Any]], extra: list[str] = MALFORMED) -> Path:
    lines = [json.dumps(r) for r in rows]
    lines[3:3] = extra
    path.write_text("\n".join([*lines, "", "   "]) + "\n", encoding="utf-8")
    return path


def report(path: Path, **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_stats(path, kwargs.pop("plot", None), out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def table_row(text: str, *cells: str) -> bool:
    """True if some line holds exactly these cells, separated by whitespace."""
    pattern = r"^\s*" + r"\s+".join(re.escape(c) for c in cells) + r"\s*$"
    return re.search(pattern, text, re.MULTILINE) is not None


def test_summary_counts_everything() -> None:
    lines = [json.dumps(r) for r in generated_rows()] + MALFORMED + [""]
    summary = summarise(lines)
    assert summary.records == 20
    assert summary.malformed_lines == len(MALFORMED)
    assert summary.triggers == {("mention", "mention"): 15, ("trigger_word", "movies"): 5}
    assert summary.outcomes == {
        ("sent", ""): 10,
        ("rate_limited", "user_cooldown"): 3,
        ("dry_run", ""): 2,
        ("spam", "penalty"): 4,
        ("llm_failed", "all providers failed"): 1,
    }
    assert summary.replies == 12
    assert sorted(summary.latencies_ms) == [*(100.0 * i for i in range(1, 11)), 2000, 2000]
    assert summary.user_triggers == {"alice": 10, "bob": 5, "carol": 4, "dave": 1}
    assert summary.user_replies == {"alice": 10, "bob": 2}
    assert summary.replies_per_hour == {"2026-11-22 02:00": 10, "2026-11-22 03:00": 2}


def test_report_prints_the_tables(tmp_path: Path) -> None:
    code, text, err = report(write_log(tmp_path / "responses.jsonl", generated_rows()))
    assert (code, err) == (0, "")
    assert "20 record(s)" in text
    assert "skipped 5 malformed line(s)" in text
    assert table_row(text, "mention", "mention", "15", "75.0%")
    assert table_row(text, "trigger_word", "movies", "5", "25.0%")
    assert "Outcomes: 12 repl(ies) of 20 (60.0%)" in text
    assert table_row(text, "sent", "10", "50.0%")
    assert table_row(text, "rate_limited", "user_cooldown", "3", "15.0%")
    assert table_row(text, "llm_failed", "all providers failed", "1", "5.0%")
    assert "LLM latency (ms, 12 call(s))" in text
    assert table_row(text, "600", "2000", "2000", "2000"), "p50 p95 p99 max"
    assert table_row(text, "alice", "10", "10")
    assert table_row(text, "bob", "5", "2")
    assert table_row(text, "carol", "4", "0")
    assert table_row(text, "2026-11-22 02:00", "10")
    assert table_row(text, "2026-11-22 03:00", "2")
    busiest = text.index("Busiest users")
    assert text.index("alice", busiest) < text.index("bob", busiest) < text.index("carol", busiest)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7
    assert math.isnan(percentile([], 50))


def test_rotated_siblings_are_read_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    write_log(path, [row("a", "sent", 1)] * 2, extra=[])
    write_log(path.with_name("responses.jsonl.1"), [row("b", "sent", 1)] * 3, extra=[])
    write_log(path.with_name("responses.jsonl.2"), [row("c", "sent", 1)] * 4, extra=[])
    path.with_name("responses.jsonl.bak").write_text("ignored\n")
    assert "2 record(s)" in report(path)[1]
    code, text, _ = report(path, include_rotated=True)
    assert code == 0
    assert "(+2 rotated): 9 record(s)" in text


def test_empty_log_reports_zeroes(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    path.write_text("")
    code, text, _ = report(path)
    assert code == 0
    assert "0 record(s)" in text
    assert "no records with latency_ms" in text
    assert "(none)" in text


def test_missing_log_is_a_clear_error(tmp_path: Path) -> None:
    code, text, err = report(tmp_path / "nope.jsonl")
    assert code == 1
    assert text == ""
    assert "cannot read" in err and "nope.jsonl" in err


def test_directory_instead_of_log_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = report(tmp_path)
    assert code == 1
    assert "cannot read" in err


def test_hostile_names_cannot_drive_the_terminal(tmp_path: Path) -> None:
    evil = "\x1b[2J\x1b]0;pwned\x07" + "x" * 200
    path = write_log(tmp_path / "r.jsonl", [row(evil, "sent", 1, name=evil, kind="mention")], [])
    code, text, _ = report(path)
    assert code == 0
    assert "\x1b" not in text and "\x07" not in text
    assert max(len(line) for line in text.splitlines()) < 150


def test_odd_values_are_tolerated(tmp_path: Path) -> None:
    rows = [
        {"outcome": "sent", "timestamp": "yesterday", "latency_ms": "fast"},
        {"outcome": "sent", "timestamp": "2026-11-22T05:30:00+02:00", "latency_ms": -5},
        {"outcome": "sent", "timestamp": None, "latency_ms": True, "username": ["x"]},
    ]
    summary = summarise(json.dumps(r) for r in rows)
    assert summary.records == 3
    assert summary.latencies_ms == []
    assert summary.replies_per_hour == {"2026-11-22 03:00": 1}, "offsets are converted to UTC"
    assert summary.bad_timestamps == 2
    code, text, _ = report(write_log(tmp_path / "r.jsonl", rows, []))
    assert code == 0
    assert "2 repl(ies) with an unreadable timestamp" in text


def test_plot_without_matplotlib_exits_nonzero_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    path = write_log(tmp_path / "r.jsonl", generated_rows())
    code, text, err = report(path, plot=tmp_path / "chart.png")
    assert (code, text) == (2, "")
    assert "needs matplotlib" in err and "kryten-llm[plot]" in err
    assert not (tmp_path / "chart.png").exists()


def test_plot_draws_a_png_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = write_log(tmp_path / "r.jsonl", generated_rows())
    code, text, _ = report(path, plot=tmp_path / "out" / "chart.png")
    assert code == 0
    assert (tmp_path / "out" / "chart.png").read_bytes().startswith(b"\x89PNG")
    assert "Chart written to" in text


async def test_reads_what_the_response_log_writes(tmp_path: Path) -> None:
    log = ResponseLog(ResponseLogSettings(path=tmp_path / "responses.jsonl"))
    await log.start()
    for i in range(30):
        log.write(
            ResponseRecord(
                channel="lounge",
                username=f"user{i % 3}",
                message="hey",
                outcome="sent" if i % 2 else "rate_limited",
                reason="" if i % 2 else "global_cooldown",
                trigger_type="mention",
                trigger_name="mention",
                latency_ms=float(i),
            )
        )
    await log.close()
    code, text, _ = report(log.path)
    assert code == 0
    assert table_row(text, "sent", "15", "50.0%")
    assert table_row(text, "rate_limited", "global_cooldown", "15", "50.0%")


def mixed_rows() -> list[dict[str, Any]]:
    """A log whose reasons carry particulars, as the service writes them."""
    rows = [
        row("u", "rate_limited", 4, i, f"user_cooldown: 1 reply in {i + 1}0.0 s; again in {i}.5 s")
        for i in range(9)
    ]
    rows += [
        row("u", "loop_protection", 4, 10, f"chat_share: a reply would make the bot {n} of 2{n}")
        for n in (3, 4, 5)
    ]
    rows += [
        row("u", "llm_failed", 4, 11, "all providers failed (main=http_500, backup=timeout)"),
        row("u", "llm_failed", 4, 12, "all providers failed (main=breaker_open)"),
        row("u", "llm_failed", 4, 13, "deadline of 30s exceeded"),
        row("u", "invalid", 4, 14, "too similar to a recent reply (0.92)"),
        row("u", "invalid", 4, 15, "too similar to a recent reply (0.97)"),
        row("u", "invalid", 4, 16, "regenerated: too similar to a recent reply (0.90)"),
        row("u", "guard_blocked", 4, 17, "link to 'a.example' (link_policy=strip); blocked word"),
        row("u", "guard_blocked", 4, 18, "blocked pattern 'x+'"),
        row("u", "budget", 4, 19, "user alice"),
        row("u", "budget", 4, 20, "user bob"),
        row("u", "sent", 4, 21, "stream interrupted (stream_cut)"),
    ]
    return rows


def test_reasons_are_grouped_by_cause_in_the_table_and_the_chart(tmp_path: Path) -> None:
    path = write_log(tmp_path / "mixed.jsonl", mixed_rows(), [])
    code, text, _ = report(path)
    assert code == 0
    expected = {
        ("rate_limited", "user_cooldown"): 9,
        ("loop_protection", "chat_share"): 3,
        ("llm_failed", "all providers failed"): 2,
        ("llm_failed", "deadline of Ns exceeded"): 1,
        ("invalid", "too similar to a recent reply"): 2,
        ("invalid", "regenerated: too similar to a recent reply"): 1,
        ("guard_blocked", "blocked word"): 1,
        ("guard_blocked", "blocked pattern"): 1,
        ("budget", "user"): 2,
        ("sent", ""): 1,
    }
    summary = summarise(path.read_text().splitlines())
    assert summary.outcomes == expected
    assert table_row(text, "rate_limited", "user_cooldown", "9", f"{900 / 23:.1f}%")
    assert table_row(text, "budget", "user", "2", f"{200 / 23:.1f}%")
    # The chart draws the same rows: one bar per cause, labels distinct, counts as counted.
    bars = chart_data(summary)["Outcomes"]
    labels = [label for label, _ in bars]
    assert len(labels) == len(set(labels)) == len(expected)
    assert dict(bars) == {f"{o} {r}".strip(): n for (o, r), n in expected.items()}
    assert bars[0] == ("rate_limited user_cooldown", 9)
    assert chart_data(summary)["Triggers fired"] == [("mention:mention", 23)]


@pytest.mark.parametrize(
    ("outcome", "reason", "cause"),
    [
        ("rate_limited", "global_per_minute: 2 replies in the last 60 s", "global_per_minute"),
        ("spam", "penalty", "penalty"),
        ("paused", "channel paused by the operator", "channel paused by the operator"),
        (
            "llm_failed",
            "regenerate: all providers failed (a=http_429)",
            "regenerate: all providers failed",
        ),
        ("guard_blocked", "nothing left to publish", "nothing left to publish"),
        ("budget", "channel cytu.be/lounge", "channel"),
        ("budget", "global", "global"),
        ("dropped", "reply queue full", "reply queue full"),
        ("dry_run", "stopped at max_parts (3)", ""),
        ("invalid", "x" * 10_000, "x" * 48),
        ("invalid", "", ""),
    ],
)
def test_reason_cause(outcome: str, reason: str, cause: str) -> None:
    assert reason_cause(outcome, reason) == cause
