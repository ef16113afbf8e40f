"""The bot's share of chat, over the replay tool: a quiet room and a busy one.

The rule (`decide/spam.py`): the bot's lines stay under `spam.max_chat_share` of recent chat,
its next reply counted, in every room; in a quiet room a direct mention is still answered
(with the normal cooldowns). Both transcripts go through `kryten-llm replay`'s own code path,
and the assertions are on what the bot would have said: the final share, and the share in the
window the rule measures at each reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kryten_llm.config import Settings, SpamSettings, build_settings
from kryten_llm.tools.replay import ReplayOptions, ReplayResult, replay_transcript
from tests.support.service import BOT, CHANNEL_A, LOOSE_LIMITS, LOOSE_SPAM

SHARE = 0.05
WINDOW_LINES = SpamSettings().chat_share_window_lines
WINDOW_SECONDS = SpamSettings().chat_share_window_seconds
WARM_UP_LINES = 2 * SpamSettings().chat_share_min_sample_lines
TRIGGER: dict[str, Any] = {
    "name": "movies",
    "patterns": ["movie"],
    "cooldown_seconds": 0,
    "max_responses_per_hour": 10_000,
}


def settings(**overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "nats": {"url": "nats://127.0.0.1:1"},
        "cytube": [{"domain": "cytu.be", "channel": CHANNEL_A, "username": BOT}],
        "personality": {"character_name": BOT, "name_variations": ["cynthia"]},
        "triggers": [TRIGGER],
        "validation": {"history_size": 0},
        # One chat line per reply, so the share the rule judges is the share the room sees.
        "message_processing": {"max_parts": 1},
    }
    data.update(overrides)
    return build_settings(data, "test")


@dataclass(frozen=True)
class Line:
    seconds: int
    user: str
    text: str


def write(path: Path, lines: list[Line]) -> Path:
    def stamp(seconds: int) -> str:
        return f"[{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}]"

    path.write_text("".join(f"{stamp(x.seconds)} {x.user}: {x.text}\n" for x in lines))
    return path


def final_share(result: ReplayResult) -> float:
    return result.bot_lines / (result.chat_lines + result.bot_lines)


def shares_at_replies(lines: list[Line], result: ReplayResult) -> list[float]:
    """For each reply, the bot's share of the window the rule measures, that reply included."""
    timeline = [(x.seconds, False) for x in lines]
    timeline += [(d.time_ms // 1000, True) for d in result.replies for _ in d.parts]
    timeline.sort(key=lambda item: item[0])  # stable: a reply follows the line it answers
    shares = []
    for index, (at, is_bot) in enumerate(timeline):
        if not is_bot:
            continue
        window = [b for t, b in timeline[: index + 1] if t > at - WINDOW_SECONDS]
        window = window[-WINDOW_LINES:]
        shares.append(sum(window) / len(window))
    return shares


async def test_a_quiet_room_hears_the_bot_only_when_it_is_asked(tmp_path: Path) -> None:
    """Three lines an hour for ten hours; most name a trigger word, some ask the bot."""
    users = ("alice", "bob", "carol")
    lines = [
        Line(
            seconds=i * 1200 + 60,
            user=users[i % 3],
            text=f"cynthia what is your favourite movie number {i}?"
            if i % 5 == 0
            else f"that movie was something, part {i}",
        )
        for i in range(30)
    ]
    # A quick follow-up question gets the normal mention cooldown, quiet room or not.
    lines.insert(1, Line(90, "alice", "cynthia and what about the sequel?"))
    path = write(tmp_path / "quiet.txt", lines)

    result = await replay_transcript(path, settings(), ReplayOptions())

    assert result.malformed == 0 and result.errors == 0
    words = [d for d in result.decisions if d.trigger_type == "trigger_word"]
    mentions = [d for d in result.decisions if d.trigger_type == "mention"]
    assert len(words) == 24 and len(mentions) == 7
    assert {(d.outcome, d.reason_key) for d in words} == {("loop_protection", "chat_share")}
    held = [(d.message, d.outcome, d.reason_key) for d in mentions if not d.replied]
    assert held == [("cynthia and what about the sequel?", "rate_limited", "mention_cooldown")]
    # Every line the bot wrote answers a question; none of them is unasked.
    assert result.bot_lines == 6 == len(result.replies)
    assert {d.trigger_type for d in result.replies} == {"mention"}
    assert final_share(result) == 6 / (31 + 6)


async def test_a_busy_room_keeps_the_bot_under_its_share(tmp_path: Path) -> None:
    """A line every 3 s for two hours, every other one inviting a reply; only the share holds
    the bot back (the rate limits and the other loop caps are loose here). The first minutes
    are small talk: a room is busy once it has more than a quiet room's lines."""
    users = [f"user{i}" for i in range(10)]
    lines = []
    for i in range(2400):
        if i < WARM_UP_LINES:
            text = f"hello everyone, line {i}"
        elif i % 4 == 0:
            text = f"cynthia, line {i}: what do you think?"
        elif i % 4 == 1:
            text = f"this movie, line {i}, is a classic"
        else:
            text = f"just chatting, line {i}"
        lines.append(Line(i * 3, users[i % 10], text))
    path = write(tmp_path / "busy.txt", lines)
    busy = settings(
        rate_limits=LOOSE_LIMITS,
        spam={**LOOSE_SPAM, "max_chat_share": SHARE},
    )

    result = await replay_transcript(path, busy, ReplayOptions())

    assert result.malformed == 0 and result.errors == 0
    assert len(result.decisions) == 1200 - WARM_UP_LINES // 2
    held = {d.reason_key for d in result.decisions if not d.replied}
    assert held == {"chat_share"}
    assert len(result.replies) >= 100, "the bot still takes its share"
    assert final_share(result) < SHARE
    shares = shares_at_replies(lines, result)
    assert len(shares) == result.bot_lines
    assert max(shares) < SHARE, max(shares)
