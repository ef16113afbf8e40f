"""Value types that flow one way through the pipeline: event -> decision -> prompt -> reply -> log.

They are plain frozen dataclasses so every stage can be tested without NATS or HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

TriggerKind = Literal["mention", "trigger_word", "command"]
"""`command`: a chat command (`!chat help`), answered without the LLM (`decide/commands.py`)."""

HoldOutcome = Literal["spam", "paused", "rate_limited", "loop_protection", "budget"]
"""Why a triggered line was held back before the LLM was asked (one per gate, see pipeline)."""
Outcome = Literal[
    "sent",
    "dry_run",
    HoldOutcome,
    "dropped",
    "llm_failed",
    "fallback",
    "invalid",
    "guard_blocked",
    "cancelled",
    "command",
    "command_refused",
    "opted_out",
]
"""What became of a triggered line: the JSONL record's `outcome`, and nothing else.

`sent` / `dry_run` (would have been sent): replied. The `HoldOutcome`s: held back by a gate.
`dropped`: the reply queue was full. `llm_failed`: every provider failed. `fallback`: every
provider failed, and the direct mention got the configured fallback line instead of silence
(`dry_run` in the record says whether it was posted). `invalid`: the validator refused the
reply (and any regeneration). `guard_blocked`: the output guard refused it. `cancelled`:
shutdown cut the reply off. `command`: a chat command was carried out and answered (`reason`
names it); `command_refused`: the sender may not use it (disabled, rank), told so.
`opted_out`: the sender opted out, so nothing is answered and their words are not kept (the
record's `message` is left empty).
"""


class _RoomFields(NamedTuple):
    domain: str
    channel: str


class ChannelKey(_RoomFields):
    """One room: a CyTube server (domain) and a channel on it, as per-channel state is keyed.

    The config allows the same channel name on two servers, and those are two rooms: limits,
    history, pause, budgets, pacing and every other per-channel map is keyed by this, never by
    the name alone. It is normalised once, here, the way the bridge matches commands: the
    domain exactly, the channel case-insensitively (`Lounge` and `lounge` are one room).

    A tuple rather than a dataclass: every chat line looks it up in a dozen maps, and a
    tuple of two strings hashes and compares in C (a frozen dataclass's generated `__hash__`
    cost more per line than the rest of the key's work together).
    """

    __slots__ = ()

    def __new__(cls, domain: str, channel: str) -> ChannelKey:
        return super().__new__(cls, domain, channel.lower())

    def __str__(self) -> str:
        return f"{self.domain}/{self.channel}"


def channels_named(name: str, keys: Iterable[ChannelKey]) -> list[ChannelKey]:
    """The configured rooms an operator means by `name`: `domain/channel`, or a bare channel.

    A bare channel name matches that channel on every domain it is configured on, so a caller
    that needs one room must refuse more than one match (CyTube names contain no `/`).
    """
    domain, slash, channel = name.strip().rpartition("/")
    if slash:
        return [key for key in keys if key == ChannelKey(domain, channel)]
    # The key this name would have on each configured domain, so it is normalised as keys are.
    return [key for key in keys if key == ChannelKey(key.domain, channel)]


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One chat message from the bridge, already cleaned (entities unescaped, markup removed).

    `channel` and `domain` are as the bridge sent them (replies go back with them); `key` is
    the room they name, for every per-channel lookup.
    """

    channel: str
    domain: str
    username: str
    text: str
    time_ms: int
    shadow: bool = False
    add_class: str = ""
    correlation_id: str = ""
    received_monotonic: float = 0.0
    key: ChannelKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ChannelKey(self.domain, self.channel))


@dataclass(frozen=True, slots=True)
class MediaChange:
    """The video that just started playing in a channel (titles are untrusted text)."""

    channel: str
    domain: str
    title: str
    media_type: str = ""
    media_id: str = ""
    duration_seconds: int = 0
    key: ChannelKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ChannelKey(self.domain, self.channel))


@dataclass(frozen=True, slots=True)
class Trigger:
    """Why the bot considers answering: a direct mention or a configured trigger word."""

    kind: TriggerKind
    name: str
    message: str
    """The text the LLM should see: for mentions, with the bot's name removed."""
    context: str = ""
    response_style: str | None = None
    provider: str | None = None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Turn:
    """A triggered line on its way to an answer: everything a gate may weigh (see pipeline).

    Built once per triggered line, so every gate checks and spends the same facts.
    """

    line: ChatLine
    trigger: Trigger
    rank: float = 0.0
    """The sender's CyTube rank in this room (0 when unknown)."""
    cooldown_seconds: float | None = None
    """The trigger word's own cooldown; None when it has none (mentions)."""
    max_per_hour: int | None = None
    """The trigger word's own hourly cap; None when it has none (mentions)."""
    spam: str = ""
    """Why the spam guard judged this line spam when it was heard; empty if it did not."""

    @property
    def key(self) -> ChannelKey:
        return self.line.key

    @property
    def username(self) -> str:
        return self.line.username


@dataclass(frozen=True, slots=True)
class Remembered:
    """A memory chat asked the bot to keep, as the prompt shows it: untrusted text, quoted."""

    id: str
    author: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of an LLM conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """What every provider is asked: a system prompt and a short conversation."""

    system: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call to one provider, as the JSONL log records it."""

    provider: str
    outcome: str
    """`ok`, an HTTP status such as `http_500`, or an error class such as `timeout`."""
    latency_ms: float


@dataclass(frozen=True, slots=True)
class LLMResult:
    """A successful completion and what it cost to get it."""

    text: str
    provider: str
    model: str
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    anomalies: tuple[str, ...] = ()
    """What the provider reported that could not be used as sent (e.g. a token count of 400
    digits, clamped), or what failed while accounting for the reply; for the JSONL record."""
