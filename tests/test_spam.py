"""SpamGuard: spam detection with backoff, other bots, reply loops, chat share, bounded state."""

from __future__ import annotations

from typing import Any

import pytest

from kryten_llm.config import SpamSettings
from kryten_llm.decide.spam import SpamGuard
from kryten_llm.types import ChannelKey

LOUNGE = ChannelKey("cytu.be", "lounge")


class FakeClock:
    def __init__(self, start: float = 5000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**overrides: Any) -> tuple[SpamGuard, FakeClock]:
    clock = FakeClock()
    return SpamGuard(SpamSettings(**overrides), admin_min_rank=2, clock=clock), clock


def say(
    guard: SpamGuard,
    text: str,
    user: str = "alice",
    rank: float = 0,
    mention: bool = False,
    channel: str = "lounge",
    domain: str = "cytu.be",
) -> Any:
    return guard.observe(ChannelKey(domain, channel), user, rank, text, mention)


# --- spam ------------------------------------------------------------------------------------


def test_ordinary_chat_is_not_spam() -> None:
    guard, clock = make()
    for i in range(20):
        verdict = say(guard, f"a different thought number {i}")
        assert (verdict.is_spam, verdict.reason) == (False, "ok")
        clock.advance(3)


def test_repeated_message_is_spam_ignoring_case_and_spacing() -> None:
    guard, clock = make(repeat_max_identical=2, repeat_window_seconds=60)
    assert not say(guard, "buy gold").is_spam
    clock.advance(5)
    assert not say(guard, "BUY   gold ").is_spam
    clock.advance(5)
    verdict = say(guard, "Buy Gold")
    assert (verdict.is_spam, verdict.reason) == (True, "repeated_message")
    assert verdict.penalty_seconds == pytest.approx(30)


def test_repeats_spread_beyond_the_window_are_fine() -> None:
    guard, clock = make(repeat_max_identical=2, repeat_window_seconds=60)
    for _ in range(6):
        assert not say(guard, "good morning").is_spam
        clock.advance(31)


def test_flood_of_different_messages_is_spam() -> None:
    guard, clock = make(flood_max_messages=6, flood_window_seconds=10)
    results = []
    for i in range(7):
        results.append(say(guard, f"msg {i}").reason)
        clock.advance(1)
    assert results == ["ok"] * 6 + ["flood"]


def test_rapid_mentions_are_spam() -> None:
    guard, clock = make(mention_max=3, mention_window_seconds=30)
    reasons = []
    for i in range(4):
        reasons.append(say(guard, f"bot question {i}", mention=True).reason)
        clock.advance(5)
    assert reasons == ["ok", "ok", "ok", "mention_flood"]


def test_penalty_holds_every_line_then_expires() -> None:
    guard, clock = make(repeat_max_identical=1)
    say(guard, "spam")
    assert say(guard, "spam").reason == "repeated_message"
    clock.advance(10)
    held = say(guard, "an innocent line")
    assert (held.is_spam, held.reason) == (True, "penalty")
    assert held.penalty_seconds == pytest.approx(20)
    assert guard.penalty_remaining(LOUNGE, "ALICE") == pytest.approx(20)
    clock.advance(20)
    assert not say(guard, "back to normal").is_spam
    assert guard.penalty_remaining(LOUNGE, "alice") == 0


def test_penalties_back_off_exponentially_to_the_maximum() -> None:
    guard, clock = make(
        repeat_max_identical=1,
        repeat_window_seconds=3600,
        penalty_initial_seconds=10,
        penalty_multiplier=3,
        penalty_max_seconds=200,
        penalty_decay_seconds=10_000,
    )
    lengths = []
    for _ in range(5):
        verdict = say(guard, "again")
        while verdict.reason == "ok":
            verdict = say(guard, "again")
        lengths.append(verdict.penalty_seconds)
        clock.advance(verdict.penalty_seconds)
    assert lengths == [10, 30, 90, 200, 200]


def test_penalty_level_decays_after_quiet_periods() -> None:
    guard, clock = make(
        repeat_max_identical=1,
        penalty_initial_seconds=10,
        penalty_multiplier=2,
        penalty_decay_seconds=100,
    )
    say(guard, "x")
    assert say(guard, "x").penalty_seconds == 10  # level 1
    clock.advance(10)
    say(guard, "y")
    assert say(guard, "y").penalty_seconds == 20  # level 2
    clock.advance(20 + 100)  # one quiet decay period: back to level 1
    say(guard, "z")
    assert say(guard, "z").penalty_seconds == 20  # level 1 + 1
    clock.advance(20 + 250)  # two full periods: level 0
    say(guard, "w")
    assert say(guard, "w").penalty_seconds == 10


def test_moderators_are_exempt() -> None:
    guard, _ = make(repeat_max_identical=1, flood_max_messages=1)
    for _ in range(10):
        assert not say(guard, "same", user="mod", rank=2).is_spam
    assert guard.tracked()["users"] == 0


def test_spam_is_per_channel_and_user() -> None:
    guard, _ = make(repeat_max_identical=1)
    say(guard, "hi", channel="one")
    assert say(guard, "hi", channel="one").is_spam
    assert not say(guard, "hi", channel="two").is_spam
    assert not say(guard, "hi", user="bob", channel="one").is_spam
    assert not say(guard, "hi", channel="ONE", domain="other.example").is_spam, "another server"
    assert say(guard, "hi", channel="ONE").is_spam, "channel names ignore case"


def test_disabled_detects_nothing_but_still_knows_other_bots() -> None:
    guard, _ = make(enabled=False, repeat_max_identical=1, other_bots=["OtherBot"])
    for _ in range(5):
        assert not say(guard, "same").is_spam
    assert say(guard, "hello", user="otherbot").reason == "other_bot"


def test_other_bots_are_recognised_case_insensitively() -> None:
    guard, _ = make(other_bots=["ChatBot9000", " ", "Jarvis "])
    assert guard.is_other_bot("chatbot9000")
    assert guard.is_other_bot("JARVIS")
    assert not guard.is_other_bot("")
    verdict = say(guard, "beep", user="ChatBot9000")
    assert (verdict.is_spam, verdict.reason) == (True, "other_bot")


@pytest.mark.parametrize("text", ["", " " * 10_000, "x" * 1_000_000, "\x00\ud800", "/clear"])
def test_hostile_text_is_judged_without_error(text: str) -> None:
    guard, _ = make(repeat_max_identical=1)
    assert not say(guard, text).is_spam
    assert say(guard, text).reason == "repeated_message"


# --- reply loops -----------------------------------------------------------------------------

LOOP_OFF: dict[str, Any] = {"max_chat_share": 1.0, "max_replies_per_window": 10_000}


def test_reply_window_caps_replies_per_channel() -> None:
    guard, clock = make(**{**LOOP_OFF, "max_replies_per_window": 3, "reply_window_seconds": 300})
    for user in ("a", "b", "c"):
        assert guard.check_reply(LOUNGE, user).allowed
        guard.record_reply(LOUNGE, user)
        clock.advance(10)
    blocked = guard.check_reply(LOUNGE, "d")
    assert (blocked.allowed, blocked.reason) == (False, "reply_window")
    assert "270.0 s" in blocked.detail
    assert guard.check_reply(ChannelKey("cytu.be", "other"), "d").allowed
    assert guard.check_reply(ChannelKey("other.example", "lounge"), "d").allowed
    clock.advance(270)
    assert guard.check_reply(LOUNGE, "d").allowed


def test_consecutive_replies_to_one_user_are_capped() -> None:
    guard, clock = make(**{**LOOP_OFF, "max_consecutive_replies_to_user": 3})
    for _ in range(3):
        assert guard.check_reply(LOUNGE, "pingbot").allowed
        guard.record_reply(LOUNGE, "pingbot")
        guard.note_chat_line(LOUNGE, "pingbot", is_bot=False)
        clock.advance(5)
    blocked = guard.check_reply(LOUNGE, "PingBot")
    assert (blocked.allowed, blocked.reason) == (False, "consecutive_replies")
    assert guard.check_reply(LOUNGE, "someone_else").allowed


def test_streak_resets_when_the_bot_answers_someone_else() -> None:
    guard, _ = make(**{**LOOP_OFF, "max_consecutive_replies_to_user": 2})
    guard.record_reply(LOUNGE, "alice")
    guard.record_reply(LOUNGE, "alice")
    assert not guard.check_reply(LOUNGE, "alice").allowed
    guard.record_reply(LOUNGE, "bob")
    assert guard.check_reply(LOUNGE, "alice").allowed


def test_streak_resets_after_other_people_chat() -> None:
    guard, _ = make(**{**LOOP_OFF, "max_consecutive_replies_to_user": 2, "streak_reset_lines": 3})
    guard.record_reply(LOUNGE, "alice")
    guard.record_reply(LOUNGE, "alice")
    guard.note_chat_line(LOUNGE, "alice", is_bot=False)  # her own lines do not count
    guard.note_chat_line(LOUNGE, "CynthiaRothbot", is_bot=True)  # nor do the bot's
    guard.note_chat_line(LOUNGE, "bob", is_bot=False)
    guard.note_chat_line(LOUNGE, "carol", is_bot=False)
    assert not guard.check_reply(LOUNGE, "alice").allowed
    guard.note_chat_line(LOUNGE, "dave", is_bot=False)
    assert guard.check_reply(LOUNGE, "alice").allowed


def test_streak_resets_after_a_quiet_period() -> None:
    guard, clock = make(
        **{**LOOP_OFF, "max_consecutive_replies_to_user": 1, "streak_reset_seconds": 300}
    )
    guard.record_reply(LOUNGE, "alice")
    clock.advance(299)
    assert guard.check_reply(LOUNGE, "alice").reason == "consecutive_replies"
    clock.advance(1)
    assert guard.check_reply(LOUNGE, "alice").allowed


def test_two_bots_cannot_ping_pong_forever() -> None:
    """A user bot that always answers: each burst stops at the streak cap, then waits out the
    quiet period, so the exchange is throttled to `max_consecutive` per reset period."""
    guard, clock = make(
        max_consecutive_replies_to_user=4, streak_reset_seconds=300, max_chat_share=1.0
    )
    reply_times: list[float] = []
    for _ in range(100):
        guard.note_chat_line(LOUNGE, "echobot", is_bot=False)
        guard.observe(LOUNGE, "echobot", 0, "reply to the bot", True)
        if guard.check_reply(LOUNGE, "echobot").allowed:
            guard.record_reply(LOUNGE, "echobot")
            reply_times.append(clock.now)
        clock.advance(20)
    assert len(reply_times) == 24, "4 replies per 360 s cycle over 2000 s"
    for t in reply_times:
        assert sum(1 for u in reply_times if t - 300 < u <= t) <= 4


# --- chat share ------------------------------------------------------------------------------


def test_quiet_channel_first_mention_is_answered() -> None:
    guard, _ = make(max_chat_share=0.05, chat_share_min_sample_lines=20)
    guard.note_chat_line(LOUNGE, "alice", is_bot=False)
    assert guard.check_reply(LOUNGE, "alice").allowed


def test_in_a_quiet_room_mentions_are_answered_and_unasked_replies_are_not() -> None:
    guard, _ = make(max_chat_share=0.05, chat_share_min_sample_lines=20)
    for _ in range(5):
        guard.note_chat_line(LOUNGE, "alice", is_bot=False)
    guard.record_reply(LOUNGE, "alice", parts=3)
    assert guard.check_reply(LOUNGE, "bob").allowed, "5 lines from people: a quiet room"
    unasked = guard.check_reply(LOUNGE, "bob", solicited=False)
    assert (unasked.allowed, unasked.reason) == (False, "chat_share")
    assert "4 of the last 9 lines of a quiet room, unasked" in unasked.detail


def test_an_unasked_reply_needs_a_room_where_it_stays_under_the_share() -> None:
    """At 5 %, one line of the bot needs 20 lines from people beside it: (0 + 1) / 21."""
    guard, _ = make(max_chat_share=0.05, chat_share_min_sample_lines=20)
    for i in range(19):
        guard.note_chat_line(LOUNGE, f"user{i}", is_bot=False)
    held = guard.check_reply(LOUNGE, "user1", solicited=False)
    assert (held.allowed, held.reason) == (False, "chat_share"), "1 of 20 is 5 %, not under"
    guard.note_chat_line(LOUNGE, "user19", is_bot=False)
    assert guard.check_reply(LOUNGE, "user1", solicited=False).allowed, "1 of 21 < 5 %"


def test_chat_share_holds_back_a_dominating_bot_until_people_talk() -> None:
    guard, _ = make(
        max_chat_share=0.1, chat_share_min_sample_lines=20, max_consecutive_replies_to_user=100
    )
    for i in range(20):
        guard.note_chat_line(LOUNGE, f"user{i}", is_bot=False)
    guard.record_reply(LOUNGE, "user1", parts=2)  # 2 of 22 lines; one more would be 3 of 23
    for solicited in (True, False):  # a busy room: the share holds for mentions too
        blocked = guard.check_reply(LOUNGE, "user2", solicited=solicited)
        assert (blocked.allowed, blocked.reason) == (False, "chat_share")
        assert "3 of the last 23 lines of recent chat" in blocked.detail
    for i in range(7):
        guard.note_chat_line(LOUNGE, f"later{i}", is_bot=False)
    assert not guard.check_reply(LOUNGE, "user2").allowed, "3 of 30 is 10 %, not under"
    guard.note_chat_line(LOUNGE, "someone", is_bot=False)
    assert guard.check_reply(LOUNGE, "user2").allowed, "3 of 31 < 10 %"


def test_a_share_of_one_switches_the_cap_off() -> None:
    guard, _ = make(max_chat_share=1.0, max_consecutive_replies_to_user=1000)
    guard.record_reply(LOUNGE, "alice", parts=100)
    assert guard.check_reply(LOUNGE, "bob", solicited=False).allowed


def test_bot_echoes_and_other_bots_are_not_counted() -> None:
    guard, _ = make(max_chat_share=0.1, chat_share_min_sample_lines=10, other_bots=["otherbot"])
    for _ in range(50):
        guard.note_chat_line(LOUNGE, "otherbot", is_bot=False)
        guard.note_chat_line(LOUNGE, "CynthiaRothbot", is_bot=True)
    assert guard.stats()["channels"] == {}


def test_chat_share_window_is_bounded_by_lines_and_time() -> None:
    guard, clock = make(
        max_chat_share=0.05, chat_share_window_lines=50, chat_share_window_seconds=600
    )
    guard.record_reply(LOUNGE, "a", parts=3)
    for i in range(60):
        guard.note_chat_line(LOUNGE, f"u{i}", is_bot=False)
    stats = guard.stats()["channels"]["cytu.be/lounge"]
    assert stats["lines_in_window"] == 50
    assert stats["bot_lines_in_window"] == 0, "the bot's lines scrolled out of the window"
    clock.advance(601)
    guard.note_chat_line(LOUNGE, "late", is_bot=False)
    assert guard.stats()["channels"]["cytu.be/lounge"]["lines_in_window"] == 1


def test_dry_run_and_live_count_the_same() -> None:
    """record_reply counts the bot's lines itself, so the echo a live run sees changes nothing."""
    outcomes = []
    for live in (False, True):
        guard, clock = make(max_chat_share=0.2, chat_share_min_sample_lines=10)
        seen = []
        for i in range(60):
            guard.note_chat_line(LOUNGE, f"u{i % 4}", is_bot=False)
            decision = guard.check_reply(LOUNGE, f"u{i % 4}")
            seen.append(decision.reason)
            if decision.allowed:
                guard.record_reply(LOUNGE, f"u{i % 4}", parts=2)
                if live:
                    for _ in range(2):
                        guard.note_chat_line(LOUNGE, "CynthiaRothbot", is_bot=True)
            clock.advance(4)
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert "chat_share" in outcomes[0]


def test_check_reply_is_pure() -> None:
    guard, _ = make()
    for i in range(100):
        assert guard.check_reply(f"ch{i}", "alice").allowed
    assert guard.tracked() == {"users": 0, "channels": 0}


# --- bounds ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_hundred_thousand_users_are_pruned_after_their_windows() -> None:
    guard, clock = make(max_tracked_users=1_000_000)
    for i in range(100_000):
        say(guard, "hello", user=f"user{i}")
        if i % 1000 == 0:
            clock.advance(0.1)
    assert guard.tracked()["users"] > 1000
    clock.advance(61)
    say(guard, "hello", user="latecomer")
    assert guard.tracked()["users"] == 1


def test_penalised_users_are_kept_until_their_level_decays() -> None:
    guard, clock = make(repeat_max_identical=1, penalty_decay_seconds=600)
    say(guard, "x", user="spammer")
    say(guard, "x", user="spammer")
    clock.advance(30 + 61)
    assert guard.prune() == 0, "penalty over, but level 1 still decaying"
    clock.advance(600)
    assert guard.prune() == 1


def test_tracked_users_are_capped() -> None:
    guard, _ = make(max_tracked_users=50)
    for i in range(500):
        say(guard, "hi", user=f"user{i}")
    assert guard.tracked()["users"] == 50
    guard.reconfigure(SpamSettings(max_tracked_users=10), admin_min_rank=3)
    assert guard.tracked()["users"] == 10


def test_reconfigure_applies_new_limits_and_admin_rank() -> None:
    guard, _ = make(repeat_max_identical=5)
    for _ in range(3):
        assert not say(guard, "same", rank=2.5).is_spam
    guard.reconfigure(SpamSettings(repeat_max_identical=1), admin_min_rank=3)
    assert say(guard, "same", rank=2.5).reason == "ok", "exempt lines were not remembered"
    assert say(guard, "same", rank=2.5).reason == "repeated_message"


def test_stats_report_penalties_and_share() -> None:
    guard, _ = make(repeat_max_identical=1)
    say(guard, "x")
    say(guard, "x")
    guard.note_chat_line(LOUNGE, "alice", is_bot=False)
    guard.record_reply(LOUNGE, "alice")
    stats = guard.stats()
    assert stats["penalised_users"] == 1
    assert stats["channels"]["cytu.be/lounge"]["chat_share"] == pytest.approx(0.5)
    assert stats["channels"]["cytu.be/lounge"]["replies_in_window"] == 1
