"""Rank registry: who is a moderator, per channel, learned from the bridge.

CyTube's chatMsg carries no rank, but the rate limiter and spam guard need one (moderators get
shorter cooldowns and are never treated as spammers). Ranks arrive as user-list events (see
docs/PROTOCOL.md §1) and live in the bridge's KV bucket (§4):

- `addUser` `{"name", "rank", ...}`: a user joined (or re-sent);
- `userlist` `[{"name", "rank", ...}, ...]`: the whole list, sent on join: replaces the channel;
- `setUserRank` `{"name", "rank"}`: a promotion or demotion;
- `userLeave` `{"name"}`: the user is forgotten, so memory follows the room, not history;
- KV `kryten_{channel}_userlist` key `users`: the same list, read once at startup.

Interface (`room` is a `ChannelKey`; `channel` a configured `ChannelSettings`)::

    registry = RankRegistry()
    await load_ranks_from_kv(nc, channel, registry, timeout_seconds=5)
    registry.apply_event(room, event_name, payload)   # for every user-list event
    registry.rank_of(room, "Alice")                   # 0.0 if unknown; may be 1.5

Ranks are per room (domain and channel): a moderator of `lounge` on one server is nobody on
another. Names compare case-insensitively, as the room's channel name does. Payloads come off
the bus and are treated as untrusted: anything malformed is logged (at most one warning a
minute) and ignored, entry by entry, never raised. Memory is bounded per channel and in
channels.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from kryten_llm._throttle import ThrottledCount
from kryten_llm.config import ChannelSettings
from kryten_llm.types import ChannelKey

log = logging.getLogger(__name__)

MAX_USERS_PER_CHANNEL = 20_000
MAX_CHANNELS = 1_000
MAX_NAME_CHARS = 64
WARNING_INTERVAL_SECONDS = 60.0
USERLIST_KEY = "users"

Clock = Callable[[], float]


class MalformedPayload(ValueError):
    """A user-list payload that does not have the shape CyTube sends."""


def _parse_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise MalformedPayload(f"bad name {str(value)[:40]!r}")
    return value.strip()


def _parse_rank(value: Any) -> float:
    # bool is an int in Python; a rank of True is not something CyTube sends.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedPayload(f"bad rank {str(value)[:40]!r}")
    rank = float(value)
    if not math.isfinite(rank):
        raise MalformedPayload(f"bad rank {value!r}")
    return rank


def _parse_user(entry: Any) -> tuple[str, float]:
    if not isinstance(entry, dict):
        raise MalformedPayload(f"user entry is {type(entry).__name__}, not an object")
    return _parse_name(entry.get("name")), _parse_rank(entry.get("rank"))


class RankRegistry:
    """Per-room map of lowercased user name to CyTube rank (see the module docstring)."""

    def __init__(
        self, max_users_per_channel: int = MAX_USERS_PER_CHANNEL, clock: Clock = time.monotonic
    ) -> None:
        self._channels: dict[ChannelKey, dict[str, float]] = {}
        self._max_users = max_users_per_channel
        self._problems = ThrottledCount(WARNING_INTERVAL_SECONDS, clock)

    def rank_of(self, channel: ChannelKey, username: str) -> float:
        """The user's rank in this room; 0.0 (guest) when unknown."""
        users = self._channels.get(channel)
        if users is None:
            return 0.0
        return users.get(username.strip().lower(), 0.0)

    def user_count(self, channel: ChannelKey) -> int:
        return len(self._channels.get(channel, {}))

    def forget_channel(self, channel: ChannelKey) -> None:
        self._channels.pop(channel, None)

    def apply_event(self, channel: ChannelKey, event_name: str, payload: Any) -> bool:
        """Apply one bridge event; True if it was a user-list event that was understood.

        Other events are ignored silently; malformed user-list events are logged and ignored.
        """
        handler = self._handlers().get(event_name.lower())
        if handler is None:
            return False
        try:
            handler(channel, payload)
        except MalformedPayload as exc:
            self._warn(f"ignored malformed {event_name} in {channel}: {exc}")
            return False
        return True

    def _handlers(self) -> dict[str, Callable[[ChannelKey, Any], None]]:
        return {
            "adduser": self._on_add_or_rank,
            "setuserrank": self._on_add_or_rank,
            "userleave": self._on_leave,
            "userlist": self._on_userlist,
        }

    def _on_add_or_rank(self, channel: ChannelKey, payload: Any) -> None:
        name, rank = _parse_user(payload)
        self._set(channel, name, rank)

    def _on_leave(self, channel: ChannelKey, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise MalformedPayload(f"payload is {type(payload).__name__}, not an object")
        name = _parse_name(payload.get("name"))
        users = self._channels.get(channel)
        if users is not None:
            users.pop(name.lower(), None)

    def _on_userlist(self, channel: ChannelKey, payload: Any) -> None:
        if not isinstance(payload, list):
            raise MalformedPayload(f"payload is {type(payload).__name__}, not a list")
        self._replace(channel, payload)

    def load_userlist(self, channel: ChannelKey, users: bytes | str | list[Any]) -> int:
        """Replace a channel's ranks from a user list (KV bytes, JSON text or parsed list).

        Returns how many users were loaded; malformed JSON or entries are logged and skipped.
        """
        if isinstance(users, bytes | str):
            try:
                users = json.loads(users)
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                self._warn(f"user list for {channel} is not JSON: {type(exc).__name__}")
                return 0
        if not isinstance(users, list):
            self._warn(f"user list for {channel} is {type(users).__name__}, not a list")
            return 0
        return self._replace(channel, users)

    def _replace(self, channel: ChannelKey, entries: list[Any]) -> int:
        fresh: dict[str, float] = {}
        bad = 0
        for entry in entries:
            try:
                name, rank = _parse_user(entry)
            except MalformedPayload:
                bad += 1
                continue
            fresh[name.lower()] = rank
        if bad:
            self._warn(f"skipped {bad} malformed entr(ies) in the user list for {channel}")
        while len(fresh) > self._max_users:
            fresh.pop(next(iter(fresh)))
        if channel in self._channels or len(self._channels) < MAX_CHANNELS:
            self._channels[channel] = fresh
        else:
            self._warn(f"too many channels tracked; ignoring ranks for {channel}")
            return 0
        return len(fresh)

    def _set(self, channel: ChannelKey, name: str, rank: float) -> None:
        users = self._channels.get(channel)
        if users is None:
            if len(self._channels) >= MAX_CHANNELS:
                self._warn(f"too many channels tracked; ignoring ranks for {channel}")
                return
            users = self._channels.setdefault(channel, {})
        key = name.lower()
        users.pop(key, None)  # re-insert at the end: the oldest arrivals are evicted first
        users[key] = rank
        while len(users) > self._max_users:
            users.pop(next(iter(users)))

    @property
    def malformed(self) -> int:
        """How many payloads or entries were ignored as malformed (for health and tests)."""
        return self._problems.total

    def _warn(self, message: str) -> None:
        """Count every problem; log at most one warning a minute so a bad feed cannot flood."""
        if self._problems.note() is not None:
            log.warning("ranks: %s (%d problem(s) so far)", message, self.malformed)
        else:
            log.debug("ranks: %s", message)


def userlist_bucket(channel: str) -> str:
    """The bridge's KV bucket for a channel's user list (raw channel case, no domain)."""
    return f"kryten_{channel}_userlist"


async def load_ranks_from_kv(
    nc: NatsClient, channel: ChannelSettings, registry: RankRegistry, timeout_seconds: float
) -> int:
    """Seed `registry` from the bridge's KV user list; returns how many users were loaded.

    The bucket is named after the channel alone (the bridge's naming); the ranks go to the
    configured room, domain included.

    Never raises for expected trouble: a missing bucket or key (bridge not running yet, or
    JetStream off) is logged at info; a timeout, bad channel name or NATS error at warning.
    Either way events keep the registry current from then on.
    """
    bucket = userlist_bucket(channel.channel)
    try:
        async with asyncio.timeout(timeout_seconds):
            kv = await nc.jetstream().key_value(bucket)
            entry = await kv.get(USERLIST_KEY)
    except nats.js.errors.BucketNotFoundError:
        log.info("ranks: no KV bucket %s yet; ranks will come from user-list events", bucket)
        return 0
    except nats.js.errors.KeyNotFoundError:
        log.info("ranks: KV bucket %s has no %r key yet", bucket, USERLIST_KEY)
        return 0
    except nats.js.errors.InvalidBucketNameError:
        log.warning(
            "ranks: channel %r cannot name a KV bucket; skipping the KV load", channel.channel
        )
        return 0
    except TimeoutError:
        log.warning("ranks: reading KV bucket %s timed out after %.1f s", bucket, timeout_seconds)
        return 0
    except nats.errors.Error as exc:
        log.warning("ranks: reading KV bucket %s failed: %s", bucket, type(exc).__name__)
        return 0
    if not entry.value:
        return 0
    loaded = registry.load_userlist(channel.key, entry.value)
    log.info("ranks: loaded %d user(s) for %s from KV", loaded, channel.key)
    return loaded
