"""Per-user usage limits (`decide/quota.py`): counting, moderators, marks crossed once."""

from __future__ import annotations

from kryten_llm.config import RateLimitSettings, UserLimitSettings
from kryten_llm.decide.quota import UsageEvent, UserQuota


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def quota(
    events: list[UsageEvent] | None = None, clock: Clock | None = None, **limits: int
) -> UserQuota:
    settings = UserLimitSettings(
        **{
            "requests_per_minute": 0,
            "requests_per_hour": 0,
            "requests_per_day": 0,
            "tokens_per_day": 0,
            **limits,
        }
    )
    sink = events.append if events is not None else None
    return UserQuota(settings, RateLimitSettings(), on_event=sink, clock=clock or Clock())


def test_requests_per_minute_refuse_then_the_window_slides() -> None:
    clock = Clock()
    q = quota(clock=clock, requests_per_minute=2)
    for _ in range(2):
        assert q.refusal("Alice", 0) is None
        q.take("Alice", 0)
    assert q.refusal("alice", 0) == "user requests per minute: 2/2"  # names ignore case
    assert q.refusal("Bob", 0) is None
    clock.now += 60
    assert q.refusal("Alice", 0) is None


def test_hour_and_day_limits_and_the_utc_day_resets_them() -> None:
    clock = Clock()
    q = quota(clock=clock, requests_per_hour=3, requests_per_day=4)
    for _ in range(3):
        q.take("A", 0)
        clock.now += 61
    assert q.refusal("A", 0) == "user requests per hour: 3/3"
    clock.now += 3600
    q.take("A", 0)
    assert q.refusal("A", 0) == "user requests per day: 4/4"
    clock.now += 86_400
    assert q.refusal("A", 0) is None


def test_moderators_get_the_limit_multiplier() -> None:
    q = quota(requests_per_minute=2)
    for _ in range(3):
        q.take("Mod", 2.0)
    assert q.refusal("Mod", 2.0) is None  # 2 x admin_limit_multiplier (2.0) = 4
    q.take("Mod", 2.0)
    assert q.refusal("Mod", 2.0) is not None


def test_tokens_per_day() -> None:
    q = quota(tokens_per_day=100)
    q.add_tokens("A", 60)
    assert q.refusal("A", 0) is None
    q.add_tokens("A", 60)
    assert q.refusal("A", 0) == "user tokens per day: 120/100"
    assert q.report("A", 0)["tokens_per_day"] == {"used": 120, "limit": 100, "remaining": 0}


def test_each_mark_is_reported_once_per_crossing() -> None:
    events: list[UsageEvent] = []
    q = quota(events, requests_per_day=10, tokens_per_day=1000)
    for _ in range(12):
        if q.refusal("A", 0) is None:
            q.take("A", 0)
    marks = [(e.limit, e.percent, e.used) for e in events]
    assert marks == [
        ("requests_per_day", 80, 8),
        ("requests_per_day", 90, 9),
        ("requests_per_day", 100, 10),
    ]
    q.add_tokens("A", 950)  # one jump over two marks: both said, once each
    q.add_tokens("A", 10)
    assert [(e.limit, e.percent) for e in events[3:]] == [
        ("tokens_per_day", 80),
        ("tokens_per_day", 90),
    ]


def test_users_are_bounded() -> None:
    q = quota(requests_per_minute=1, max_tracked_users=10)
    for n in range(50):
        q.take(f"user{n}", 0)
    assert len(q._users) == 10
