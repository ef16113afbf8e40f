"""Spam and bot-loop protection: who is held back, and when the bot itself must go quiet.

Two questions, per room (`ChannelKey`: domain and channel, so same-named channels on two
servers never share counters):

1. *Is this user spamming?* `observe(...)` sees every chat line from a user and returns a
   `SpamVerdict`. Three offences: the same message repeated (more than `repeat_max_identical`
   identical lines in `repeat_window_seconds`, compared case- and whitespace-insensitively),
   flooding (more than `flood_max_messages` in `flood_window_seconds`), and rapid mentions (more
   than `mention_max` in `mention_window_seconds`). An offence starts a penalty of
   `penalty_initial_seconds * penalty_multiplier ** (level - 1)`, at most `penalty_max_seconds`;
   every quiet `penalty_decay_seconds` after a penalty ends forgives one level. While penalised,
   every line gets `is_spam=True, reason="penalty"`: the pipeline holds the user's triggers back
   with outcome `spam`. Users at or above `admin_min_rank` are exempt. Lines from
   `other_bots` get reason `other_bot`; the pipeline should drop those silently before anything
   else (`is_other_bot`), the verdict is a backstop.

2. *May the bot reply now without looping or dominating?* `check_reply(...)` (pure) and
   `record_reply(...)` (when a reply is sent, or would be in dry run) enforce:
   - at most `max_replies_per_window` replies per `reply_window_seconds` (reason `reply_window`);
   - at most `max_consecutive_replies_to_user` replies in a row to one user (reason
     `consecutive_replies`). The streak ends when the bot replies to someone else, when
     `streak_reset_lines` lines from *other* users have been chatted since the bot's last reply,
     or after `streak_reset_seconds` without a reply. So two bots, or a user and the bot, cannot
     ping-pong forever: someone else has to speak, or everyone waits.
   - chat share (reason `chat_share`): the bot's lines stay under `max_chat_share` of the recent
     chat, measured over the last `chat_share_window_lines` lines no older than
     `chat_share_window_seconds`, and judged as the share *after* the reply (its first line
     counted, the oldest line out if the window is full) must stay under the cap. This holds
     in every room, quiet or busy, with one exception: in a *quiet* room (fewer than
     `chat_share_min_sample_lines` lines from people in the window) a direct mention is
     answered whatever the share, under the usual cooldowns. So an unsolicited trigger-word
     reply needs more than `1 / max_chat_share - 1` recent lines (20 or more at 5 %), a quiet
     room hears the bot only when someone asks it something, and in a busy room the share
     holds for mentions too. A share of 1 switches the cap off.

   Counting: call `note_chat_line(channel, username, is_bot)` for every chat line (users, the
   bot's own echoes with `is_bot=True`, other bots). Users' lines count toward the window and
   end streaks. The bot's own lines are counted by `record_reply(channel, user, parts)` instead
   (`parts` = chat lines in the reply), so a reply counts at once, before its echo arrives, and a
   dry run (which sends nothing) predicts a live run exactly; echoes are therefore not counted
   again. Other bots' lines are ignored entirely.

Memory is bounded like the rate limiter's: per-user state is pruned once its windows, penalty
and decay have passed, and capped at `max_tracked_users` (LRU).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kryten_llm.config import SpamSettings
from kryten_llm.decide.limits import MAX_KEY_CHARS, MAX_TRACKED_CHANNELS, BoundedStateMap
from kryten_llm.types import ChannelKey

MESSAGE_HISTORY_MAX = 50
"""Lines remembered per user for flood/repeat detection (more than any sane limit needs)."""
REPLY_HISTORY_MAX = 10_000
MAX_PENALTY_LEVEL = 32
"""Levels beyond this cannot lengthen a penalty that is already at its maximum."""
NORMALISED_TEXT_CHARS = 1000

Clock = Callable[[], float]

REASON_OK = "ok"
REASON_OTHER_BOT = "other_bot"
REASON_PENALTY = "penalty"
REASON_REPEATED = "repeated_message"
REASON_MENTION_FLOOD = "mention_flood"
REASON_FLOOD = "flood"
REASON_REPLY_WINDOW = "reply_window"
REASON_CONSECUTIVE = "consecutive_replies"
REASON_CHAT_SHARE = "chat_share"


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    """Whether to hold a user's line back; `penalty_seconds` is the penalty time remaining."""

    is_spam: bool
    reason: str
    penalty_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplyDecision:
    """Whether the bot may reply in this channel now, with a machine reason and a human detail."""

    allowed: bool
    reason: str
    detail: str


NOT_SPAM = SpamVerdict(False, REASON_OK)


@dataclass(slots=True)
class _UserState:
    messages: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=MESSAGE_HISTORY_MAX)
    )
    mentions: deque[float] | None = None
    """Created on a user's first mention: most users never mention the bot, and an empty
    deque per tracked user was most of this guard's memory (docs/BENCHMARKS.md)."""
    last_seen: float = -math.inf
    level: int = 0
    penalty_until: float = -math.inf


@dataclass(slots=True)
class _ChannelState:
    lines: deque[tuple[float, bool]] = field(default_factory=deque)
    """(time, is_bot) for recent chat lines, oldest first: the chat-share window."""
    replies: deque[float] = field(default_factory=deque)
    streak_user: str = ""
    streak_count: int = 0
    streak_last: float = -math.inf
    other_lines_since_reply: int = 0
    last_activity: float = -math.inf


def _normalise(text: str) -> int:
    """A cheap fingerprint: "LOL", " lol" and "lol  " count as the same message."""
    return hash(" ".join(text[:NORMALISED_TEXT_CHARS].casefold().split()))


def _count_since(times: Iterable[float], since: float) -> int:
    return sum(1 for t in times if t > since)


def _longest_window(settings: SpamSettings) -> float:
    return max(
        settings.flood_window_seconds,
        settings.repeat_window_seconds,
        settings.mention_window_seconds,
    )


class SpamGuard:
    """Per-channel spam detection and reply-loop caps (see the module docstring)."""

    def __init__(
        self, settings: SpamSettings, admin_min_rank: float = 2.0, clock: Clock = time.monotonic
    ) -> None:
        self._settings = settings
        self._admin_min_rank = admin_min_rank
        self._clock = clock
        self._other_bots = self._bot_set(settings)
        self._window_seconds = _longest_window(settings)
        """Per-line work uses this; computed once per configuration, not per line."""
        self._users: BoundedStateMap[tuple[ChannelKey, str], _UserState] = BoundedStateMap(
            settings.max_tracked_users, self._user_expired
        )
        self._channels: BoundedStateMap[ChannelKey, _ChannelState] = BoundedStateMap(
            MAX_TRACKED_CHANNELS, self._channel_expired
        )

    @staticmethod
    def _bot_set(settings: SpamSettings) -> frozenset[str]:
        return frozenset(b.strip().lower() for b in settings.other_bots if b.strip())

    def reconfigure(self, settings: SpamSettings, admin_min_rank: float | None = None) -> None:
        """Hot reload: new limits apply at once; histories and penalties are kept."""
        self._settings = settings
        if admin_min_rank is not None:
            self._admin_min_rank = admin_min_rank
        self._other_bots = self._bot_set(settings)
        self._window_seconds = _longest_window(settings)
        self._users.set_max_entries(settings.max_tracked_users)

    def is_other_bot(self, username: str) -> bool:
        """True for names listed in `other_bots` (case-insensitive): never answer them."""
        return username.strip().lower() in self._other_bots

    # --- users ------------------------------------------------------------------------------

    def observe(
        self,
        channel: ChannelKey,
        username: str,
        rank: float,
        text: str,
        is_mention: bool,
        now: float | None = None,
    ) -> SpamVerdict:
        """Judge one chat line from a user (call for every user line, triggering or not)."""
        now = self._clock() if now is None else now
        if self.is_other_bot(username):
            return SpamVerdict(True, REASON_OTHER_BOT)
        if not self._settings.enabled or rank >= self._admin_min_rank:
            return NOT_SPAM
        state = self._users.touch(self._user_key(channel, username), _UserState)
        self._remember(state, text, is_mention, now)
        self._users.maybe_prune(now)
        if now < state.penalty_until:
            return SpamVerdict(True, REASON_PENALTY, round(state.penalty_until - now, 3))
        offence = self._offence(state, text, is_mention, now)
        if offence is None:
            return NOT_SPAM
        return SpamVerdict(True, offence, self._penalise(state, now))

    def _remember(self, state: _UserState, text: str, is_mention: bool, now: float) -> None:
        state.messages.append((now, _normalise(text)))
        if is_mention:
            if state.mentions is None:
                state.mentions = deque(maxlen=MESSAGE_HISTORY_MAX)
            state.mentions.append(now)
        state.last_seen = now
        horizon = now - self._longest_window()
        while state.messages and state.messages[0][0] <= horizon:
            state.messages.popleft()
        while state.mentions and state.mentions[0] <= horizon:
            state.mentions.popleft()

    def _offence(self, state: _UserState, text: str, is_mention: bool, now: float) -> str | None:
        s = self._settings
        fingerprint = _normalise(text)
        repeats = sum(
            1 for t, h in state.messages if h == fingerprint and t > now - s.repeat_window_seconds
        )
        if repeats > s.repeat_max_identical:
            return REASON_REPEATED
        mentions = state.mentions or ()
        if is_mention and _count_since(mentions, now - s.mention_window_seconds) > s.mention_max:
            return REASON_MENTION_FLOOD
        recent = sum(1 for t, _ in state.messages if t > now - s.flood_window_seconds)
        if recent > s.flood_max_messages:
            return REASON_FLOOD
        return None

    def _penalise(self, state: _UserState, now: float) -> float:
        """Start a penalty one level up from the (decayed) current level; returns its length."""
        s = self._settings
        if state.level and math.isfinite(state.penalty_until):
            forgiven = int((now - state.penalty_until) // s.penalty_decay_seconds)
            state.level = max(0, state.level - max(0, forgiven))
        state.level = min(state.level + 1, MAX_PENALTY_LEVEL)
        length = min(
            s.penalty_max_seconds,
            s.penalty_initial_seconds * s.penalty_multiplier ** (state.level - 1),
        )
        state.penalty_until = now + length
        return length

    def penalty_remaining(
        self, channel: ChannelKey, username: str, now: float | None = None
    ) -> float:
        """Seconds left on a user's penalty (0 if none). Does not change anything."""
        now = self._clock() if now is None else now
        state = self._users.get(self._user_key(channel, username))
        return max(0.0, state.penalty_until - now) if state is not None else 0.0

    # --- the bot's own replies --------------------------------------------------------------

    def note_chat_line(
        self, channel: ChannelKey, username: str, is_bot: bool, now: float | None = None
    ) -> None:
        """See one chat line of any kind (see "Counting" in the module docstring)."""
        if is_bot or self.is_other_bot(username):
            return
        now = self._clock() if now is None else now
        state = self._channels.touch(channel, _ChannelState)
        state.lines.append((now, False))
        state.last_activity = now
        if username.lower()[:MAX_KEY_CHARS] != state.streak_user:
            state.other_lines_since_reply += 1
        self._trim_channel(state, now)
        self._channels.maybe_prune(now)

    def check_reply(
        self,
        channel: ChannelKey,
        username: str,
        now: float | None = None,
        *,
        solicited: bool = True,
    ) -> ReplyDecision:
        """May the bot answer `username` in `channel` now? Pure: changes nothing.

        `solicited` is true for a direct mention (the user asked the bot), false for an
        unsolicited trigger-word reply: only a mention may speak in a quiet room whatever the
        share (see "chat share" in the module docstring).
        """
        now = self._clock() if now is None else now
        state = self._channels.get(channel) or _ChannelState()
        for check in (self._reply_window_block, self._streak_block):
            blocked = check(state, username, now)
            if blocked is not None:
                return blocked
        blocked = self._share_block(state, now, solicited)
        if blocked is not None:
            return blocked
        return ReplyDecision(True, REASON_OK, "within reply caps and chat share")

    def record_reply(
        self, channel: ChannelKey, username: str, parts: int = 1, now: float | None = None
    ) -> None:
        """Count a reply (sent, or would be in dry run) of `parts` chat lines to `username`."""
        now = self._clock() if now is None else now
        state = self._channels.touch(channel, _ChannelState)
        user = username.lower()[:MAX_KEY_CHARS]
        state.replies.append(now)
        if user == state.streak_user and self._streak_alive(state, now):
            state.streak_count += 1
        else:
            state.streak_user, state.streak_count = user, 1
        state.streak_last = now
        state.other_lines_since_reply = 0
        state.lines.extend((now, True) for _ in range(max(1, min(parts, 100))))
        state.last_activity = now
        self._trim_channel(state, now)
        self._channels.maybe_prune(now)

    def note_extra_bot_lines(
        self, channel: ChannelKey, lines: int, now: float | None = None
    ) -> None:
        """Count further chat lines of a reply already recorded with `record_reply`.

        The pipeline records a reply when it decides to speak (so a burst cannot slip past the
        caps) and only learns after formatting how many chat lines it became.
        """
        if lines <= 0:
            return
        now = self._clock() if now is None else now
        state = self._channels.touch(channel, _ChannelState)
        state.lines.extend((now, True) for _ in range(min(lines, 100)))
        self._trim_channel(state, now)

    def _streak_alive(self, state: _ChannelState, now: float) -> bool:
        s = self._settings
        return (
            state.streak_count > 0
            and now - state.streak_last < s.streak_reset_seconds
            and state.other_lines_since_reply < s.streak_reset_lines
        )

    def _reply_window_block(
        self, state: _ChannelState, username: str, now: float
    ) -> ReplyDecision | None:
        s = self._settings
        recent = [t for t in state.replies if t > now - s.reply_window_seconds]
        if len(recent) < s.max_replies_per_window:
            return None
        wait = (
            recent[len(recent) - s.max_replies_per_window] + s.reply_window_seconds - now
            if s.max_replies_per_window
            else math.inf
        )
        return ReplyDecision(
            False,
            REASON_REPLY_WINDOW,
            f"{len(recent)} replies in the last {s.reply_window_seconds:g} s (limit "
            f"{s.max_replies_per_window}): allowed again in {wait:.1f} s",
        )

    def _streak_block(
        self, state: _ChannelState, username: str, now: float
    ) -> ReplyDecision | None:
        s = self._settings
        same_user = username.lower()[:MAX_KEY_CHARS] == state.streak_user
        if not (same_user and self._streak_alive(state, now)):
            return None
        if state.streak_count < s.max_consecutive_replies_to_user:
            return None
        needed = s.streak_reset_lines - state.other_lines_since_reply
        quiet = state.streak_last + s.streak_reset_seconds - now
        return ReplyDecision(
            False,
            REASON_CONSECUTIVE,
            f"{state.streak_count} replies in a row to this user: waiting for {needed} line(s) "
            f"from others or {quiet:.1f} s",
        )

    def _share_block(
        self, state: _ChannelState, now: float, solicited: bool
    ) -> ReplyDecision | None:
        """The share the bot would have with this reply's first line, against the cap.

        Judged after the reply, not before it, so the cap holds: a bot at 4.9 % cannot reply
        its way past 5 %, and a bot with no lines cannot speak unasked into a room too quiet
        for one line to stay under the share.
        """
        s = self._settings
        if s.max_chat_share >= 1.0:
            return None
        window = [is_bot for t, is_bot in state.lines if t > now - s.chat_share_window_seconds]
        quiet = len(window) - sum(window) < s.chat_share_min_sample_lines
        if solicited and quiet:
            return None  # someone asked the bot in a quiet room: the cooldowns pace it
        # The window as it would be with the reply: one more bot line, the oldest out if full.
        after = [*window, True][-s.chat_share_window_lines :]
        total, bot = len(after), sum(after)
        share = bot / total
        if share < s.max_chat_share:
            return None
        room = "a quiet room, unasked" if quiet else "recent chat"
        return ReplyDecision(
            False,
            REASON_CHAT_SHARE,
            f"a reply would make the bot {bot} of the last {total} lines of {room} "
            f"({share:.0%}; limit {s.max_chat_share:.0%})",
        )

    def _trim_channel(self, state: _ChannelState, now: float) -> None:
        s = self._settings
        while state.lines and (
            len(state.lines) > s.chat_share_window_lines
            or state.lines[0][0] <= now - s.chat_share_window_seconds
        ):
            state.lines.popleft()
        while state.replies and (
            len(state.replies) > REPLY_HISTORY_MAX
            or state.replies[0] <= now - s.reply_window_seconds
        ):
            state.replies.popleft()

    # --- housekeeping -----------------------------------------------------------------------

    def prune(self, now: float | None = None) -> int:
        """Drop every user and channel whose windows, penalties and decay have all passed."""
        now = self._clock() if now is None else now
        return self._users.prune(now) + self._channels.prune(now)

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """For health: chat share and recent replies per channel, penalised users (prunes)."""
        now = self._clock() if now is None else now
        self.prune(now)
        channels: dict[str, dict[str, float]] = {}
        for key, state in self._channels.items():
            self._trim_channel(state, now)
            total = len(state.lines)
            bot = sum(1 for _, is_bot in state.lines if is_bot)
            channels[str(key)] = {
                "lines_in_window": total,
                "bot_lines_in_window": bot,
                "chat_share": round(bot / total, 4) if total else 0.0,
                "replies_in_window": len(state.replies),
            }
        penalised = sum(1 for _, u in self._users.items() if u.penalty_until > now)
        return {
            "channels": channels,
            "penalised_users": penalised,
            "tracked_users": len(self._users),
        }

    def tracked(self) -> dict[str, int]:
        return {"users": len(self._users), "channels": len(self._channels)}

    def _longest_window(self) -> float:
        return self._window_seconds

    def _user_expired(self, state: _UserState, now: float) -> bool:
        s = self._settings
        if now - state.last_seen < self._longest_window():
            return False
        if now < state.penalty_until:
            return False
        return state.level == 0 or now >= state.penalty_until + state.level * (
            s.penalty_decay_seconds
        )

    def _channel_expired(self, state: _ChannelState, now: float) -> bool:
        s = self._settings
        horizon = max(s.chat_share_window_seconds, s.reply_window_seconds, s.streak_reset_seconds)
        return now - state.last_activity >= horizon

    @staticmethod
    def _user_key(channel: ChannelKey, username: str) -> tuple[ChannelKey, str]:
        return (channel, username.lower()[:MAX_KEY_CHARS])
