"""Configuration: pydantic models for every section, loaded from JSON with env overrides.

Precedence, highest first: ``KRYTEN_LLM_<SECTION>_<FIELD>`` environment variables, then the
JSON file, then the defaults embedded here. The defaults alone are a runnable configuration
(a local NATS server, one channel, an Ollama-style local model), so ``kryten-llm demo`` and a
first ``kryten-llm`` need no file at all.

Secrets never live in plain ``str`` fields: API keys and NATS credentials are ``SecretStr`` and
the validation report redacts anything whose field name looks secret.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "KRYTEN_LLM_"


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, so typos are reported, not ignored."""

    model_config = ConfigDict(extra="forbid")


class NatsSettings(Section):
    """How to reach the NATS server the Kryten bridge publishes on."""

    url: str = "nats://127.0.0.1:4222"
    servers: list[str] = Field(
        default_factory=list, description="Extra servers for a cluster; `url` is always first."
    )
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    connect_timeout_seconds: Annotated[int, Field(ge=1, le=120)] = 10

    def server_list(self) -> list[str]:
        return [self.url, *[s for s in self.servers if s != self.url]]


class ChannelSettings(Section):
    """One CyTube channel: where replies go and which name is the bot's own."""

    domain: Annotated[str, Field(min_length=1)] = "cytu.be"
    channel: Annotated[str, Field(min_length=1)] = "lounge"
    username: Annotated[str, Field(min_length=1)] = "CynthiaRothbot"

    @field_validator("domain", "channel", "username")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class PersonalitySettings(Section):
    """Who the bot is. The system prompt is built from this unless a file replaces it."""

    character_name: Annotated[str, Field(min_length=1)] = "CynthiaRothbot"
    character_description: str = (
        "a martial-arts movie legend turned chat regular in a bad-movie screening room"
    )
    personality_traits: list[str] = Field(
        default_factory=lambda: ["confident", "dry-witted", "supportive", "a little cheesy"]
    )
    expertise: list[str] = Field(
        default_factory=lambda: ["martial arts", "action movies", "B-movies", "film trivia"]
    )
    response_style: str = "short, punchy, playful; one or two sentences"
    name_variations: list[str] = Field(default_factory=lambda: ["cynthia", "rothrock"])
    system_prompt_file: Path | None = None

    @field_validator("system_prompt_file")
    @classmethod
    def _prompt_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"system prompt file not found or not a file: {value}")
        return value


ProviderType = Literal["openai_compatible", "openrouter", "ollama", "anthropic", "gemini"]


class ProviderSettings(Section):
    """One LLM endpoint. The key is read from `api_key`, or from the env var `api_key_env`.

    `base_url` is the API root of the wire format named by `type`: `.../v1` for
    `openai_compatible` and `openrouter` (https://openrouter.ai/api/v1), the server root for
    `ollama` (http://host:11434), `anthropic` (https://api.anthropic.com) and `gemini`
    (https://generativelanguage.googleapis.com).
    """

    type: ProviderType = "openai_compatible"
    base_url: Annotated[str, Field(min_length=1)] = "http://127.0.0.1:11434/v1"
    model: Annotated[str, Field(min_length=1)] = "llama3.2"
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    enabled: bool = True
    priority: int = Field(100, description="Lower is tried first.")
    fallback: list[str] = Field(
        default_factory=list,
        description="Providers to try right after this one fails, before the priority order.",
    )
    stream: bool = Field(True, description="Stream replies when the caller asks for a stream.")
    max_tokens: Annotated[int, Field(ge=1, le=32_000)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.8
    timeout_seconds: Annotated[float | None, Field(gt=0, le=300)] = Field(
        None, description="Per-attempt timeout; unset means `llm_manager.attempt_timeout_seconds`."
    )
    extra_headers: dict[str, str] = Field(default_factory=dict)
    keep_alive: str | int | None = Field(
        None, description="ollama only: how long the model stays loaded (`5m`, `-1`, seconds)."
    )
    http_referer: str | None = Field(None, description="openrouter only: `HTTP-Referer` header.")
    x_title: str | None = Field(None, description="openrouter only: `X-Title` header.")
    anthropic_version: Annotated[str, Field(min_length=1)] = "2023-06-01"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the name of an environment variable, not the key itself")
        return value

    @field_validator("extra_headers", mode="after")
    @classmethod
    def _no_header_injection(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if any(c in name + header for c in "\r\n"):
                raise ValueError(f"header {name!r} contains a line break")
        return value

    def resolve_api_key(self) -> str | None:
        """The key to send: the env var named by `api_key_env` wins over an inline `api_key`."""
        if self.api_key_env:
            from_env = os.environ.get(self.api_key_env)
            if from_env:
                return from_env
        return self.api_key.get_secret_value() if self.api_key else None


class LLMSettings(Section):
    """How hard the LLM manager tries: deadlines, retries, backoff and the circuit breakers."""

    reply_deadline_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        30.0, description="One overall deadline per reply, across every provider and retry."
    )
    attempt_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        15.0, description="Per-attempt timeout for providers that set no `timeout_seconds`."
    )
    fallback_reserve_seconds: Annotated[float, Field(ge=0, le=300)] = Field(
        5.0,
        description="While other providers remain, an attempt leaves this much of the deadline "
        "for them, so a hanging provider cannot starve the fallback.",
    )
    stream_idle_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        10.0, description="A stream that sends nothing for this long has failed."
    )
    max_retries: Annotated[int, Field(ge=0, le=10)] = Field(
        2, description="Retries per provider, for retryable failures only."
    )
    backoff_base_seconds: Annotated[float, Field(ge=0, le=60)] = 0.5
    backoff_max_seconds: Annotated[float, Field(ge=0, le=300)] = 4.0
    jitter_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="Each backoff is scaled by a random factor in [1 - j, 1 + j]."
    )
    retry_after_cap_seconds: Annotated[float, Field(ge=0, le=600)] = Field(
        10.0, description="A longer `Retry-After` moves on to the next provider instead."
    )
    breaker_window: Annotated[int, Field(ge=1, le=1000)] = Field(
        20, description="How many recent outcomes per provider the circuit breaker weighs."
    )
    breaker_failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    breaker_min_calls: Annotated[int, Field(ge=1, le=1000)] = 5
    breaker_cooldown_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0
    health_check_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0


class ModelPrice(Section):
    """What one model costs, in USD per million tokens."""

    input_per_million_usd: Annotated[float, Field(ge=0)] = 0.0
    output_per_million_usd: Annotated[float, Field(ge=0)] = 0.0


class UsageSettings(Section):
    """Token accounting, prices and daily budgets (reset at UTC midnight)."""

    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Keyed by model name (as configured); models not listed cost nothing.",
    )
    daily_budget_usd: Annotated[float | None, Field(ge=0)] = None
    channel_daily_budget_usd: Annotated[float | None, Field(ge=0)] = None
    user_daily_budget_usd: Annotated[float | None, Field(ge=0)] = None
    on_budget_exhausted: Literal["cheaper_provider", "silent"] = "silent"
    cheaper_provider: str | None = Field(
        None, description="The provider used once a budget is spent (`cheaper_provider` mode)."
    )
    max_tracked_users: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        10_000, description="Bound on per-user spend records kept per day."
    )

    @model_validator(mode="after")
    def _cheaper_named(self) -> UsageSettings:
        if self.on_budget_exhausted == "cheaper_provider" and not self.cheaper_provider:
            raise ValueError("on_budget_exhausted 'cheaper_provider' needs `cheaper_provider`")
        return self


class TriggerSettings(Section):
    """A word or pattern that may make the bot speak without being named."""

    name: Annotated[str, Field(min_length=1)]
    patterns: Annotated[list[str], Field(min_length=1)]
    probability: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    cooldown_seconds: Annotated[float, Field(ge=0)] = 300.0
    context: str = ""
    response_style: str | None = None
    max_responses_per_hour: Annotated[int, Field(ge=0)] = 10
    priority: int = 5
    enabled: bool = True
    provider: str | None = None

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern.strip():
                raise ValueError("patterns must not be blank")
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"invalid regular expression {pattern[3:]!r}: {exc}") from None
        return patterns


class RateLimitSettings(Section):
    """How often the bot may speak: per channel ("global"), per user, per trigger.

    Every limit and cooldown is per channel. A limit of 0 blocks that kind of reply entirely;
    a cooldown of 0 switches that cooldown off. Users at or above `admin_min_rank` (CyTube 2 =
    moderator) get every cooldown multiplied by `admin_cooldown_multiplier` and every limit by
    `admin_limit_multiplier`, so moderators can demo or test the bot without waiting.
    """

    global_max_per_minute: Annotated[int, Field(ge=0)] = 2
    global_max_per_hour: Annotated[int, Field(ge=0)] = 20
    global_cooldown_seconds: Annotated[float, Field(ge=0)] = 15.0
    user_max_per_hour: Annotated[int, Field(ge=0)] = 5
    user_cooldown_seconds: Annotated[float, Field(ge=0)] = 60.0
    mention_cooldown_seconds: Annotated[float, Field(ge=0)] = 120.0
    admin_min_rank: Annotated[float, Field(ge=0)] = 2.0
    admin_cooldown_multiplier: Annotated[float, Field(ge=0, le=1)] = 0.5
    admin_limit_multiplier: Annotated[float, Field(ge=1, le=100)] = 2.0
    max_tracked_users: Annotated[int, Field(ge=10, le=1_000_000)] = Field(
        10_000, description="Hard cap on remembered (channel, user) pairs; least recent go first."
    )


class SpamSettings(Section):
    """Hold back spammers, ignore other bots, and stop reply loops and chat domination.

    Message limits are "at most N in the window": the line that exceeds N is spam. Penalties
    grow by `penalty_multiplier` per offence up to `penalty_max_seconds`; each quiet
    `penalty_decay_seconds` after a penalty ends forgives one level. Users at or above
    `rate_limits.admin_min_rank` are never treated as spammers.
    """

    enabled: bool = True
    other_bots: list[str] = Field(
        default_factory=list, description="Other bots in the room: never answered, never counted."
    )
    flood_window_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    flood_max_messages: Annotated[int, Field(ge=1, le=1000)] = 6
    repeat_window_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    repeat_max_identical: Annotated[int, Field(ge=1, le=100)] = 2
    mention_window_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    mention_max: Annotated[int, Field(ge=1, le=100)] = 3
    penalty_initial_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    penalty_multiplier: Annotated[float, Field(ge=1, le=100)] = 2.0
    penalty_max_seconds: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    penalty_decay_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    reply_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    max_replies_per_window: Annotated[int, Field(ge=0, le=10_000)] = 10
    max_consecutive_replies_to_user: Annotated[int, Field(ge=1, le=1000)] = 4
    streak_reset_lines: Annotated[int, Field(ge=1, le=1000)] = Field(
        3, description="Lines from other people that end a reply streak with one user."
    )
    streak_reset_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    max_chat_share: Annotated[float, Field(gt=0, le=1)] = 0.05
    chat_share_window_lines: Annotated[int, Field(ge=10, le=10_000)] = 200
    chat_share_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 1800.0
    chat_share_min_sample_lines: Annotated[int, Field(ge=1, le=10_000)] = 20
    max_tracked_users: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000


class ResponseLogSettings(Section):
    """The JSONL record of every triggered message: what `kryten-llm stats` reads."""

    enabled: bool = True
    path: Path = Path("logs/responses.jsonl")
    max_bytes: Annotated[int, Field(ge=0)] = Field(
        10_000_000, description="Rotate when the file would grow past this; 0 never rotates."
    )
    backup_count: Annotated[int, Field(ge=0, le=1000)] = Field(
        5, description="Rotated files kept (responses.jsonl.1 ...); 0 discards on rotation."
    )
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class MessageProcessingSettings(Section):
    """How replies are shaped for CyTube chat and paced onto the bus."""

    max_message_length: Annotated[int, Field(ge=20, le=1000)] = Field(
        240, description="Per chat line, in UTF-16 code units (CyTube's own unit)."
    )
    max_parts: Annotated[int, Field(ge=1, le=10)] = 3
    split_delay_seconds: Annotated[float, Field(ge=0, le=30)] = 1.0
    command_prefixes: list[str] = Field(
        default_factory=lambda: ["/", "!", "."],
        description="Leading characters that CyTube or other bots treat as commands.",
    )
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 200
    workers: Annotated[int, Field(ge=1, le=256)] = 16
    send_burst: Annotated[int, Field(ge=1, le=20)] = 4
    send_rate_per_second: Annotated[float, Field(gt=0, le=10)] = 1.0
    continuation_indicator: Annotated[str, Field(max_length=8)] = Field(
        "...",
        description="Appended to a part cut mid-sentence; counts inside max_message_length.",
    )
    strip_markdown: bool = Field(
        True, description="Remove code fences, headings, list markers and markdown links."
    )
    strip_self_references: bool = Field(
        True, description="Drop openings such as 'As CynthiaRothbot, ...' or 'As an AI, ...'."
    )
    artifact_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ARTIFACT_PATTERNS),
        description="Regexes (case-insensitive) removed from the start of every reply.",
    )
    max_emojis: Annotated[int, Field(ge=0, le=100)] | None = Field(
        None, description="Keep at most this many emoji per reply; null keeps them all."
    )

    @field_validator("command_prefixes")
    @classmethod
    def _prefixes_not_blank(cls, value: list[str]) -> list[str]:
        if any(not p.strip() for p in value):
            raise ValueError("command prefixes must not be empty or whitespace")
        return value

    @field_validator("artifact_patterns")
    @classmethod
    def _artifact_patterns_compile(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)

    @field_validator("continuation_indicator")
    @classmethod
    def _indicator_stable(cls, value: str) -> str:
        # The guard publishes NFKC text: an indicator that NFKC changes ("…" -> "...") would
        # change length after the limit was checked.
        if unicodedata.normalize("NFKC", value) != value or not value.isprintable():
            raise ValueError("must be printable and NFKC-normalised (use '...' not '…')")
        return value


DEFAULT_ARTIFACT_PATTERNS: tuple[str, ...] = (
    r"^(?:sure|certainly|of course|absolutely|okay|ok)\b[!,.]?\s*here(?:'s|’s| is| are)\b"
    r"[^:\n]{0,60}:\s*",
    r"^here(?:'s|’s| is) (?:my|a|the|your) (?:in-character )?(?:response|reply|answer)"
    r"[^:\n]{0,40}:\s*",
    r"^(?:response|reply|answer)\s*:\s*",
)


def _check_regexes(patterns: list[str]) -> list[str]:
    """Fail at load time, with the offending pattern, rather than at the first reply."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return patterns


LinkPolicy = Literal["allow", "strip", "block"]


class SafetySettings(Section):
    """The output guard: what the bot may never post, whatever the model says."""

    blocked_words: list[str] = Field(
        default_factory=list, description="Whole words, matched case-insensitively after NFKC."
    )
    blocked_patterns: list[str] = Field(
        default_factory=list, description="Regexes (case-insensitive) that may never be posted."
    )
    blocked_action: Literal["block", "redact"] = Field(
        "block", description="block: post nothing; redact: remove the matched text."
    )
    link_policy: LinkPolicy = Field(
        "strip", description="allow: keep links; strip: remove them; block: post nothing."
    )
    allowed_link_domains: list[str] = Field(
        default_factory=list,
        description="With link_policy allow: if non-empty, links elsewhere are stripped.",
    )
    blocked_link_domains: list[str] = Field(
        default_factory=list,
        description="Never posted under any policy (subdomains included).",
    )

    @field_validator("blocked_patterns")
    @classmethod
    def _blocked_patterns_compile(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)

    @field_validator("allowed_link_domains", "blocked_link_domains")
    @classmethod
    def _domains_lowercase(cls, value: list[str]) -> list[str]:
        cleaned = [d.strip().lower().lstrip("*.").rstrip(".") for d in value]
        if any(not d or "/" in d or " " in d for d in cleaned):
            raise ValueError("domains must be bare host names such as example.com")
        return cleaned


class ValidationSettings(Section):
    """Which replies are refused before they are sent, and what happens then."""

    enabled: bool = True
    min_length: Annotated[int, Field(ge=1, le=1000)] = Field(
        2, description="In UTF-16 code units, after formatting."
    )
    max_length: Annotated[int, Field(ge=1, le=20_000)] = Field(
        2000, description="In UTF-16 code units, after formatting."
    )
    similarity_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.85, description="Refuse a reply this similar (0..1) to a recent one; 1.0 = exact only."
    )
    history_size: Annotated[int, Field(ge=0, le=200)] = Field(
        10, description="Recent replies remembered per channel; 0 disables the check."
    )
    max_channels: Annotated[int, Field(ge=1, le=10_000)] = 256
    relevance_check: bool = False
    min_relevance: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.1, description="Share of the user's content words the reply must echo."
    )
    blocked_words: list[str] = Field(default_factory=list)
    blocked_patterns: list[str] = Field(default_factory=list)
    on_refusal: Literal["regenerate", "fallback", "silent"] = "regenerate"
    fallback_response: str = Field(
        "", description="Sent on refusal with on_refusal=fallback (and after a failed regenerate)."
    )

    @field_validator("blocked_patterns")
    @classmethod
    def _validation_patterns_compile(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)

    @model_validator(mode="after")
    def _consistent(self) -> ValidationSettings:
        if self.min_length > self.max_length:
            raise ValueError("min_length must not exceed max_length")
        if self.on_refusal == "fallback" and not self.fallback_response.strip():
            raise ValueError("on_refusal 'fallback' needs a non-empty fallback_response")
        return self


class TestingSettings(Section):
    """Switches for tuning a bot safely."""

    __test__ = False  # not a pytest test class, despite the name

    dry_run: bool = False


class ContextSettings(Section):
    """What the bot remembers of the room."""

    chat_history_size: Annotated[int, Field(ge=0, le=200)] = 30
    include_video_context: bool = True
    include_chat_history: bool = True
    max_prompt_chars: Annotated[int, Field(ge=500, le=200_000)] = 6000


class ListenerSettings(Section):
    """Which senders are never answered."""

    ignored_users: list[str] = Field(default_factory=list)


class ServiceSettings(Section):
    """How the service announces itself on the bus and how long a shutdown may take."""

    heartbeat_interval_seconds: Annotated[int, Field(ge=5, le=60)] = Field(
        10,
        description="Seconds between heartbeats, both kryten-py's lifecycle heartbeat and "
        "`kryten.service.heartbeat`; the bridge marks a service stale after 90 s without one.",
    )
    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=60)] = Field(
        5.0,
        description="How long replies in flight may finish on shutdown; keep it well below "
        "systemd's TimeoutStopSec.",
    )
    instance_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = Field(
        None, description="Tells several instances apart; unset means `<hostname>-<pid>`."
    )


class MetricsSettings(Section):
    """The HTTP endpoint with Prometheus `/metrics` and JSON `/health`."""

    enabled: bool = True
    host: Annotated[str, Field(min_length=1)] = Field(
        "127.0.0.1", description="Loopback by default: metrics are not for the internet."
    )
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        28290, description="0 picks a free port (tests)."
    )


class ControlSettings(Section):
    """The NATS micro service (`nats micro ls`) with status/health/reload/pause/resume."""

    enabled: bool = True
    token: SecretStr | None = Field(
        None,
        description="Required by reload/pause/resume (header `Authorization: Bearer <token>` "
        "or a `token` field in the JSON body); unset refuses them all.",
    )


def _default_providers() -> dict[str, ProviderSettings]:
    return {"local": ProviderSettings()}


def _default_channels() -> list[ChannelSettings]:
    return [ChannelSettings()]


class Settings(BaseSettings):
    """The whole service configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        case_sensitive=False,
        extra="forbid",
    )

    nats: NatsSettings = Field(default_factory=NatsSettings)
    cytube: Annotated[list[ChannelSettings], Field(min_length=1)] = Field(
        default_factory=_default_channels,
        description="One channel object, or a list of them: one process serves them all.",
    )
    personality: PersonalitySettings = Field(default_factory=PersonalitySettings)
    llm_providers: dict[str, ProviderSettings] = Field(default_factory=_default_providers)
    # Not `llm`: that name would swallow the KRYTEN_LLM_LLM_PROVIDERS env override.
    llm_manager: LLMSettings = Field(default_factory=LLMSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    triggers: list[TriggerSettings] = Field(default_factory=list)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    spam: SpamSettings = Field(default_factory=SpamSettings)
    response_log: ResponseLogSettings = Field(default_factory=ResponseLogSettings)
    message_processing: MessageProcessingSettings = Field(default_factory=MessageProcessingSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    testing: TestingSettings = Field(default_factory=TestingSettings)
    context: ContextSettings = Field(default_factory=ContextSettings)
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init kwargs), not the other way round.
        return (env_settings, init_settings)

    @field_validator("cytube", mode="before")
    @classmethod
    def _one_or_many_channels(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if not any(p.enabled for p in self.llm_providers.values()):
            raise ValueError("llm_providers: at least one provider must be enabled")
        names = [t.name for t in self.triggers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"triggers: duplicate trigger names {duplicates}")
        for name, provider in self.llm_providers.items():
            unknown = [f for f in provider.fallback if f not in self.llm_providers]
            if unknown:
                raise ValueError(f"llm_providers: {name!r} falls back to unknown {unknown}")
        cheaper = self.usage.cheaper_provider
        if cheaper and cheaper not in self.llm_providers:
            raise ValueError(f"usage: cheaper_provider {cheaper!r} is not a configured provider")
        for trigger in self.triggers:
            if trigger.provider and trigger.provider not in self.llm_providers:
                raise ValueError(
                    f"triggers: trigger {trigger.name!r} names unknown provider "
                    f"{trigger.provider!r}"
                )
        keys = [(c.domain, c.channel.lower()) for c in self.channels]
        if len(keys) != len(set(keys)):
            raise ValueError("cytube: the same channel is listed twice")
        return self

    @property
    def channels(self) -> list[ChannelSettings]:
        """The configured channels (`cytube` is normalised to a list on load)."""
        return self.cytube

    def bot_names(self) -> set[str]:
        """Every name the bot posts under, lowercased: its own lines must never be answered."""
        return {c.username.lower() for c in self.channels} | {
            self.personality.character_name.lower()
        }


# --- loading and the validation report -------------------------------------------------------


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` are ready to print, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def report(self) -> str:
        lines = [f"Configuration {self.source} cannot be used ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


_SECRET_NAME = re.compile(r"(api_?key|token|password|secret|authorization)(?!_env)", re.I)
REDACTED = "***redacted***"


def redact(value: Any, key: str = "") -> Any:
    """Replace anything that sits under a secret-looking key, at any depth."""
    if key and _SECRET_NAME.search(key):
        return REDACTED if value not in (None, "") else value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, SecretStr):
        return REDACTED
    return value


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "(top level)"
    key = str(error["loc"][-1]) if error["loc"] else ""
    shown = redact(error.get("input"), key)
    if error["type"] == "missing":
        return f"{path}: required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message} (got {_short(shown)})"


def _env_overrides_present() -> list[str]:
    return sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))


def strip_comments(value: Any) -> Any:
    """Drop keys starting with `_` at any depth: JSON has no comments, so `_comment` is one."""
    if isinstance(value, dict):
        return {k: strip_comments(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [strip_comments(v) for v in value]
    return value


def build_settings(data: dict[str, Any], source: str) -> Settings:
    """Validate a parsed config (plus env overrides), or raise ConfigError with every problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            source, [f"(top level): must be a JSON object, got {type(data).__name__}"]
        )
    try:
        return Settings(**strip_comments(data))
    except ValidationError as exc:
        problems = [_describe(dict(e)) for e in exc.errors()]
        overrides = _env_overrides_present()
        if overrides:
            problems.append(f"(note) environment overrides in effect: {', '.join(overrides)}")
        raise ConfigError(source, problems) from None


def load_settings(path: str | Path | None) -> Settings:
    """Read and validate the config file; None means embedded defaults plus the environment."""
    if path is None:
        return build_settings({}, "(embedded defaults)")
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(source, ["is a directory, not a config file"]) from None
    except PermissionError:
        raise ConfigError(source, ["permission denied"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"cannot be read: {exc.__class__.__name__}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            source, [f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    return build_settings(data, source)
