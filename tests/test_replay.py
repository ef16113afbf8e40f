"""`kryten-llm replay`: transcripts in both formats, decisions, the report, bad input, the CLI.

No NATS here: a replay must not need one (the configs point NATS at a closed port). The LLM is
the offline Markov stand-in, or the fake OpenAI-compatible server for `--llm configured`.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from kryten_llm.cli import main
from kryten_llm.config import Settings, build_settings
from kryten_llm.reply.guard import is_command_like
from kryten_llm.tools.replay import (
    ReplayError,
    ReplayOptions,
    ReplayResult,
    format_report,
    replay_transcript,
)
from kryten_llm.tools.simulate import cytube_escape
from kryten_llm.tools.stats import run_stats
from kryten_llm.tools.transcript import (
    MAX_LINE_CHARS,
    MalformedLine,
    TranscriptEvent,
    parse_transcript,
)
from tests.support.fake_llm import FakeLLM
from tests.support.service import BOT, CHANNEL_A, LOOSE_LIMITS, LOOSE_SPAM

DATA = Path(__file__).parent / "data"
PLAIN_SAMPLE = DATA / "replay_sample.txt"
JSONL_SAMPLE = DATA / "replay_sample.jsonl"
CHANNEL = CHANNEL_A

FREE_TRIGGER: dict[str, Any] = {
    "name": "movies",
    "patterns": ["movie"],
    "cooldown_seconds": 0,
    "max_responses_per_hour": 10_000,
}


def config(llm_url: str = "http://127.0.0.1:1/v1", **overrides: Any) -> dict[str, Any]:
    """Production limits unless overridden; NATS points at a port nothing listens on."""
    data: dict[str, Any] = {
        "nats": {"url": "nats://127.0.0.1:1"},
        "cytube": [
            {"domain": "cytu.be", "channel": CHANNEL, "username": BOT},
            {"domain": "example.net", "channel": "Lounge", "username": BOT},
        ],
        "personality": {"character_name": BOT, "name_variations": ["cynthia"]},
        "llm_providers": {
            "main": {
                "type": "openai_compatible",
                "base_url": llm_url,
                "model": "fake-model",
                "api_key": "sk-test-replay-NOT-A-REAL-KEY-123",
                "timeout_seconds": 2,
            }
        },
        "llm_manager": {"max_retries": 0},
        "triggers": [
            {
                "name": "movies",
                "patterns": ["movie", "film"],
                "probability": 0.5,
                "cooldown_seconds": 120,
            },
            {"name": "kungfu", "patterns": ["kung fu"], "cooldown_seconds": 300},
        ],
        "validation": {"history_size": 0},
    }
    data.update(overrides)
    return data


def settings(**overrides: Any) -> Settings:
    return build_settings(config(**overrides), "test")


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config(**overrides)))
    return path


def envelope_line(event: str, payload: Any, channel: str = CHANNEL) -> str:
    """A transcript line exactly as the bridge encodes an event."""
    body = {
        "event_name": event,
        "payload": payload,
        "channel": channel,
        "domain": "cytu.be",
        "timestamp": "2026-11-22T02:10:38.071747+00:00",
        "correlation_id": "c4a007e2-8ea8-4600-bb38-2a9514e6415a",
    }
    return json.dumps(body)


def chat_line(user: str, text: str, time_ms: int) -> str:
    return envelope_line(
        "chatMsg", {"username": user, "msg": cytube_escape(text), "meta": {}, "time": time_ms}
    )


def outcomes(result: ReplayResult) -> list[tuple[str, str, str, str]]:
    return [(d.username, d.message, d.outcome, d.reason_key) for d in result.decisions]


# --- parsing -----------------------------------------------------------------------------------


def test_plain_lines_with_and_without_timestamps() -> None:
    lines = [
        "# a comment",
        "",
        "Alice: first",
        "Bob: spaced by the interval",
        "[21:00:00] Carol: stamped: with a colon in the text",
        "Dave: 7 s after Carol",
        "[23:59:59] Eve: just before midnight",
        "[00:00:03] Frank: just after midnight",
        "[00:00:02] Grace: a little out of order is not a new day",
        "[server]: Alice was promoted",
    ]
    items = list(parse_transcript(lines, interval_seconds=7))
    assert all(isinstance(i, TranscriptEvent) for i in items)
    events = [i for i in items if isinstance(i, TranscriptEvent)]
    times = [e.payload["time"] for e in events]
    day = 86_400_000
    assert times[:4] == [0, 7000, 75_600_000, 75_607_000]
    assert times[4:7] == [86_399_000, day + 3000, day + 2000]
    assert [e.payload["username"] for e in events][-1] == "[server]"
    assert events[2].payload["msg"] == "stamped: with a colon in the text"
    assert [e.line_no for e in events] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert {e.event_name for e in events} == {"chatMsg"}


def test_plain_text_is_escaped_as_cytube_escapes_it() -> None:
    [event] = parse_transcript(["Alice: it's <b>bold</b> & (fun)"])
    assert isinstance(event, TranscriptEvent)
    assert event.payload["msg"] == cytube_escape("it's <b>bold</b> & (fun)")


def test_malformed_plain_lines_are_reported_with_line_numbers() -> None:
    lines = ["Alice: ok", "no colon here", "[25:00:00] Bob: bad hour", "[12:61:00] Bob: bad minute"]
    items = list(parse_transcript(lines))
    bad = [i for i in items if isinstance(i, MalformedLine)]
    assert [b.line_no for b in bad] == [2, 3, 4]
    assert "user: message" in bad[0].reason
    assert "bad time" in bad[1].reason


def test_jsonl_envelopes_and_malformed_ones() -> None:
    lines = [
        chat_line("Alice", "hi", 1000),
        "not json",
        "[1, 2, 3]",
        '{"payload": {}}',
        envelope_line("chatMsg", {"username": "a", "msg": "x"}),
        envelope_line("chatMsg", None),
        '{"event_name": "chatMsg", "payload": {"username": "a", "msg": "x", "time": Infinity}}',
        '{"event_name": "chatMsg", "payload": {"username": "a", "msg": "x", "time": NaN}}',
        envelope_line("changeMedia", {"id": "x"}),
        envelope_line("usercount", 5),
        "{truncated",
    ]
    items = list(parse_transcript(lines))
    good = [i for i in items if isinstance(i, TranscriptEvent)]
    bad = [i for i in items if isinstance(i, MalformedLine)]
    assert [(g.line_no, g.event_name) for g in good] == [(1, "chatMsg"), (10, "usercount")]
    assert [b.line_no for b in bad] == [2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert "not JSON" in bad[0].reason
    assert "not a JSON object" in bad[1].reason
    assert "event_name" in bad[2].reason
    assert "numeric time" in bad[3].reason


def test_format_is_chosen_by_the_first_real_line() -> None:
    """A plain transcript whose message starts with `{` is still plain; JSONL stays JSONL."""
    plain = list(parse_transcript(["# header", 'Alice: {"not": "an envelope"}']))
    assert isinstance(plain[0], TranscriptEvent)
    jsonl = list(parse_transcript([chat_line("Alice", "hi", 1), "Bob: plain line in JSONL"]))
    assert isinstance(jsonl[0], TranscriptEvent)
    assert isinstance(jsonl[1], MalformedLine)


# --- replaying ---------------------------------------------------------------------------------


async def test_sample_transcript_report_says_what_when_and_why(tmp_path: Path) -> None:
    out = tmp_path / "replay.jsonl"
    result = await replay_transcript(PLAIN_SAMPLE, settings(), ReplayOptions(jsonl=out))
    report = format_report(result)
    assert result.chat_lines == 34
    assert result.malformed == 0 and result.errors == 0
    assert result.replies, report
    first = result.replies[0]
    assert re.search(rf"\[21:00:\d\d\] <{BOT}> .+\(to {first.username}, ", report), report
    # Production limits hold most of an excited room back, and the report says why.
    held = result.outcome_table()
    assert sum(held.values()) == len(result.decisions) - len(result.replies)
    assert ("spam", "repeated_message") in held or ("spam", "penalty") in held
    assert any(outcome == "rate_limited" for outcome, _ in held)
    for heading in ("What the bot would have said", "How often it would speak", "Why it held"):
        assert heading in report
    assert "replies per hour" in report
    # One JSONL record per triggered line, readable by `kryten-llm stats`.
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["username"], r["message"], r["outcome"]) for r in records] == [
        (d.username, d.message, d.outcome) for d in result.decisions
    ]
    assert {r["outcome"] for r in records} >= {"dry_run", "rate_limited"}
    stats_out = io.StringIO()
    assert run_stats(out, None, stats_out) == 0
    assert f"{len(result.replies)} repl(ies) of {len(records)}" in stats_out.getvalue()


async def test_the_same_seed_decides_the_same_and_another_seed_rolls_differently(
    tmp_path: Path,
) -> None:
    transcript = tmp_path / "movies.txt"
    transcript.write_text("".join(f"user{i}: what a movie number {i}\n" for i in range(200)))
    loose = settings(
        rate_limits=LOOSE_LIMITS,
        spam=LOOSE_SPAM,
        triggers=[{**FREE_TRIGGER, "probability": 0.5}],
    )
    first = await replay_transcript(transcript, loose, ReplayOptions(seed=7))
    again = await replay_transcript(transcript, loose, ReplayOptions(seed=7))
    other = await replay_transcript(transcript, loose, ReplayOptions(seed=8))
    assert outcomes(first) == outcomes(again)
    assert [d.parts for d in first.decisions] == [d.parts for d in again.decisions]
    answered = {d.message for d in first.replies}
    assert answered != {d.message for d in other.replies}
    assert 60 <= len(answered) <= 140  # p = 0.5 over 200 lines


async def test_ranks_from_the_transcript_give_moderators_shorter_cooldowns(tmp_path: Path) -> None:
    """userlist/setUserRank in a JSONL transcript apply: ranks change cooldowns as live."""
    user = {"profile": {"image": "", "text": ""}, "meta": {"afk": False}}
    lines = [
        envelope_line("userlist", [{"name": "Mod", "rank": 3, **user}, {"name": "Al", "rank": 1}]),
        chat_line("Mod", "cynthia one", 1_000),
        chat_line("Al", "cynthia one", 2_000),
        chat_line("Mod", "cynthia two", 41_000),  # 40 s later: over the mod's 30 s cooldown
        chat_line("Al", "cynthia two", 42_000),  # ...but under Al's 60 s
        envelope_line("setUserRank", {"name": "Al", "rank": 2}),
        chat_line("Al", "cynthia three", 73_000),  # 31 s later: now a moderator too
    ]
    transcript = tmp_path / "ranks.jsonl"
    transcript.write_text("\n".join(lines) + "\n")
    limits = {**LOOSE_LIMITS, "user_cooldown_seconds": 60, "admin_cooldown_multiplier": 0.5}
    result = await replay_transcript(
        transcript, settings(rate_limits=limits, spam=LOOSE_SPAM), ReplayOptions()
    )
    assert [(d.username, d.outcome, d.reason_key) for d in result.decisions] == [
        ("Mod", "dry_run", ""),
        ("Al", "dry_run", ""),
        ("Mod", "dry_run", ""),
        ("Al", "rate_limited", "user_cooldown"),
        ("Al", "dry_run", ""),
    ]
    assert result.events == {"userlist": 1, "setUserRank": 1}


async def test_jsonl_sample_applies_events_and_skips_what_the_service_never_hears() -> None:
    result = await replay_transcript(JSONL_SAMPLE, settings(), ReplayOptions())
    assert result.format == "jsonl"
    assert result.skipped_events == {"usercount": 1}
    assert result.events["userlist"] == 1 and result.events["changeMedia"] == 1
    assert result.malformed == 0 and result.errors == 0
    assert result.replies
    # The bot's own line in the recording is never answered.
    assert all(d.username != BOT for d in result.decisions)


async def test_malformed_and_hostile_lines_are_counted_and_never_crash(tmp_path: Path) -> None:
    hostile = "Ev\x1b[31mil\x07"
    lines = [
        chat_line("Alice", "cynthia hello", 1_000),
        "garbage",
        "\x00\x01\x02",
        "x" * (MAX_LINE_CHARS + 10),
        envelope_line("userlist", "not a list"),
        envelope_line("addUser", {"name": 5, "rank": "high"}),
        chat_line(hostile, "cynthia \x1b[2J clear your screen", 2_000),
        chat_line("Bob", "cynthia still fine", 3_000),
    ]
    transcript = tmp_path / "bad.jsonl"
    transcript.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe not utf-8\n")
    result = await replay_transcript(
        transcript, settings(rate_limits=LOOSE_LIMITS, spam=LOOSE_SPAM), ReplayOptions()
    )
    assert result.malformed == 6
    assert [m.line_no for m in result.malformed_examples] == [2, 3, 4, 5, 6, 9]
    assert result.errors == 0
    assert [d.username for d in result.replies] == ["Alice", hostile, "Bob"]
    report = format_report(result)
    assert "\x1b" not in report and "\x07" not in report
    assert "skipped 6 malformed line(s)" in report
    assert "line 4: longer than" in report


async def test_a_never_ending_line_is_one_malformed_line(tmp_path: Path) -> None:
    transcript = tmp_path / "long.txt"
    transcript.write_text("Alice: " + "a" * (3 * MAX_LINE_CHARS) + "\nBob: cynthia hi\n")
    result = await replay_transcript(transcript, settings(), ReplayOptions())
    assert [m.line_no for m in result.malformed_examples] == [1]
    assert [d.username for d in result.decisions] == ["Bob"]


async def test_configured_llm_is_asked_through_its_real_wire_format(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    fake_llm.reply_with("Straight from the configured model.")
    transcript = tmp_path / "t.txt"
    transcript.write_text("Alice: cynthia hello\nBob: cynthia hi\n")
    loose = settings(llm_url=fake_llm.base_url, rate_limits=LOOSE_LIMITS, spam=LOOSE_SPAM)
    result = await replay_transcript(transcript, loose, ReplayOptions(llm="configured"))
    assert [d.parts for d in result.replies] == [("Straight from the configured model.",)] * 2
    assert len(fake_llm.requests) == 2
    assert "configured providers: main" in format_report(result)


async def test_failing_llm_is_reported_as_llm_failed(tmp_path: Path, fake_llm: FakeLLM) -> None:
    fake_llm.fail_with(500, "boom")
    transcript = tmp_path / "t.txt"
    transcript.write_text("Alice: cynthia hello\n")
    broken = settings(llm_url=fake_llm.base_url, rate_limits=LOOSE_LIMITS, spam=LOOSE_SPAM)
    result = await replay_transcript(transcript, broken, ReplayOptions(llm="configured"))
    assert [(d.outcome, d.parts) for d in result.decisions] == [("llm_failed", ())]
    assert "llm_failed" in format_report(result)


async def test_an_outage_gives_a_mention_the_fallback_line_in_the_report(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    fake_llm.fail_with(503, "down")
    transcript = tmp_path / "t.txt"
    transcript.write_text("Alice: cynthia hello\nAlice: cynthia hello again\nBob: a movie\n")
    broken = settings(
        llm_url=fake_llm.base_url,
        rate_limits=LOOSE_LIMITS,
        spam=LOOSE_SPAM,
        triggers=[FREE_TRIGGER],
        validation={"history_size": 0, "fallback_response": "Back in a moment."},
    )
    result = await replay_transcript(transcript, broken, ReplayOptions(llm="configured"))
    assert [(d.username, d.outcome, d.parts) for d in result.decisions] == [
        ("Alice", "fallback", ("Back in a moment.",)),
        ("Alice", "llm_failed", ()),
        ("Bob", "llm_failed", ()),
    ]
    assert result.bot_lines == 1 and result.replies == []
    report = format_report(result)
    assert f"<{BOT}> Back in a moment.  (to Alice, mention, fallback line)" in report
    assert table_row_in(report, "fallback", "all providers failed", "1")


def table_row_in(text: str, *cells: str) -> bool:
    pattern = r"^\s*" + r"\s+".join(re.escape(c) for c in cells) + r"\s"
    return re.search(pattern, text, re.MULTILINE) is not None


async def test_command_shaped_llm_output_is_never_a_reply(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    fake_llm.reply_with("/kick Alice")
    transcript = tmp_path / "t.txt"
    transcript.write_text("Alice: cynthia do something\n")
    loose = settings(llm_url=fake_llm.base_url, rate_limits=LOOSE_LIMITS, spam=LOOSE_SPAM)
    result = await replay_transcript(transcript, loose, ReplayOptions(llm="configured"))
    assert len(result.decisions) == 1
    for decision in result.decisions:
        for part in decision.parts:
            assert not is_command_like(part, ["/", "!", "."]), part


async def test_channel_option_and_unknown_channel(tmp_path: Path) -> None:
    transcript = tmp_path / "t.txt"
    transcript.write_text("Alice: cynthia hi\n")
    result = await replay_transcript(transcript, settings(), ReplayOptions(channel="lounge"))
    assert result.channel == "example.net/Lounge"
    with pytest.raises(ReplayError, match="not in the configuration") as caught:
        await replay_transcript(transcript, settings(), ReplayOptions(channel="nowhere"))
    assert caught.value.exit_code == 2


async def test_three_thousand_lines_replay_in_seconds(tmp_path: Path) -> None:
    users = [f"viewer{i}" for i in range(25)]
    texts = ["cynthia what now?", "what a movie", "kung fu!", "lol", "brb", "nice kick"]
    transcript = tmp_path / "big.txt"
    transcript.write_text(
        "".join(f"{users[i % 25]}: {texts[i % len(texts)]} {i}\n" for i in range(3000))
    )
    started = time.perf_counter()
    result = await replay_transcript(transcript, settings(), ReplayOptions(interval_seconds=3))
    elapsed = time.perf_counter() - started
    assert result.chat_lines == 3000
    assert result.replies and len(result.decisions) > 500
    assert elapsed < 30, elapsed  # generous: it takes a second or two on a quiet machine


# --- the command line ------------------------------------------------------------------------


def test_cli_replay_prints_the_report_and_writes_jsonl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    out = tmp_path / "out" / "replay.jsonl"
    out.parent.mkdir()
    out.write_text("stale line from an earlier run\n")
    code = main(["replay", str(PLAIN_SAMPLE), "--config", str(cfg), "--jsonl", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"Replay of {PLAIN_SAMPLE}" in printed
    assert "Why it held back" in printed
    lines = out.read_text().splitlines()
    assert lines and all(json.loads(line)["dry_run"] is True for line in lines)
    assert "sk-test-replay" not in out.read_text()


def test_cli_top_level_config_works_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert main(["--config", str(cfg), "replay", str(PLAIN_SAMPLE), "--seed", "3"]) == 0
    assert "trigger rolls seeded with 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing.txt"], 1, "cannot read transcript"),
        (["."], 1, "is a directory"),
        ([str(PLAIN_SAMPLE), "--channel", "nowhere"], 2, "not in the configuration"),
        ([str(PLAIN_SAMPLE), "--interval", "0"], 2, "--interval"),
        ([str(PLAIN_SAMPLE), "--interval", "nan"], 2, "--interval"),
        ([str(PLAIN_SAMPLE), "--jsonl", str(PLAIN_SAMPLE)], 2, "is the transcript"),
    ],
)
def test_cli_replay_errors_are_clear(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    cfg = write_config(tmp_path)
    assert main(["replay", *args, "--config", str(cfg)]) == code
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_cli_refuses_to_overwrite_the_service_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service_log = tmp_path / "responses.jsonl"
    service_log.write_text('{"outcome": "sent"}\n')
    cfg = write_config(tmp_path, response_log={"path": str(service_log)})
    assert (
        main(["replay", str(PLAIN_SAMPLE), "--config", str(cfg), "--jsonl", str(service_log)]) == 2
    )
    assert "own response log" in capsys.readouterr().err
    assert service_log.read_text() == '{"outcome": "sent"}\n'


def test_cli_bad_config_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"rate_limits": {"global_max_per_minute": -1}}')
    assert main(["replay", str(PLAIN_SAMPLE), "--config", str(cfg)]) == 2
    assert "global_max_per_minute" in capsys.readouterr().err


def test_cli_nothing_replayable_fails_but_an_empty_file_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    junk = tmp_path / "junk.txt"
    junk.write_text("this is not a transcript\nneither is this\n")
    assert main(["replay", str(junk), "--config", str(cfg)]) == 1
    assert "nothing in" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["replay", str(empty), "--config", str(cfg)]) == 0
    assert "0 chat line(s)" in capsys.readouterr().out


async def test_replayed_records_carry_the_transcript_time(tmp_path: Path) -> None:
    """Not the wall clock: a replayed log reads against its transcript (and `stats` hours)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("[21:00:15] Alice: cynthia hello\n[21:07:42] Bob: cynthia hi there\n")
    bridged = tmp_path / "bridged.jsonl"
    bridged.write_text(chat_line("Carol", "cynthia evening", 1_763_777_438_071) + "\n")
    loose = settings(rate_limits=LOOSE_LIMITS, spam=LOOSE_SPAM)
    stamps: dict[str, list[str]] = {}
    for transcript in (plain, bridged):
        out = tmp_path / f"{transcript.stem}.jsonl.out"
        await replay_transcript(transcript, loose, ReplayOptions(jsonl=out))
        records = [json.loads(line) for line in out.read_text().splitlines()]
        stamps[transcript.stem] = [r["timestamp"] for r in records]
    # Plain lines carry a time of day only: day 0 of the epoch, as the replay counts them.
    assert stamps["plain"] == ["1970-01-01T21:00:15.000Z", "1970-01-01T21:07:42.000Z"]
    assert stamps["bridged"] == ["2025-11-22T02:10:38.071Z"]
    report = io.StringIO()
    assert run_stats(tmp_path / "plain.jsonl.out", None, report) == 0
    assert re.search(r"^\s*1970-01-01 21:00\s+2$", report.getvalue(), re.MULTILINE)
