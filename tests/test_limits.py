"""RateLimiter: every limit, its reason and wait, per-channel scope, rank scaling, bounded state."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kryten_llm.config import RateLimitSettings
from kryten_llm.decide.limits import OncePerCooldown, RateLimiter
from kryten_llm.types import ChannelKey, ChatLine, Trigger, TriggerKind, Turn


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Everything off except what a test switches on, so each test sees exactly one limit.
LOOSE: dict[str, Any] = {
    "global_max_per_minute": 100_000,
    "global_max_per_hour": 100_000,
    "global_cooldown_seconds": 0,
    "user_max_per_hour": 1000,
    "user_cooldown_seconds": 0,
    "mention_cooldown_seconds": 0,
}


def make(**overrides: Any) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(RateLimitSettings(**{**LOOSE, **overrides}), clock=clock), clock


def turn(
    user: str = "alice",
    channel: str = "lounge",
    rank: float = 0,
    kind: TriggerKind = "trigger_word",
    name: str = "movies",
    cooldown: float | None = None,
    per_hour: int | None = None,
    domain: str = "cytu.be",
) -> Turn:
    """A triggered line from `user` in `domain/channel`, as the pipeline hands it to the limiter."""
    line = ChatLine(channel, domain, user, f"hey {name}", 0)
    return Turn(line, Trigger(kind, name, line.text), rank, cooldown, per_hour)


def word(
    limiter: RateLimiter,
    user: str = "alice",
    channel: str = "lounge",
    rank: float = 0,
    name: str = "movies",
    cooldown: float | None = None,
    per_hour: int | None = None,
    do_record: bool = False,
) -> Any:
    asked = turn(user, channel, rank, "trigger_word", name, cooldown, per_hour)
    decision = limiter.check(asked)
    if do_record and decision.allowed:
        limiter.record(asked)
    return decision


def mention(
    limiter: RateLimiter,
    user: str = "alice",
    channel: str = "lounge",
    rank: float = 0,
    domain: str = "cytu.be",
) -> Any:
    return limiter.check(turn(user, channel, rank, "mention", "mention", domain=domain))


def reply_mention(
    limiter: RateLimiter, user: str = "alice", channel: str = "lounge", domain: str = "cytu.be"
) -> None:
    limiter.record(turn(user, channel, 0, "mention", "mention", domain=domain))


def test_first_reply_is_allowed_with_ok_reason() -> None:
    limiter, _ = make()
    decision = mention(limiter)
    assert decision.allowed
    assert decision.reason == "ok"


def test_global_cooldown_blocks_everyone_with_seconds_remaining() -> None:
    limiter, clock = make(global_cooldown_seconds=15)
    reply_mention(limiter, "alice")
    clock.advance(5)
    decision = mention(limiter, "bob")
    assert not decision.allowed
    assert decision.reason == "global_cooldown"
    assert decision.retry_after_seconds == pytest.approx(10)
    assert "10.0 s" in decision.detail
    clock.advance(10)
    assert mention(limiter, "bob").allowed


def test_global_per_minute_limit_frees_when_the_oldest_reply_ages_out() -> None:
    limiter, clock = make(global_max_per_minute=2)
    reply_mention(limiter, "a")
    clock.advance(10)
    reply_mention(limiter, "b")
    clock.advance(10)
    decision = mention(limiter, "c")
    assert (decision.allowed, decision.reason) == (False, "global_per_minute")
    assert decision.retry_after_seconds == pytest.approx(40)
    clock.advance(40)
    assert mention(limiter, "c").allowed


def test_global_per_hour_limit() -> None:
    limiter, clock = make(global_max_per_hour=3)
    for user in "abc":
        reply_mention(limiter, user)
        clock.advance(100)
    decision = mention(limiter, "d")
    assert (decision.allowed, decision.reason) == (False, "global_per_hour")
    assert decision.retry_after_seconds == pytest.approx(3600 - 300)
    clock.advance(3300)
    assert mention(limiter, "d").allowed


def test_user_cooldown_applies_to_that_user_only() -> None:
    limiter, clock = make(user_cooldown_seconds=60)
    word(limiter, "alice", do_record=True)
    clock.advance(20)
    blocked = word(limiter, "alice")
    assert (blocked.allowed, blocked.reason) == (False, "user_cooldown")
    assert blocked.retry_after_seconds == pytest.approx(40)
    assert word(limiter, "bob").allowed


def test_user_per_hour_limit() -> None:
    limiter, clock = make(user_max_per_hour=2)
    word(limiter, "alice", do_record=True)
    clock.advance(1000)
    word(limiter, "alice", do_record=True)
    clock.advance(1000)
    decision = word(limiter, "alice")
    assert (decision.allowed, decision.reason) == (False, "user_per_hour")
    assert decision.retry_after_seconds == pytest.approx(1600)
    assert word(limiter, "bob").allowed


def test_mention_cooldown_only_holds_back_mentions() -> None:
    limiter, clock = make(mention_cooldown_seconds=120)
    reply_mention(limiter, "alice")
    clock.advance(30)
    decision = mention(limiter, "alice")
    assert (decision.allowed, decision.reason) == (False, "mention_cooldown")
    assert decision.retry_after_seconds == pytest.approx(90)
    assert word(limiter, "alice").allowed, "a trigger word is not a mention"
    assert mention(limiter, "bob").allowed, "the mention cooldown is per user"


def test_trigger_cooldown_and_hourly_limit_are_per_trigger() -> None:
    limiter, clock = make()
    word(limiter, "a", name="movies", cooldown=300, per_hour=2, do_record=True)
    clock.advance(100)
    blocked = word(limiter, "b", name="movies", cooldown=300, per_hour=2)
    assert (blocked.allowed, blocked.reason) == (False, "trigger_cooldown")
    assert blocked.retry_after_seconds == pytest.approx(200)
    assert word(limiter, "b", name="kungfu", cooldown=300, per_hour=2).allowed
    clock.advance(200)
    word(limiter, "b", name="movies", cooldown=300, per_hour=2, do_record=True)
    clock.advance(300)
    capped = word(limiter, "c", name="movies", cooldown=300, per_hour=2)
    assert (capped.allowed, capped.reason) == (False, "trigger_per_hour")


def test_the_reported_reason_is_the_limit_that_frees_last() -> None:
    limiter, clock = make(global_cooldown_seconds=10, user_cooldown_seconds=60)
    word(limiter, "alice", do_record=True)
    clock.advance(1)
    decision = word(limiter, "alice")
    assert decision.reason == "user_cooldown"
    assert decision.retry_after_seconds == pytest.approx(59)


def test_channels_are_independent_and_names_case_insensitive() -> None:
    limiter, _ = make(global_cooldown_seconds=15, user_cooldown_seconds=60)
    reply_mention(limiter, "Alice", channel="Lounge")
    assert not mention(limiter, "bob", channel="lounge").allowed, "channel names ignore case"
    assert mention(limiter, "bob", channel="other").allowed, "another channel has its own budget"
    assert mention(limiter, "ALICE", channel="other").reason == "ok"
    same_name_elsewhere = mention(limiter, "ALICE", channel="lounge", domain="other.example")
    assert same_name_elsewhere.reason == "ok", "the same name on another server is another room"
    limiter2, _ = make(user_cooldown_seconds=60)
    reply_mention(limiter2, "Alice")
    assert mention(limiter2, "aLiCe").reason == "user_cooldown"


def test_moderators_get_scaled_cooldowns_and_limits() -> None:
    limiter, clock = make(
        user_cooldown_seconds=60,
        user_max_per_hour=2,
        admin_min_rank=2,
        admin_cooldown_multiplier=0.5,
        admin_limit_multiplier=2.0,
    )
    for user, rank in (("mod", 2), ("owner", 3.0), ("helper", 1.5)):
        word(limiter, user, rank=rank, do_record=True)
    clock.advance(31)
    assert word(limiter, "mod", rank=2).allowed, "half of 60 s has passed"
    assert word(limiter, "owner", rank=3).allowed
    assert word(limiter, "helper", rank=1.5).reason == "user_cooldown", "1.5 is below 2"
    for _ in range(3):
        word(limiter, "mod", rank=2, do_record=True)
        clock.advance(31)
    assert word(limiter, "mod", rank=2).reason == "user_per_hour", "doubled limit is 4"
    assert word(limiter, "mod", rank=0).reason == "user_per_hour"


def test_scaled_limit_never_rounds_a_positive_limit_to_zero() -> None:
    limiter, _ = make(user_max_per_hour=1, admin_limit_multiplier=1.4)
    assert word(limiter, "mod", rank=5).allowed


def test_limit_zero_blocks_with_no_retry_time() -> None:
    limiter, _ = make(global_max_per_hour=0)
    decision = mention(limiter)
    assert (decision.allowed, decision.reason) == (False, "global_per_hour")
    assert decision.retry_after_seconds is None
    assert "disabled" in decision.detail
    muted_trigger = word(limiter, name="muted", per_hour=0)
    assert not muted_trigger.allowed


def test_check_never_mutates() -> None:
    limiter, _ = make(global_max_per_minute=1, global_cooldown_seconds=100)
    for i in range(50):
        assert mention(limiter, f"user{i}").allowed
    assert limiter.tracked() == {"channels": 0, "users": 0, "triggers": 0}


def test_dry_run_and_live_record_identically() -> None:
    """The limiter has no dry-run notion: the same calls give the same decisions."""
    runs = []
    for _ in range(2):
        limiter, clock = make(global_cooldown_seconds=15, user_max_per_hour=2)
        decisions = []
        for step in range(20):
            d = word(limiter, f"u{step % 3}", do_record=True)
            decisions.append((d.allowed, d.reason))
            clock.advance(7)
        runs.append(decisions)
    assert runs[0] == runs[1]


def test_reconfigure_keeps_spent_budget() -> None:
    limiter, _ = make()
    for user in "abc":
        reply_mention(limiter, user)
    limiter.reconfigure(RateLimitSettings(**{**LOOSE, "global_max_per_hour": 3}))
    assert mention(limiter, "d").reason == "global_per_hour"
    limiter.reconfigure(RateLimitSettings(**{**LOOSE, "global_max_per_hour": 4}))
    assert mention(limiter, "d").allowed


def test_stats_report_saturation_per_channel() -> None:
    limiter, clock = make(global_max_per_hour=4, global_max_per_minute=10)
    reply_mention(limiter, "a", channel="one")
    reply_mention(limiter, "b", channel="one")
    reply_mention(limiter, "c", channel="two")
    stats = limiter.stats()
    assert stats["channels"]["cytu.be/one"]["hour_saturation"] == pytest.approx(0.5)
    assert stats["channels"]["cytu.be/two"]["replies_last_hour"] == 1
    assert stats["max_hour_saturation"] == pytest.approx(0.5)
    clock.advance(3601)
    assert limiter.stats()["channels"] == {}, "stats prunes expired channels"


@pytest.mark.slow
def test_hundred_thousand_users_do_not_stay_tracked_after_their_windows() -> None:
    limiter, clock = make(max_tracked_users=1_000_000, user_cooldown_seconds=60)
    for i in range(100_000):
        limiter.record(turn(f"user{i}", kind="mention", name="mention"))
        if i % 1000 == 0:
            clock.advance(1)
    assert limiter.tracked()["users"] > 1000, "still inside their windows: remembered"
    clock.advance(3601)
    limiter.record(turn("latecomer", kind="mention", name="mention"))
    assert limiter.tracked()["users"] == 1, "amortised pruning ran on the next write"
    assert limiter.tracked()["channels"] == 1


def test_tracked_users_are_capped_least_recent_first() -> None:
    limiter, _ = make(max_tracked_users=100, user_cooldown_seconds=60)
    for i in range(1000):
        limiter.record(turn(f"user{i}", kind="trigger_word", name="t"))
    assert limiter.tracked()["users"] == 100
    assert word(limiter, "user999").reason == "user_cooldown", "the most recent is kept"
    assert word(limiter, "user0").allowed, "the least recent was evicted"
    limiter.reconfigure(RateLimitSettings(**{**LOOSE, "max_tracked_users": 10}))
    assert limiter.tracked()["users"] == 10


@pytest.mark.parametrize(
    "username", ["", " ", "x" * 100_000, "Ωmega\u202e", "<script>", "a\x00b", "/clear"]
)
def test_hostile_usernames_are_just_keys(username: str) -> None:
    limiter, _ = make(user_cooldown_seconds=60)
    limiter.record(turn(username, kind="mention", name="mention"))
    assert word(limiter, username).reason == "user_cooldown"


def test_nan_rank_is_treated_as_ordinary_user() -> None:
    limiter, clock = make(user_cooldown_seconds=60)
    word(limiter, "alice", do_record=True)
    clock.advance(31)
    assert word(limiter, "alice", rank=float("nan")).reason == "user_cooldown"


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.floats(0, 40)),
        min_size=1,
        max_size=200,
    )
)
def test_recording_only_allowed_replies_never_breaks_a_limit(
    steps: list[tuple[str, float]],
) -> None:
    limiter, clock = make(
        global_max_per_minute=3,
        global_max_per_hour=20,
        global_cooldown_seconds=5,
        user_cooldown_seconds=30,
        user_max_per_hour=4,
    )
    sent: list[tuple[float, str]] = []
    for user, gap in steps:
        clock.advance(gap)
        if word(limiter, user, do_record=True).allowed:
            sent.append((clock.now, user))
    for i, (t, user) in enumerate(sent):
        earlier = sent[:i]
        assert all(t - e >= 5 for e, _ in earlier)
        assert sum(1 for e, _ in earlier if t - e < 60) < 3
        assert sum(1 for e, _ in earlier if t - e < 3600) < 20
        mine = [e for e, u in earlier if u == user]
        assert all(t - e >= 30 for e in mine)
        assert sum(1 for e in mine if t - e < 3600) < 4


# --- once per cooldown (the outage fallback line) ----------------------------------------------


def test_once_per_cooldown_per_user_and_room() -> None:
    clock = FakeClock()
    once = OncePerCooldown(600, clock)
    lounge, other = ChannelKey("cytu.be", "lounge"), ChannelKey("example.net", "lounge")
    assert once.take(lounge, "Alice") is None
    assert once.take(lounge, "ALICE") == 600, "names compare case-insensitively"
    assert once.take(lounge, "bob") is None
    assert once.take(other, "alice") is None, "the same name in another room is another user"
    clock.advance(599)
    assert once.take(lounge, "alice") == pytest.approx(1)
    clock.advance(1)
    assert once.take(lounge, "alice") is None
    once.cooldown_seconds = 0  # a reload switched the cooldown off
    assert once.take(lounge, "alice") is None


def test_once_per_cooldown_forgets_old_and_caps_the_rest() -> None:
    clock = FakeClock()
    once = OncePerCooldown(60, clock, max_tracked_users=10)
    lounge = ChannelKey("cytu.be", "lounge")
    for i in range(1000):
        once.take(lounge, f"user{i}" + "x" * 10_000)
    assert len(once) == 10
    clock.advance(61)
    for i in range(300):
        once.take(lounge, f"late{i}")
    assert len(once) <= 10
