"""Per-user usage limits: requests per minute, hour and day, and tokens per day.

One user's requests are counted wherever they come from (a mention, a chat command, an API
call), by name lower-cased, across rooms, so a user cannot spread a burst over channels or
paths. Moderators (rank at least `rate_limits.admin_min_rank`) get every limit multiplied by
`rate_limits.admin_limit_multiplier`, as the other limits do.

Usage events fire at 80, 90 and 100 % of each limit, once per crossing: when a request or a
reply's tokens move a count from below a mark to at or above it. A sliding window that
empties and fills again crosses again, and says so again.

Pure: no I/O; the clock is injectable. Bounded: at most `max_tracked_users` users (least
recently active go first), each with at most one hour of request times.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kryten_llm.config import RateLimitSettings, UserLimitSettings
from kryten_llm.decide.limits import BoundedStateMap

THRESHOLDS_PERCENT = (80, 90, 100)
MINUTE_SECONDS = 60.0
HOUR_SECONDS = 3600.0
DAY_SECONDS = 86_400

LIMITS = ("requests_per_minute", "requests_per_hour", "requests_per_day", "tokens_per_day")


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """A user's use of one limit crossed a mark (80, 90 or 100 %)."""

    user: str
    limit: str
    percent: int
    used: int
    allowed: int

    def to_dict(self) -> dict[str, object]:
        return {
            "user": self.user,
            "limit": self.limit,
            "percent": self.percent,
            "used": self.used,
            "allowed": self.allowed,
        }


@dataclass
class _User:
    times: deque[float] = field(default_factory=deque)
    """Request times of the last hour, oldest first."""
    day: int = 0
    requests_today: int = 0
    tokens_today: int = 0


class UserQuota:
    """Counts and limits one process's users (see the module docstring)."""

    def __init__(
        self,
        settings: UserLimitSettings,
        ranks: RateLimitSettings,
        *,
        on_event: Callable[[UsageEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ranks = ranks
        self.on_event = on_event
        self._clock = clock
        self._users: BoundedStateMap[str, _User] = BoundedStateMap(
            settings.max_tracked_users, lambda entry, now: False
        )
        """Most recently active last; the cap evicts the least recently active (nothing
        expires by itself: an entry's old times and past days are dropped when it is read)."""

    def reconfigure(self, settings: UserLimitSettings, ranks: RateLimitSettings) -> None:
        self.settings, self.ranks = settings, ranks
        self._users.set_max_entries(settings.max_tracked_users)

    def limits(self, rank: float) -> dict[str, int]:
        """Each limit for a user of this rank (0: off)."""
        factor = self.ranks.admin_limit_multiplier if rank >= self.ranks.admin_min_rank else 1.0
        s = self.settings
        raw = {
            "requests_per_minute": s.requests_per_minute,
            "requests_per_hour": s.requests_per_hour,
            "requests_per_day": s.requests_per_day,
            "tokens_per_day": s.tokens_per_day,
        }
        return {name: int(value * factor) for name, value in raw.items()}

    def used(self, user: str) -> dict[str, int]:
        """What `user` has used of each limit now."""
        entry = self._fresh(user, touch=False)
        if entry is None:
            return dict.fromkeys(LIMITS, 0)
        now = self._clock()
        return {
            "requests_per_minute": sum(1 for t in entry.times if now - t < MINUTE_SECONDS),
            "requests_per_hour": len(entry.times),
            "requests_per_day": entry.requests_today,
            "tokens_per_day": entry.tokens_today,
        }

    def refusal(self, user: str, rank: float) -> str | None:
        """Which limit a new request of `user` would break (None: it may go ahead). Pure."""
        used, limits = self.used(user), self.limits(rank)
        for name in LIMITS:
            if limits[name] and used[name] >= limits[name]:
                return f"user {name.replace('_', ' ')}: {used[name]}/{limits[name]}"
        return None

    def take(self, user: str, rank: float) -> None:
        """Count one request of `user` (after `refusal` said it may go ahead)."""
        before = self.used(user)
        entry = self._fresh(user, touch=True)
        assert entry is not None
        entry.times.append(self._clock())
        entry.requests_today += 1
        self._crossed(user, rank, before, self.used(user))

    def add_tokens(self, user: str, tokens: int, rank: float = 0.0) -> None:
        """Count a reply's tokens against the user who asked."""
        if tokens <= 0:
            return
        before = self.used(user)
        entry = self._fresh(user, touch=True)
        assert entry is not None
        entry.tokens_today += tokens
        self._crossed(user, rank, before, self.used(user))

    def report(self, user: str, rank: float) -> dict[str, dict[str, int | None]]:
        """Each limit: used, allowed (None: off), remaining; for the API's `usage`."""
        used, limits = self.used(user), self.limits(rank)
        return {
            name: {
                "used": used[name],
                "limit": limits[name] or None,
                "remaining": max(0, limits[name] - used[name]) if limits[name] else None,
            }
            for name in LIMITS
        }

    # --- internals ---

    def _fresh(self, user: str, touch: bool) -> _User | None:
        """The user's entry with old request times dropped and a new day reset."""
        key = user.lower()
        entry = self._users.touch(key, _User) if touch else self._users.get(key)
        if entry is None:
            return None
        now = self._clock()
        while entry.times and now - entry.times[0] >= HOUR_SECONDS:
            entry.times.popleft()
        day = int(now // DAY_SECONDS)
        if entry.day != day:
            entry.day, entry.requests_today, entry.tokens_today = day, 0, 0
        return entry

    def _crossed(
        self, user: str, rank: float, before: dict[str, int], after: dict[str, int]
    ) -> None:
        if self.on_event is None:
            return
        limits = self.limits(rank)
        for name in LIMITS:
            allowed = limits[name]
            if not allowed:
                continue
            for percent in THRESHOLDS_PERCENT:
                mark = allowed * percent / 100
                if before[name] < mark <= after[name]:
                    self.on_event(UsageEvent(user, name, percent, after[name], allowed))
