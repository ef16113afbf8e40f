"""Value types that flow one way through the pipeline: event -> decision -> prompt -> reply -> log.

They are plain frozen dataclasses so every stage can be tested without NATS or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TriggerKind = Literal["mention", "trigger_word"]


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One chat message from the bridge, already cleaned (entities unescaped, markup removed)."""

    channel: str
    domain: str
    username: str
    text: str
    time_ms: int
    shadow: bool = False
    add_class: str = ""
    correlation_id: str = ""
    received_monotonic: float = 0.0


@dataclass(frozen=True, slots=True)
class MediaChange:
    """The video that just started playing in a channel (titles are untrusted text)."""

    channel: str
    domain: str
    title: str
    media_type: str = ""
    media_id: str = ""
    duration_seconds: int = 0


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
