"""Rate limiter: decides whether the bot may reply now, and says why not.

Everything is per room (`ChannelKey`: domain and channel): a bot in two channels has two
independent sets of "global" limits, even when both channels have the same name.
Within a channel it applies, all at once:

- global: at most `global_max_per_minute` and `global_max_per_hour` replies, and
  `global_cooldown_seconds` of silence after each reply;
- per user (case-insensitive name): at most `user_max_per_hour` replies to that user and
  `user_cooldown_seconds` between them; mentions also have `mention_cooldown_seconds`;
- per trigger: the trigger's own `cooldown_seconds` and `max_responses_per_hour`, passed in on
  each call (mentions pass None: no per-trigger limits).

Users at or above `admin_min_rank` get cooldowns times `admin_cooldown_multiplier` and limits
times `admin_limit_multiplier` (a positive limit never drops below 1). A limit of 0 blocks.

Interface (a `Turn` carries the room, user, rank, trigger and the trigger's own limits)::

    limiter = RateLimiter(settings.rate_limits, clock=time.monotonic)
    decision = limiter.check(turn)
    if decision.allowed:
        ...send (or, in dry run, pretend to)...
        limiter.record(turn)

`check` never mutates, so it can be asked as often as wanted; `record` is the only thing that
spends budget and is called when a reply is sent *or would be sent in dry run*, so a dry run
predicts a live run exactly. When several limits block, the decision names the one that frees
last (the real wait), e.g. reason `user_cooldown`, detail "... allowed again in 42.0 s".

Memory is bounded: history older than an hour is trimmed, entries whose windows have all passed
are pruned (amortised: a full sweep at most every `PRUNE_INTERVAL_SECONDS` of clock time or
every half-table of writes), and tracked users are capped (`max_tracked_users`, LRU eviction).
`BoundedStateMap` is the reusable piece; `spam.py` uses it too.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kryten_llm.config import RateLimitSettings
from kryten_llm.types import ChannelKey, Turn

MINUTE_SECONDS = 60.0
HOUR_SECONDS = 3600.0
PRUNE_INTERVAL_SECONDS = 60.0
PRUNE_MIN_WRITES = 256
MAX_EVENTS_PER_KEY = 5_000
"""History kept per key; a limit above this many replies per hour is effectively no limit."""
MAX_TRACKED_CHANNELS = 1_000
MAX_TRACKED_TRIGGERS = 10_000
MAX_KEY_CHARS = 64
"""Names are cut to this for keys: CyTube names are at most 20 characters, and a hostile
multi-kilobyte "name" must not multiply the memory each tracked entry costs."""

Clock = Callable[[], float]
K = TypeVar("K")
V = TypeVar("V")

# Machine-readable reasons, in the order they are reported when two waits are equal.
REASON_OK = "ok"
REASON_GLOBAL_COOLDOWN = "global_cooldown"
REASON_GLOBAL_PER_MINUTE = "global_per_minute"
REASON_GLOBAL_PER_HOUR = "global_per_hour"
REASON_USER_COOLDOWN = "user_cooldown"
REASON_USER_PER_HOUR = "user_per_hour"
REASON_MENTION_COOLDOWN = "mention_cooldown"
REASON_TRIGGER_COOLDOWN = "trigger_cooldown"
REASON_TRIGGER_PER_HOUR = "trigger_per_hour"


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer to "may the bot reply now?".

    `retry_after_seconds` is how long until this reply would be allowed, or None when a limit
    of 0 blocks it until the configuration changes.
    """

    allowed: bool
    reason: str
    detail: str
    retry_after_seconds: float | None = 0.0


class BoundedStateMap(Generic[K, V]):
    """An LRU map with a hard size cap and amortised pruning of expired entries.

    Why: per-user state keyed by untrusted names must not grow with the number of distinct
    names ever seen. `touch` keeps recently written entries at the end; the cap evicts from
    the front; `maybe_prune` sweeps out entries `is_expired` says are dead, at a cost that is
    O(1) amortised per write (a full sweep after len/2 writes, or once per interval).
    """

    def __init__(self, max_entries: int, is_expired: Callable[[V, float], bool]) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._max_entries = max_entries
        self._is_expired = is_expired
        self._writes_since_prune = 0
        self._last_prune: float | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """Read without changing LRU order (reads must not keep an entry alive)."""
        return self._entries.get(key)

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(list(self._entries.items()))

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def touch(self, key: K, factory: Callable[[], V]) -> V:
        """Get or create `key`, mark it most recent, and evict the least recent past the cap."""
        value = self._entries.get(key)
        if value is None:
            value = factory()
            self._entries[key] = value
        else:
            self._entries.move_to_end(key)
        self._writes_since_prune += 1
        self._evict_over_cap()
        return value

    def set_max_entries(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._evict_over_cap()

    def _evict_over_cap(self) -> None:
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def maybe_prune(self, now: float) -> int:
        """Prune if enough writes or clock time have passed since the last sweep."""
        due_by_writes = self._writes_since_prune >= max(PRUNE_MIN_WRITES, len(self._entries) // 2)
        due_by_time = self._last_prune is None or now - self._last_prune >= PRUNE_INTERVAL_SECONDS
        return self.prune(now) if due_by_writes or due_by_time else 0

    def prune(self, now: float) -> int:
        """Drop every expired entry now; returns how many went."""
        dead = [k for k, v in self._entries.items() if self._is_expired(v, now)]
        for key in dead:
            del self._entries[key]
        self._writes_since_prune = 0
        self._last_prune = now
        return len(dead)


@dataclass(slots=True)
class _History:
    """Reply times for one key within the last hour (oldest first) and the last reply time."""

    times: deque[float] = field(default_factory=deque)
    last: float = -math.inf
    last_mention: float = -math.inf
    cooldown_seconds: float = 0.0
    """For triggers: the cooldown in force at the last reply, so pruning knows the horizon."""

    def add(self, now: float) -> None:
        self.times.append(now)
        self.last = now
        self.trim(now)

    def trim(self, now: float) -> None:
        while self.times and (
            self.times[0] <= now - HOUR_SECONDS or len(self.times) > MAX_EVENTS_PER_KEY
        ):
            self.times.popleft()


@dataclass(slots=True)
class _Last:
    at: float = -math.inf


class OncePerCooldown:
    """Something a user gets at most once per cooldown in a room: the outage fallback line.

    `take` asks and spends in one step (the caller is about to do it), so two replies failing
    at once for one user cannot both get it. Bounded like the limiter: entries older than the
    cooldown are pruned, and at most `max_tracked_users` (room, user) pairs are kept (LRU).
    """

    def __init__(
        self,
        cooldown_seconds: float,
        clock: Clock = time.monotonic,
        max_tracked_users: int = 10_000,
    ) -> None:
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._last: BoundedStateMap[tuple[ChannelKey, str], _Last] = BoundedStateMap(
            max_tracked_users, lambda last, now: now - last.at >= self.cooldown_seconds
        )

    def take(self, channel: ChannelKey, username: str) -> float | None:
        """None (and the cooldown starts now) if the user may have it; else the seconds left."""
        now = self._clock()
        key = (channel, username.lower()[:MAX_KEY_CHARS])
        last = self._last.get(key)
        if last is not None and now - last.at < self.cooldown_seconds:
            return last.at + self.cooldown_seconds - now
        self._last.touch(key, _Last).at = now
        self._last.maybe_prune(now)
        return None

    def __len__(self) -> int:
        return len(self._last)


@dataclass(frozen=True, slots=True)
class _Block:
    reason: str
    wait_seconds: float
    detail: str


def _scaled_limit(limit: int, multiplier: float) -> int:
    """A limit for a privileged user; a positive limit never rounds down to 0."""
    if limit <= 0:
        return 0
    return max(1, math.floor(limit * multiplier))


def _cooldown_block(
    reason: str, what: str, last: float, cooldown: float, now: float
) -> _Block | None:
    remaining = last + cooldown - now
    if remaining <= 0:
        return None
    return _Block(
        reason, remaining, f"{what} cooldown {cooldown:g} s: allowed again in {remaining:.1f} s"
    )


def _window_block(
    reason: str, what: str, times: deque[float], limit: int, window: float, now: float
) -> _Block | None:
    """Block if `limit` replies already happened in the last `window` seconds."""
    in_window = [t for t in times if t > now - window]
    if len(in_window) < limit:
        return None
    if limit <= 0:
        return _Block(reason, math.inf, f"{what} limit is 0: disabled by configuration")
    # The reply that must age out before one more fits.
    freeing = in_window[len(in_window) - limit]
    remaining = freeing + window - now
    return _Block(
        reason,
        remaining,
        f"{what} limit {limit} per {window:g} s reached ({len(in_window)} sent): allowed again "
        f"in {remaining:.1f} s",
    )


@dataclass(frozen=True, slots=True)
class _Scale:
    """Multipliers for this user's rank (1.0 for ordinary users)."""

    cooldown: float
    limit: float


def _trigger_blocks(
    trig: _History,
    name: str,
    cooldown_seconds: float | None,
    max_per_hour: int | None,
    scale: _Scale,
    now: float,
) -> list[_Block | None]:
    """A trigger's own limits; None means the trigger has none of that kind (mentions)."""
    what = f"trigger {name!r}"
    blocks: list[_Block | None] = []
    if cooldown_seconds is not None:
        cooldown = cooldown_seconds * scale.cooldown
        blocks.append(_cooldown_block(REASON_TRIGGER_COOLDOWN, what, trig.last, cooldown, now))
    if max_per_hour is not None:
        limit = _scaled_limit(max_per_hour, scale.limit)
        blocks.append(
            _window_block(REASON_TRIGGER_PER_HOUR, what, trig.times, limit, HOUR_SECONDS, now)
        )
    return blocks


class RateLimiter:
    """Per-channel, per-user and per-trigger reply budgets (see the module docstring)."""

    def __init__(self, settings: RateLimitSettings, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._channels: BoundedStateMap[ChannelKey, _History] = BoundedStateMap(
            MAX_TRACKED_CHANNELS, self._channel_expired
        )
        self._users: BoundedStateMap[tuple[ChannelKey, str], _History] = BoundedStateMap(
            settings.max_tracked_users, self._user_expired
        )
        self._triggers: BoundedStateMap[tuple[ChannelKey, str, str], _History] = BoundedStateMap(
            MAX_TRACKED_TRIGGERS, self._trigger_expired
        )

    @property
    def settings(self) -> RateLimitSettings:
        return self._settings

    def reconfigure(self, settings: RateLimitSettings) -> None:
        """Apply new limits on hot reload; history is kept, so budgets already spent stay spent."""
        self._settings = settings
        self._users.set_max_entries(settings.max_tracked_users)

    # --- deciding ---------------------------------------------------------------------------

    def check(self, turn: Turn) -> RateDecision:
        """May the bot reply to this trigger now? Pure: changes nothing."""
        now = self._clock()
        s = self._settings
        privileged = turn.rank >= s.admin_min_rank
        scale = _Scale(
            cooldown=s.admin_cooldown_multiplier if privileged else 1.0,
            limit=s.admin_limit_multiplier if privileged else 1.0,
        )
        # A key never seen behaves like an empty history: no cooldown, nothing spent.
        chan = self._channels.get(turn.key) or _History()
        user = self._users.get(self._user_key(turn)) or _History()
        trig = self._triggers.get(self._trigger_key(turn))
        blocks = [
            *self._global_blocks(chan, scale, now),
            *self._user_blocks(user, turn.trigger.kind == "mention", scale, now),
            *_trigger_blocks(
                trig or _History(),
                turn.trigger.name,
                turn.cooldown_seconds,
                turn.max_per_hour,
                scale,
                now,
            ),
        ]
        return self._decide([b for b in blocks if b is not None])

    def _global_blocks(self, chan: _History, scale: _Scale, now: float) -> list[_Block | None]:
        s = self._settings
        per_minute = _scaled_limit(s.global_max_per_minute, scale.limit)
        per_hour = _scaled_limit(s.global_max_per_hour, scale.limit)
        cooldown = s.global_cooldown_seconds * scale.cooldown
        return [
            _cooldown_block(REASON_GLOBAL_COOLDOWN, "global", chan.last, cooldown, now),
            _window_block(
                REASON_GLOBAL_PER_MINUTE, "global", chan.times, per_minute, MINUTE_SECONDS, now
            ),
            _window_block(
                REASON_GLOBAL_PER_HOUR, "global", chan.times, per_hour, HOUR_SECONDS, now
            ),
        ]

    def _user_blocks(
        self, user: _History, is_mention: bool, scale: _Scale, now: float
    ) -> list[_Block | None]:
        s = self._settings
        per_hour = _scaled_limit(s.user_max_per_hour, scale.limit)
        cooldown = s.user_cooldown_seconds * scale.cooldown
        blocks = [
            _cooldown_block(REASON_USER_COOLDOWN, "user", user.last, cooldown, now),
            _window_block(REASON_USER_PER_HOUR, "user", user.times, per_hour, HOUR_SECONDS, now),
        ]
        if is_mention:
            mention_cooldown = s.mention_cooldown_seconds * scale.cooldown
            blocks.append(
                _cooldown_block(
                    REASON_MENTION_COOLDOWN, "mention", user.last_mention, mention_cooldown, now
                )
            )
        return blocks

    @staticmethod
    def _decide(blocks: list[_Block]) -> RateDecision:
        if not blocks:
            return RateDecision(True, REASON_OK, "within every limit")
        # max() keeps the first of equal waits, so the list order breaks ties.
        worst = max(blocks, key=lambda b: b.wait_seconds)
        retry = None if math.isinf(worst.wait_seconds) else round(worst.wait_seconds, 3)
        return RateDecision(False, worst.reason, worst.detail, retry)

    # --- spending ---------------------------------------------------------------------------

    def record(self, turn: Turn) -> None:
        """Spend budget for a reply that was sent (or would be, in dry run).

        Takes the same turn as `check`; its rank and hourly cap do not change what is recorded.
        """
        now = self._clock()
        self._channels.touch(turn.key, _History).add(now)
        user = self._users.touch(self._user_key(turn), _History)
        user.add(now)
        if turn.trigger.kind == "mention":
            user.last_mention = now
        trig = self._triggers.touch(self._trigger_key(turn), _History)
        trig.add(now)
        trig.cooldown_seconds = turn.cooldown_seconds or 0.0
        for table in (self._channels, self._users, self._triggers):
            table.maybe_prune(now)

    # --- housekeeping -----------------------------------------------------------------------

    def prune(self) -> int:
        """Drop every entry whose windows have all passed; returns how many went."""
        now = self._clock()
        return self._channels.prune(now) + self._users.prune(now) + self._triggers.prune(now)

    def tracked(self) -> dict[str, int]:
        """How many channels, users and triggers are remembered (for tests and health)."""
        return {
            "channels": len(self._channels),
            "users": len(self._users),
            "triggers": len(self._triggers),
        }

    def stats(self) -> dict[str, Any]:
        """Saturation per channel for health: replies in the last minute/hour vs the limits.

        Prunes first, so a periodic health call keeps memory tidy even when nobody talks.
        Saturation is replies / limit (1.0 = budget spent; a limit of 0 counts as saturated).
        """
        self.prune()
        now = self._clock()
        s = self._settings
        channels: dict[str, dict[str, float]] = {}
        for key, hist in self._channels.items():
            minute = sum(1 for t in hist.times if t > now - MINUTE_SECONDS)
            hour = sum(1 for t in hist.times if t > now - HOUR_SECONDS)
            channels[str(key)] = {
                "replies_last_minute": minute,
                "replies_last_hour": hour,
                "minute_saturation": _saturation(minute, s.global_max_per_minute),
                "hour_saturation": _saturation(hour, s.global_max_per_hour),
            }
        return {
            "channels": channels,
            "max_hour_saturation": max(
                (c["hour_saturation"] for c in channels.values()), default=0.0
            ),
            "tracked": self.tracked(),
        }

    # --- keys and expiry --------------------------------------------------------------------

    @staticmethod
    def _user_key(turn: Turn) -> tuple[ChannelKey, str]:
        return (turn.key, turn.username.lower()[:MAX_KEY_CHARS])

    @staticmethod
    def _trigger_key(turn: Turn) -> tuple[ChannelKey, str, str]:
        return (turn.key, turn.trigger.kind, turn.trigger.name.lower()[:MAX_KEY_CHARS])

    def _channel_expired(self, hist: _History, now: float) -> bool:
        return now - hist.last >= max(HOUR_SECONDS, self._settings.global_cooldown_seconds)

    def _user_expired(self, hist: _History, now: float) -> bool:
        s = self._settings
        horizon = max(HOUR_SECONDS, s.user_cooldown_seconds, s.mention_cooldown_seconds)
        return now - hist.last >= horizon

    def _trigger_expired(self, hist: _History, now: float) -> bool:
        return now - hist.last >= max(HOUR_SECONDS, hist.cooldown_seconds)


def _saturation(used: int, limit: int) -> float:
    if limit <= 0:
        return 1.0
    return round(min(used / limit, 1.0), 4)
