"""Configuration: pydantic models for every section, loaded from JSON with env overrides.

Precedence, highest first: ``KRYTEN_LLM_<SECTION>_<FIELD>`` environment variables, then the
JSON file, then the defaults embedded here. The defaults alone are a runnable configuration
(a local NATS server, one channel, an Ollama-style local model), so ``kryten-llm demo`` and a
first ``kryten-llm`` need no file at all.

Secrets never live in plain ``str`` fields: API keys and NATS credentials are ``SecretStr`` and
the validation report redacts anything whose field name looks secret.

What JSON itself lets through silently is an error here: a key given twice, `NaN` and
`Infinity` (and non-finite numbers from the environment), nesting deeper than any config
needs, sizes and times beyond any sane bound, and operator regular expressions that can
backtrack catastrophically. An inline secret in a file other users can read is a warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from kryten_llm._regex_check import backtracking_risk
from kryten_llm.redact import MARKER, redact_text
from kryten_llm.types import ChannelKey

log = logging.getLogger(__name__)

ENV_PREFIX = "KRYTEN_LLM_"
CONFIG_DEPTH_MAX = 32
"""Deepest nesting a config file may have; the deepest real one (usage.prices.<model>) is 4."""

# Upper bounds for fields that had none: generous for any real deployment, but a typo such as
# `1e23` or an extra row of zeros is a config error at load time, not a surprise at run time.
WEEK_SECONDS = 7 * 86_400
"""The longest cooldown any setting may ask for."""
KEEP_ALIVE_SECONDS_MAX = 366 * 86_400
"""The longest Ollama `keep_alive` in seconds (-1 keeps the model loaded for good)."""
LOG_FILE_BYTES_MAX = 100 * 2**30
"""The largest `response_log.max_bytes` (100 GiB)."""
REPLY_COUNT_MAX = 100_000_000
"""The largest reply count a rate limit may allow: far past what any channel takes, so a large
value still reads as "unlimited", but `1e23` is refused."""
BUDGET_USD_MAX = 1_000_000.0
"""The largest daily budget in USD."""
EVENT_BYTES_PER_CHAT_CHAR = 12
"""Most bytes one character of chat text can take on the bus: the bridge writes JSON with
`\\uXXXX` escapes, so a character outside the BMP is 12 bytes (CyTube's HTML escaping of an
ASCII character, `&quot;` at most, is 6)."""
EVENT_ENVELOPE_BYTES = 4096
"""Room for the rest of a chatMsg event (envelope, username, meta) next to its text."""
NATS_PAYLOAD_BYTES_MAX = 64 * 2**20
"""NATS refuses to configure `max_payload` above 64 MiB, so no event can be larger."""
MEMORY_RECORD_OVERHEAD_BYTES = 1024
"""A stored memory's fields besides its text (id, author, room, times), generously."""


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, so typos are reported, not ignored."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


class NatsSettings(Section):
    """How to reach the NATS server the Kryten bridge publishes on."""

    url: str = "nats://127.0.0.1:4222"
    """The NATS server the bridge publishes on."""
    servers: list[str] = Field(
        default_factory=list, description="Extra servers for a cluster; `url` is always first."
    )
    user: str | None = None
    """NATS user name, if the server requires one."""
    password: SecretStr | None = None
    """NATS password (prefer KRYTEN_LLM_NATS_PASSWORD)."""
    token: SecretStr | None = None
    """NATS token (prefer KRYTEN_LLM_NATS_TOKEN)."""
    connect_timeout_seconds: Annotated[int, Field(ge=1, le=120)] = 10
    """How long to wait for the first connection before giving up."""

    def server_list(self) -> list[str]:
        return [self.url, *[s for s in self.servers if s != self.url]]


class ChannelSettings(Section):
    """One CyTube channel: where replies go and which name is the bot's own."""

    domain: Annotated[str, Field(min_length=1)] = "cytu.be"
    """CyTube server, exactly as the bridge is configured (commands are matched on it)."""
    channel: Annotated[str, Field(min_length=1)] = "lounge"
    """Channel name, as the bridge is configured."""
    username: Annotated[str, Field(min_length=1)] = "CynthiaRothbot"
    """The bot's CyTube account: its own lines are never answered."""
    persona: str | None = None
    """This channel's default persona (a name in `personas`); unset uses `default`, the
    personality. `!chat persona <name>` switches it at run time, and that choice is kept."""

    @field_validator("domain", "channel", "username")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @property
    def key(self) -> ChannelKey:
        """The room this entry configures, as per-channel state is keyed."""
        return ChannelKey(self.domain, self.channel)


class PersonalitySettings(Section):
    """Who the bot is. The system prompt is built from this unless a file replaces it."""

    character_name: Annotated[str, Field(min_length=1)] = "CynthiaRothbot"
    """Who the bot is, and a name it answers to."""
    character_description: str = (
        "a martial-arts movie legend turned chat regular in a bad-movie screening room"
    )
    """One line on who the character is, for the system prompt."""
    personality_traits: list[str] = Field(
        default_factory=lambda: ["confident", "dry-witted", "supportive", "a little cheesy"]
    )
    """Adjectives for the system prompt."""
    expertise: list[str] = Field(
        default_factory=lambda: ["martial arts", "action movies", "B-movies", "film trivia"]
    )
    """Topics the character knows well."""
    response_style: str = "short, punchy, playful; one or two sentences"
    """How replies should sound."""
    name_variations: list[str] = Field(default_factory=lambda: ["cynthia", "rothrock"])
    """Other names it answers to (whole words, any case); also removed from the self-referential
    openings the formatter strips."""
    system_prompt_file: Path | None = None
    """A text file used verbatim as the system prompt instead of the fields above."""

    @field_validator("system_prompt_file")
    @classmethod
    def _prompt_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"system prompt file not found or not a file: {value}")
        return value


PERSONA_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
"""Persona names: lower case, so `!chat persona Concise` finds `concise`; short enough for chat."""
DEFAULT_PERSONA = "default"


class PersonaSettings(Section):
    """A persona: how the bot sounds in a channel that picks it. It changes the system prompt
    only (the output guard, limits and formatting never depend on it); empty fields keep the
    personality's, and the bot's name and expertise are always the personality's."""

    description: str = ""
    """Who the character is in this persona; empty keeps `personality.character_description`."""
    traits: list[str] = Field(default_factory=list)
    """Personality traits; empty keeps `personality.personality_traits`."""
    style: str = ""
    """How replies should sound; empty keeps `personality.response_style`."""
    system_prompt_file: Path | None = None
    """A text file used verbatim as this persona's system prompt."""

    @field_validator("system_prompt_file")
    @classmethod
    def _persona_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"system prompt file not found or not a file: {value}")
        return value

    def apply(self, personality: PersonalitySettings) -> PersonalitySettings:
        """The personality as this persona speaks: its fields where set, the rest kept."""
        update: dict[str, Any] = {}
        if self.description:
            update["character_description"] = self.description
        if self.traits:
            update["personality_traits"] = list(self.traits)
        if self.style:
            update["response_style"] = self.style
        if self.system_prompt_file is not None:
            update["system_prompt_file"] = self.system_prompt_file
        return personality.model_copy(update=update)


BUILTIN_PERSONAS: dict[str, PersonaSettings] = {
    DEFAULT_PERSONA: PersonaSettings(),
    "concise": PersonaSettings(style="as brief as possible: one short sentence, no filler"),
    "technical": PersonaSettings(
        traits=["precise", "knowledgeable", "matter-of-fact"],
        style="accurate and specific, naming things exactly; still short enough for chat",
    ),
    "creative": PersonaSettings(
        traits=["imaginative", "playful", "vivid"],
        style="inventive and colourful, with an unexpected twist; one or two sentences",
    ),
}
"""Always there (the chat plugin's users know them); `default` is the personality itself."""


ProviderType = Literal["openai_compatible", "openrouter", "ollama", "anthropic", "gemini"]


@dataclass(frozen=True)
class KeyStatus:
    """A provider's API key as an operator may see it: where it comes from, never its value.

    `missing` is the one state that makes a provider unusable: `api_key_env` names a variable
    that is unset (or empty) and no inline `api_key` stands in. A provider with no key
    configured at all is not missing one: local servers (Ollama, llama.cpp) need none.
    """

    variable: str | None
    """The variable `api_key_env` names, if any."""
    present: bool
    """A key will be sent."""
    inline: bool = False
    """The key that is sent (or would stand in) is the inline `api_key`."""

    @classmethod
    def of(cls, variable: str | None, present: bool, has_inline: bool) -> KeyStatus:
        from_env = bool(variable and os.environ.get(variable))
        return cls(variable, present, inline=has_inline and not from_env)

    @property
    def missing(self) -> bool:
        return self.variable is not None and not self.present

    def describe(self) -> str:
        """`set (VAR)`, `unset: VAR`, `inline`, `inline (VAR unset)` or `none`."""
        if self.missing:
            return f"unset: {self.variable}"
        if not self.present:
            return "none"
        if self.inline:
            return f"inline ({self.variable} unset)" if self.variable else "inline"
        return f"set ({self.variable})"


class ProviderSettings(Section):
    """One LLM endpoint. The key is read from `api_key`, or from the env var `api_key_env`.

    `base_url` is the API root of the wire format named by `type`: `.../v1` for
    `openai_compatible` and `openrouter` (https://openrouter.ai/api/v1), the server root for
    `ollama` (http://host:11434), `anthropic` (https://api.anthropic.com) and `gemini`
    (https://generativelanguage.googleapis.com).
    """

    type: ProviderType = "openai_compatible"
    """Wire format: openai_compatible, openrouter, ollama, anthropic or gemini."""
    base_url: Annotated[str, Field(min_length=1)] = "http://127.0.0.1:11434/v1"
    """The endpoint (http or https), e.g. https://api.openai.com/v1 or http://gpu-box:11434."""
    model: Annotated[str, Field(min_length=1)] = "llama3.2"
    """Model name as the provider knows it."""
    api_key: SecretStr | None = None
    """The key itself, inline; prefer `api_key_env`, which keeps it out of the file."""
    api_key_env: str | None = None
    """The environment variable holding the key (it wins over `api_key` when set). Start-up,
    `--validate-config` and `kryten-llm check` name it when it is unset; its value is never
    shown."""
    enabled: bool = True
    """A disabled provider is never called."""
    priority: int = Field(100, description="Lower is tried first.")
    fallback: list[str] = Field(
        default_factory=list,
        description="Providers to try right after this one fails, before the priority order.",
    )
    stream: bool = Field(True, description="Stream replies when the caller asks for a stream.")
    max_tokens: Annotated[int, Field(ge=1, le=32_000)] = 256
    """Upper bound on the reply length the model may generate."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.8
    """Sampling temperature (Anthropic caps it at 1.0)."""
    timeout_seconds: Annotated[float | None, Field(gt=0, le=300)] = Field(
        None, description="Per-attempt timeout; unset means `llm_manager.attempt_timeout_seconds`."
    )
    extra_headers: dict[str, str] = Field(default_factory=dict)
    """Additional HTTP headers sent with every request."""
    keep_alive: str | int | None = Field(
        None, description="ollama only: how long the model stays loaded (`5m`, `-1`, seconds)."
    )
    http_referer: str | None = Field(None, description="openrouter only: `HTTP-Referer` header.")
    x_title: str | None = Field(None, description="openrouter only: `X-Title` header.")
    anthropic_version: Annotated[str, Field(min_length=1)] = "2023-06-01"
    """anthropic only: the `anthropic-version` header."""
    reasoning_model: bool | None = Field(
        None,
        description="openai_compatible, openrouter: the model is an OpenAI reasoning model "
        "(o-series, gpt-5 family), which rejects `max_tokens` and `temperature`: send "
        "`max_completion_tokens` (it counts the model's reasoning too) and no temperature. "
        "Unset: openai_compatible decides by the model name (`o1`, `o3`, `o4-mini`, `gpt-5`, "
        "with or without a `vendor/` prefix); openrouter sends `max_tokens`, which it "
        "translates for every model itself.",
    )
    thinking_budget: Annotated[int | None, Field(ge=-1, le=32_768)] = Field(
        None,
        description="gemini only: `generationConfig.thinkingConfig.thinkingBudget`, the "
        "tokens a thinking model may spend thinking, out of `max_tokens` (-1: the model "
        "decides; 0: off, Flash and Flash-Lite only). Unset: 0 for gemini-2.5-flash and "
        "-flash-lite, 128 (the least allowed) for gemini-2.5-pro, nothing for other models.",
    )

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

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive_bounded(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and not -1 <= value <= KEEP_ALIVE_SECONDS_MAX:
            raise ValueError(f"must be -1 (forever) or 0..{KEEP_ALIVE_SECONDS_MAX} seconds")
        return value

    @field_validator("extra_headers", mode="after")
    @classmethod
    def _no_header_injection(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if any(c in name + header for c in "\r\n"):
                raise ValueError(f"header {name!r} contains a line break")
        return value

    def key_status(self) -> KeyStatus:
        """Whether a key is there to send, described without its value (see `KeyStatus`)."""
        return KeyStatus.of(
            self.api_key_env, bool(self.resolve_api_key()), self.api_key is not None
        )

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
    """First retry delay; doubles per retry."""
    backoff_max_seconds: Annotated[float, Field(ge=0, le=300)] = 4.0
    """Longest retry delay."""
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
    """Failure share in the window that opens a provider's circuit breaker."""
    breaker_min_calls: Annotated[int, Field(ge=1, le=1000)] = 5
    """Calls in the window before the breaker may open."""
    breaker_cooldown_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0
    """How long an open provider is skipped before one probe call."""
    health_check_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    """Timeout of the startup availability check of each provider."""


class ModelPrice(Section):
    """What one model costs, in USD per million tokens."""

    input_per_million_usd: Annotated[float, Field(ge=0)] = 0.0
    """Price of a million prompt tokens."""
    output_per_million_usd: Annotated[float, Field(ge=0)] = 0.0
    """Price of a million completion tokens."""


class UsageSettings(Section):
    """Token accounting, prices and daily budgets (reset at UTC midnight)."""

    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Keyed by model name (as configured); models not listed cost nothing.",
    )
    daily_budget_usd: Annotated[float | None, Field(ge=0, le=BUDGET_USD_MAX)] = None
    """USD the whole process may spend per UTC day; null means no limit."""
    channel_daily_budget_usd: Annotated[float | None, Field(ge=0, le=BUDGET_USD_MAX)] = None
    """USD one channel may spend per UTC day; null means no limit."""
    user_daily_budget_usd: Annotated[float | None, Field(ge=0, le=BUDGET_USD_MAX)] = None
    """USD replies to one user may cost per UTC day; null means no limit."""
    on_budget_exhausted: Literal["cheaper_provider", "silent"] = "silent"
    """What to do when a daily budget is spent: switch to `cheaper_provider`, or stay silent."""
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
    """Unique name, shown in logs, the response log and stats."""
    patterns: Annotated[list[str], Field(min_length=1)]
    """Whole words or phrases (case-insensitive), or regular expressions prefixed `re:`."""
    probability: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Chance (0..1) that a matching line is answered."""
    cooldown_seconds: Annotated[float, Field(ge=0, le=WEEK_SECONDS)] = 300.0
    """Silence for this trigger after it answered, per channel."""
    context: str = ""
    """Situation text added to the system prompt for this trigger."""
    response_style: str | None = None
    """A style instruction added to the system prompt for replies to this trigger."""
    max_responses_per_hour: Annotated[int, Field(ge=0, le=REPLY_COUNT_MAX)] = 10
    """Hourly cap for this trigger, per channel."""
    priority: int = 5
    """When several triggers match, the highest priority wins (mentions beat all)."""
    enabled: bool = True
    """A disabled trigger never fires."""
    provider: str | None = None
    """The provider asked first for this trigger (its fallbacks follow); null: the usual order."""

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern.strip():
                raise ValueError("patterns must not be blank")
            if pattern.startswith("re:"):
                _check_regexes([pattern[3:]])
        return patterns


class RateLimitSettings(Section):
    """How often the bot may speak: per channel ("global"), per user, per trigger.

    Every limit and cooldown is per channel. A limit of 0 blocks that kind of reply entirely;
    a cooldown of 0 switches that cooldown off. Users at or above `admin_min_rank` (CyTube 2 =
    moderator) get every cooldown multiplied by `admin_cooldown_multiplier` and every limit by
    `admin_limit_multiplier`, so moderators can demo or test the bot without waiting.
    """

    global_max_per_minute: Annotated[int, Field(ge=0, le=REPLY_COUNT_MAX)] = 2
    """Replies per minute in one channel."""
    global_max_per_hour: Annotated[int, Field(ge=0, le=REPLY_COUNT_MAX)] = 20
    """Replies per hour in one channel."""
    global_cooldown_seconds: Annotated[float, Field(ge=0, le=WEEK_SECONDS)] = 15.0
    """Silence in a channel after each reply."""
    user_max_per_hour: Annotated[int, Field(ge=0, le=REPLY_COUNT_MAX)] = 5
    """Replies per hour to one user."""
    user_cooldown_seconds: Annotated[float, Field(ge=0, le=WEEK_SECONDS)] = 60.0
    """Silence towards a user after replying to them."""
    mention_cooldown_seconds: Annotated[float, Field(ge=0, le=WEEK_SECONDS)] = 120.0
    """Minimum time between answered mentions from one user."""
    admin_min_rank: Annotated[float, Field(ge=0, le=1000)] = 2.0
    """Users at or above this CyTube rank (2 = moderator) get the multipliers below."""
    admin_cooldown_multiplier: Annotated[float, Field(ge=0, le=1)] = 0.5
    """Their cooldowns are multiplied by this (0.5 halves them)."""
    admin_limit_multiplier: Annotated[float, Field(ge=1, le=100)] = 2.0
    """Their limits are multiplied by this."""
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
    """Spam detection on or off (loop and share caps always apply)."""
    other_bots: list[str] = Field(
        default_factory=list, description="Other bots in the room: never answered, never counted."
    )
    flood_window_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """Window for counting one user's lines."""
    flood_max_messages: Annotated[int, Field(ge=1, le=1000)] = 6
    """More lines than this in the window is flooding."""
    repeat_window_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    """Window for spotting a repeated message."""
    repeat_max_identical: Annotated[int, Field(ge=1, le=100)] = 2
    """More identical lines than this in the window is spam."""
    mention_window_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Window for counting one user's mentions of the bot."""
    mention_max: Annotated[int, Field(ge=1, le=100)] = 3
    """More mentions than this in the window is spam."""
    penalty_initial_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    """First penalty: the user's triggers are held back this long."""
    penalty_multiplier: Annotated[float, Field(ge=1, le=100)] = 2.0
    """Each further offence multiplies the penalty by this."""
    penalty_max_seconds: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    """The longest penalty."""
    penalty_decay_seconds: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    """Each quiet period this long after a penalty forgives one level."""
    reply_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    """Window for the cap on the bot's replies in a channel."""
    max_replies_per_window: Annotated[int, Field(ge=0, le=10_000)] = 10
    """The bot's replies per window in a channel, at most."""
    max_consecutive_replies_to_user: Annotated[int, Field(ge=1, le=1000)] = 4
    """Replies in a row to one user before someone else must speak."""
    streak_reset_lines: Annotated[int, Field(ge=1, le=1000)] = Field(
        3, description="Lines from other people that end a reply streak with one user."
    )
    streak_reset_seconds: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    """A reply streak ends after this long without a reply."""
    max_chat_share: Annotated[float, Field(gt=0, le=1)] = 0.05
    """The bot's lines stay under this share of recent chat lines, its next reply counted; in
    every room, except that a quiet room's mentions are answered (1 switches the cap off)."""
    chat_share_window_lines: Annotated[int, Field(ge=10, le=10_000)] = 200
    """Recent chat lines the share is measured over."""
    chat_share_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 1800.0
    """...no older than this."""
    chat_share_min_sample_lines: Annotated[int, Field(ge=1, le=10_000)] = 20
    """A room with fewer lines from people than this in the window is quiet: there a mention
    is answered whatever the share (cooldowns still apply), and unasked replies never exceed
    it."""
    max_tracked_users: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    """Users tracked at once per process (least recently active forgotten first)."""


class ResponseLogSettings(Section):
    """The JSONL record of every triggered message: what `kryten-llm stats` reads."""

    enabled: bool = True
    """Write the response log."""
    path: Path = Path("logs/responses.jsonl")
    """The JSONL file; missing directories are created. Relative paths start in the working
    directory."""
    max_bytes: Annotated[int, Field(ge=0, le=LOG_FILE_BYTES_MAX)] = Field(
        10_000_000, description="Rotate when the file would grow past this; 0 never rotates."
    )
    backup_count: Annotated[int, Field(ge=0, le=1000)] = Field(
        5, description="Rotated files kept (responses.jsonl.1 ...); 0 discards on rotation."
    )
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """Records waiting for the writer thread before new ones are dropped (with a warning)."""


class MessageProcessingSettings(Section):
    """How replies are shaped for CyTube chat and paced onto the bus."""

    max_message_length: Annotated[int, Field(ge=20, le=1000)] = Field(
        240, description="Per chat line, in UTF-16 code units (CyTube's own unit)."
    )
    max_parts: Annotated[int, Field(ge=1, le=10)] = 3
    """Chat lines one reply may become."""
    split_delay_seconds: Annotated[float, Field(ge=0, le=30)] = 1.0
    """Pause between the lines of one reply."""
    command_prefixes: list[str] = Field(
        default_factory=lambda: ["/", "!", "."],
        description="Leading characters that CyTube or other bots treat as commands.",
    )
    inbound_queue_size: Annotated[int, Field(ge=100, le=1_000_000)] = 20_000
    """Chat events waiting for the dispatcher. nats-py hands over every buffered message at
    once, so a burst of busy chat needs room (about 400 bytes each); full: newest dropped,
    logged."""
    queue_size: Annotated[int, Field(ge=1, le=100_000)] = 200
    """Replies waiting for a worker (full: the reply is dropped, logged and recorded)."""
    workers: Annotated[int, Field(ge=1, le=256)] = 32
    """Replies written at once (LLM calls in flight); matches the HTTP connection pool."""
    send_burst: Annotated[int, Field(ge=1, le=20)] = 4
    """Lines the bot may send at once in a channel (CyTube antiflood: 4 below rank 2)."""
    send_rate_per_second: Annotated[float, Field(gt=0, le=10)] = 1.0
    """Sustained lines per second per channel (CyTube antiflood: 1 below rank 2)."""
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
    """Fail at load time, with the offending pattern, rather than at the first reply.

    A pattern that compiles is also refused if it can backtrack catastrophically: these run
    on every chat line or reply, on the event loop, and Python's `re` has no time limit.
    """
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        risk = backtracking_risk(pattern)
        if risk is not None:
            raise ValueError(
                f"regular expression {pattern!r} can backtrack catastrophically ({risk}); "
                "rewrite it so each piece of text can match only one way, e.g. `(a+)+` as `a+`"
            )
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
        description="Never posted under any policy (subdomains included), nor disguised: "
        "`evil[.]com`, `evil (dot) com`, look-alike letters or dots cut the words that carry "
        "them.",
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
    """Validation on or off."""
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
    """Channels whose recent replies are remembered."""
    relevance_check: bool = False
    """Refuse replies that share too few words with the user's message."""
    min_relevance: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.1, description="Share of the user's content words the reply must echo."
    )
    blocked_words: list[str] = Field(default_factory=list)
    """Replies containing these whole words are refused."""
    blocked_patterns: list[str] = Field(default_factory=list)
    """Replies matching these regular expressions are refused."""
    on_refusal: Literal["regenerate", "fallback", "silent"] = "regenerate"
    """regenerate (once, then fallback or silence), fallback, or silent."""
    fallback_response: str = Field(
        "",
        description="Sent on refusal with on_refusal=fallback (and after a failed regenerate), "
        "and to a direct mention when no LLM answers (provider down, breaker open); empty: "
        "neither.",
    )
    fallback_cooldown_seconds: Annotated[float, Field(ge=0, le=86_400)] = Field(
        600.0,
        description="A user who got the fallback line because no LLM answered does not get "
        "it again in this room for this long (the outage is silent to them meanwhile).",
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
    """Run everything, post nothing; each would-be line is logged (same as --dry-run)."""


class ContextSettings(Section):
    """What the bot remembers of the room."""

    chat_history_size: Annotated[int, Field(ge=0, le=200)] = 30
    """Recent chat lines remembered per channel for the prompt."""
    include_video_context: bool = True
    """Tell the model what is playing."""
    include_chat_history: bool = True
    """Show the model recent chat."""
    max_prompt_chars: Annotated[int, Field(ge=500, le=200_000)] = 6000
    """Prompt budget; the oldest history is cut first, never the message or system prompt."""
    conversation_exchanges: Annotated[int, Field(ge=0, le=50)] = 5
    """Exchanges (question and answer) with each user remembered and shown as earlier turns."""
    conversations_per_channel: Annotated[int, Field(ge=1, le=100_000)] = 500
    """Users per channel whose exchanges are remembered (least recently active forgotten)."""


class ListenerSettings(Section):
    """Which senders are never answered, and the one size rule for what comes off the bus.

    The size rule: an event whose raw bytes exceed `max_event_bytes` is dropped and counted
    before it is decoded; every event within it is decoded, and chat text longer than
    `max_chat_chars` (after unescaping) is cut to that length and marked `…[cut N chars]`, so
    the prompt, the room's history and the JSONL record hold at most that much of one line.
    The byte limit must leave room for a line the text limit keeps
    (`max_event_bytes >= 12 * max_chat_chars + 4096`), so the text limit decides what a
    chat line becomes and the byte limit only stops what no bridge sends.
    """

    ignored_users: list[str] = Field(default_factory=list)
    """Users never answered (case-insensitive)."""
    max_chat_chars: Annotated[int, Field(ge=320, le=100_000)] = Field(
        4000,
        description="Chat text longer than this (in characters, after unescaping) is cut and "
        "marked `…[cut N chars]` where the line is parsed, before triggers, the prompt, the "
        "room's history or the JSONL record see it. CyTube itself cuts a line at 240-320 "
        "UTF-16 units (up to about 6x that once HTML-escaped), so the default never cuts a "
        "line CyTube lets through.",
    )
    max_event_bytes: Annotated[int, Field(ge=65_536, le=NATS_PAYLOAD_BYTES_MAX)] = Field(
        1_048_576,
        description="Events larger than this (raw bytes, before decoding) are dropped and "
        "counted, whatever their kind. The default is NATS's default `max_payload` (1 MiB), "
        "far above a chatMsg within `max_chat_chars` and above a `userlist` of thousands of "
        "users; for a larger user list raise it together with the server's `max_payload`. "
        "Must be at least 12 * max_chat_chars + 4096.",
    )

    @model_validator(mode="after")
    def _one_size_rule(self) -> ListenerSettings:
        needed = EVENT_BYTES_PER_CHAT_CHAR * self.max_chat_chars + EVENT_ENVELOPE_BYTES
        if self.max_event_bytes < needed:
            raise ValueError(
                f"max_event_bytes {self.max_event_bytes} would drop chat lines that "
                f"max_chat_chars {self.max_chat_chars} keeps; it must be at least {needed} "
                f"({EVENT_BYTES_PER_CHAT_CHAR} * max_chat_chars + {EVENT_ENVELOPE_BYTES})"
            )
        return self


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
    """Serve /metrics and /health over HTTP."""
    host: Annotated[str, Field(min_length=1)] = Field(
        "127.0.0.1", description="Loopback by default: metrics are not for the internet."
    )
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        28290, description="0 picks a free port (tests)."
    )


class ControlSettings(Section):
    """The NATS micro service (`nats micro ls`) with status/health/reload/pause/resume."""

    enabled: bool = True
    """Register the NATS micro service (nats micro ls / info / stats / ping)."""
    token: SecretStr | None = Field(
        None,
        description="Required by reload/pause/resume (header `Authorization: Bearer <token>` "
        "or a `token` field in the JSON body); unset refuses them all.",
    )


class UserLimitSettings(Section):
    """What one user may ask of the bot: chat mentions, chat commands and API calls alike.

    Users at or above `rate_limits.admin_min_rank` get every limit multiplied by
    `rate_limits.admin_limit_multiplier`. A limit of 0 switches that limit off. Usage events
    (`<api.subject_prefix>.events.usage_threshold`) mark 80, 90 and 100 % of each limit.
    """

    requests_per_minute: Annotated[int, Field(ge=0, le=1_000_000)] = 10
    """Requests in any 60 seconds."""
    requests_per_hour: Annotated[int, Field(ge=0, le=1_000_000)] = 100
    """Requests in any hour."""
    requests_per_day: Annotated[int, Field(ge=0, le=10_000_000)] = 500
    """Requests per UTC day."""
    tokens_per_day: Annotated[int, Field(ge=0, le=1_000_000_000)] = 50_000
    """Prompt and completion tokens per UTC day."""
    max_tracked_users: Annotated[int, Field(ge=10, le=1_000_000)] = Field(
        10_000, description="Users whose usage is remembered; least recently active go first."
    )


class ApiSettings(Section):
    """The service API on the bus (`<prefix>.chat`, `.complete`, ...; see docs/API.md)."""

    enabled: bool = True
    """Add the API endpoints to the `kryten-llm` micro service."""
    subject_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")] = Field(
        "kryten.llm",
        description="Subjects are `<prefix>.chat`, `<prefix>.memory.add`, ... "
        "(a Rosey deployment sets `rosey.llm`).",
    )
    token: SecretStr | None = Field(
        None,
        description="When set, every API request must carry it (header `Authorization: "
        "Bearer <token>` or a `token` field in the JSON body); unset: no token asked.",
    )
    deadline_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        30.0,
        description="Every request is answered within this (`timeout` when the work is not done).",
    )
    max_request_bytes: Annotated[int, Field(ge=256, le=1_048_576)] = 16_384
    """A larger request body is `invalid_request`, unread."""
    max_in_flight: Annotated[int, Field(ge=1, le=10_000)] = Field(
        64, description="Requests worked on at once by this instance; more are `rate_limited`."
    )
    caller_max_per_minute: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        0,
        description="Requests per minute from one caller (the request's `caller` field, "
        "else `anonymous`); 0 means no per-caller limit.",
    )
    complete_max_tokens: Annotated[int, Field(ge=1, le=32_000)] = Field(
        1024, description="The largest `max_tokens` a `complete` request may ask for."
    )


class StateSettings(Section):
    """Durable state (memory, personas, history) in NATS JetStream key-value buckets."""

    enabled: bool = True
    """Keep state in JetStream KV; false keeps it in this process's memory only (lost on exit)."""
    bucket_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = Field(
        "kryten_llm_",
        description="Bucket names are this plus the purpose (`kryten_llm_memory`); two "
        "deployments sharing one NATS server need different prefixes.",
    )
    history: Annotated[int, Field(ge=1, le=64)] = 1
    """Revisions JetStream keeps per key (1: only the latest); applied to existing buckets."""
    replicas: Annotated[int, Field(ge=1, le=5)] = 1
    """Copies of each bucket; more than 1 needs a JetStream cluster of at least that size."""
    max_value_bytes: Annotated[int, Field(ge=1024, le=1_048_576)] = Field(
        262_144,
        description="Largest stored value (JSON); must fit the server's max_payload (1 MiB "
        "by default). Larger values are refused, in memory as in KV.",
    )
    operation_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        2.0,
        description="Timeout of every JetStream call; one that times out turns durable state "
        "off until a retry succeeds.",
    )
    update_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        20,
        description="Tries of one revision-checked update when other writers keep winning, "
        "before it fails.",
    )
    retry_initial_seconds: Annotated[float, Field(gt=0, le=600)] = 1.0
    """First wait before reconnecting to JetStream after it failed; doubles per failure."""
    retry_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Longest wait between reconnection attempts."""
    memory_max_keys: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    """Keys kept per bucket while in memory (least recently used dropped first)."""


CommandName = Literal[
    "ask", "help", "reset", "persona", "remember", "recall", "forget", "optout", "optin"
]
ALL_COMMANDS: tuple[CommandName, ...] = get_args(CommandName)


class CommandSettings(Section):
    """Chat commands: `!chat help`, `!chat remember ...` (see the README for the list).

    Answers go through the same formatter, output guard, pacing and rate limits as replies and
    are recorded in the response log. Ranks are CyTube's, from the bridge (2 = moderator);
    "moderators" are users at or above `rate_limits.admin_min_rank`. An unknown or disabled
    command gets a short hint, never an LLM call.
    """

    prefix: Annotated[str, Field(pattern=r"^\S{2,16}$")] = "!chat"
    """What starts a command (case-insensitive, then a space or the end of the line)."""
    enabled: list[CommandName] = Field(default_factory=lambda: list(ALL_COMMANDS))
    """Commands that work; `ask` is `!chat <question>`, answered like a mention."""
    persona_min_rank: Annotated[float | None, Field(ge=0)] = Field(
        None,
        description="Rank needed to switch the channel's persona; unset: moderators "
        "(`rate_limits.admin_min_rank`). Anyone may list them.",
    )
    remember_min_rank: Annotated[float, Field(ge=0)] = Field(
        1.0, description="Rank needed to store a memory (1: any registered user; guests are 0)."
    )


class MemorySettings(Section):
    """What the bot keeps across restarts, in the `state` section's JetStream KV buckets:
    memories chat asked it to keep, conversation history, each channel's persona, opt-outs."""

    max_per_channel: Annotated[int, Field(ge=1, le=5000)] = 200
    """Memories kept per channel; past it, the least important, least recently used goes."""
    max_chars: Annotated[int, Field(ge=20, le=2000)] = 300
    """Longest memory, in characters (a longer one is refused with a hint)."""
    recall_max: Annotated[int, Field(ge=1, le=10)] = 3
    """Memories `!chat recall` answers with."""
    prompt_max: Annotated[int, Field(ge=0, le=20)] = 3
    """Memories matching the message put into a prompt (0: none)."""
    prompt_chars: Annotated[int, Field(ge=0, le=20_000)] = 600
    """Characters of the prompt those memories may take."""
    persist_history: bool = True
    """Keep chat history and conversations in KV, restored on start."""
    history_flush_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        5.0,
        description="How often changed history is written (off the reply path); a restart "
        "loses at most this much, and none on a clean stop.",
    )
    write_queue_size: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    """State writes waiting for the writer (full: a write is dropped, logged, counted)."""


def provider_order(
    providers: dict[str, ProviderSettings], preferred: str | None = None
) -> list[str]:
    """The chain one reply walks: `preferred` first (if enabled), then by priority (lower
    first, then name), each provider followed at once by its `fallback` chain, depth first.

    Each provider appears once; disabled and unknown names are skipped. The LLM manager
    walks exactly this order; start-up, `--validate-config` and `check` show it.
    """
    enabled = {n: p for n, p in providers.items() if p.enabled}
    seeds = sorted(enabled, key=lambda n: (enabled[n].priority, n))
    if preferred is not None and preferred in enabled:
        seeds.insert(0, preferred)
    order: list[str] = []
    pending = list(reversed(seeds))
    while pending:
        name = pending.pop()
        if name in order or name not in enabled:
            continue
        order.append(name)
        pending += reversed(enabled[name].fallback)
    return order


def describe_provider(name: str, provider: ProviderSettings) -> str:
    """`name (type, model, key ...)`: how start-up, validation and `check` name a provider."""
    return f"{name} ({provider.type}, {provider.model}, key {provider.key_status().describe()})"


def missing_key_warnings(providers: dict[str, ProviderSettings]) -> list[str]:
    """One line per enabled provider whose `api_key_env` names an unset variable.

    Names the provider and the variable, never a value: the config is valid, but that
    provider cannot be called until the variable is set.
    """
    return [
        f"LLM provider {name!r}: api_key_env names {p.api_key_env}, which is not set in this "
        "environment; its calls fail until it is"
        for name, p in providers.items()
        if p.enabled and p.key_status().missing
    ]


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
        allow_inf_nan=False,
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
    api: ApiSettings = Field(default_factory=ApiSettings)
    user_limits: UserLimitSettings = Field(default_factory=UserLimitSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    personas: dict[str, PersonaSettings] = Field(
        default_factory=dict,
        description="Named personas besides the built-in `default` (the personality), "
        "`concise`, `technical` and `creative`; an entry named like a built-in replaces it "
        "(`default` excepted).",
    )
    commands: CommandSettings = Field(default_factory=CommandSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)

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
        keys = [c.key for c in self.channels]
        if len(keys) != len(set(keys)):
            raise ValueError("cytube: the same channel is listed twice")
        self._check_personas()
        return self

    def _check_personas(self) -> None:
        for name in self.personas:
            if not re.fullmatch(PERSONA_NAME, name):
                raise ValueError(f"personas: {name!r} is not a persona name (a-z, 0-9, _ and -)")
        if DEFAULT_PERSONA in self.personas:
            raise ValueError("personas: `default` is the personality; change `personality`")
        table = self.persona_table()
        for channel in self.channels:
            if channel.persona is not None and channel.persona not in table:
                raise ValueError(
                    f"cytube: channel {channel.channel!r} names unknown persona "
                    f"{channel.persona!r} (known: {', '.join(table)})"
                )
        # A memory is stored as one JSON value: the longest must fit (6 bytes per character
        # at worst, for JSON escapes, plus its other fields).
        needed = self.memory.max_chars * 6 + MEMORY_RECORD_OVERHEAD_BYTES
        if needed > self.state.max_value_bytes:
            raise ValueError(
                f"memory: max_chars {self.memory.max_chars} does not fit state.max_value_bytes"
            )

    def persona_table(self) -> dict[str, PersonaSettings]:
        """Every persona by name: the built-ins, replaced or joined by the configured ones."""
        return {**BUILTIN_PERSONAS, **self.personas}

    def default_persona(self, channel: ChannelSettings) -> str:
        """The persona a channel speaks with until someone switches it."""
        return channel.persona or DEFAULT_PERSONA

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
    """A configuration that cannot be used; `problems` are ready to print, one per line.

    `notes` are context, not problems (which environment overrides were in effect): they are
    printed after the problems and not counted among them.
    """

    def __init__(self, source: str, problems: list[str], notes: list[str] | None = None) -> None:
        self.source = source
        self.problems = problems
        self.notes = notes or []
        super().__init__(f"{source}: " + "; ".join(problems))

    def report(self) -> str:
        lines = [f"Configuration {self.source} cannot be used ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


_SECRET_NAME = re.compile(r"(api_?key|token|password|secret|authorization)(?!_env)", re.I)
REDACTED = MARKER


def redact(value: Any, key: str = "") -> Any:
    """Mask anything under a secret-looking key, at any depth; redact every other string.

    A secret under an innocent key (a key pasted into `base_url`, a token in a URL) is still
    caught by the process-wide redactor: configured secrets and key shapes.
    """
    if key and _SECRET_NAME.search(key):
        return REDACTED if value not in (None, "") else value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
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
    message = redact_text(error["msg"].removeprefix("Value error, "))
    return f"{path}: {message} (got {_short(shown)})"


def _env_overrides_present() -> list[str]:
    return sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))


def env_override_note() -> str | None:
    """Which `KRYTEN_LLM_*` variables are set (names only: a value may be a secret), or None."""
    overrides = _env_overrides_present()
    return f"environment overrides in effect: {', '.join(overrides)}" if overrides else None


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
        note = env_override_note()
        raise ConfigError(source, problems, [note] if note else None) from None
    except (SettingsError, RecursionError) as exc:
        # An environment override that is not JSON, or is nested absurdly deep: the message
        # names the field, never the value (it may be a secret).
        reason = str(exc) if isinstance(exc, SettingsError) else "nested too deeply"
        in_effect = ", ".join(_env_overrides_present()) or "none"
        raise ConfigError(
            source, [f"(environment): {reason} (overrides in effect: {in_effect})"]
        ) from None


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
    data = parse_config_json(text, source)
    settings = build_settings(data, source)
    for warning in file_warnings(Path(path), data):
        log.warning("%s", warning)
    return settings


class _JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers the keys it saw more than once."""

    duplicates: list[str]


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    obj.duplicates = [key for key, count in Counter(k for k, _ in pairs).items() if count > 1]
    return obj


def parse_config_json(text: str, source: str) -> Any:
    """The file's JSON, or ConfigError for anything JSON alone would accept silently.

    `json.loads` keeps the last of two equal keys (so a pasted-in second `api_key` or
    `cooldown_seconds` would silently win), reads `NaN`, `Infinity` and `1e999` as numbers,
    and either recurses until Python stops it or hands back a structure too deep to walk.
    Each of those is a problem here, named by its path.
    """
    try:
        data = json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            source, [f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    except ValueError as exc:  # a number of more than 4300 digits
        raise ConfigError(source, [f"invalid JSON: {str(exc).split(':')[0]}"]) from None
    except RecursionError:
        raise ConfigError(
            source,
            [f"(top level): nested too deeply (a config needs at most {CONFIG_DEPTH_MAX} levels)"],
        ) from None
    problems = _shape_problems(data)
    if problems:
        raise ConfigError(source, problems)
    return data


def _shape_problems(data: Any) -> list[str]:
    """Duplicate keys, non-finite numbers and excessive depth, anywhere outside comments.

    Iterative, not recursive: the structure came from a file and may be deep.
    """
    problems: list[str] = []
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        where = ".".join(path) or "(top level)"
        if len(path) > CONFIG_DEPTH_MAX:
            problems.append(f"{where}: nested deeper than {CONFIG_DEPTH_MAX} levels")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where}: {json.dumps(value)} is not a finite number")
        elif isinstance(value, _JsonObject):
            problems += [
                f"{where}: duplicate key {key!r} (JSON would silently keep only the last one)"
                for key in value.duplicates
                if not key.startswith("_")
            ]
            stack += [
                ((*path, key), item) for key, item in value.items() if not key.startswith("_")
            ]
        elif isinstance(value, list):
            stack += [((*path, str(index)), item) for index, item in enumerate(value)]
    return sorted(problems)


INLINE_SECRETS = ("nats.password", "nats.token", "control.token")
"""Secrets a config file may hold inline besides each provider's `api_key`."""


def file_warnings(path: Path, data: Any) -> list[str]:
    """Warnings about a valid config file: inline secrets in a file other users can read.

    Not an error: a config that works keeps working, but the operator is told, once per load
    (so at start and on every reload), which file, which secrets, and how to fix it.
    """
    if os.name == "nt" or not isinstance(data, dict):
        return []
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return []
    if not mode & 0o044:
        return []
    found = [
        f"llm_providers.{name}.api_key"
        for name, provider in (data.get("llm_providers") or {}).items()
        if isinstance(provider, dict) and provider.get("api_key")
    ]
    for dotted in INLINE_SECRETS:
        section, field = dotted.split(".")
        value = data.get(section)
        if isinstance(value, dict) and value.get(field):
            found.append(dotted)
    if not found:
        return []
    return [
        f"Configuration {path}: {', '.join(found)} sits inline in a file other users can "
        f"read (mode {mode:04o}); run `chmod 600 {path}`, or keep the secret out of the file "
        "(api_key_env for a provider key, KRYTEN_LLM_NATS_PASSWORD / KRYTEN_LLM_NATS_TOKEN / "
        "KRYTEN_LLM_CONTROL_TOKEN for the others)"
    ]
