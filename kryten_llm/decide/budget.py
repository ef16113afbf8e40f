"""Tokens, cost and daily budgets: what each reply cost, and whether the next one may be asked.

Tokens come from the provider's usage fields; when a provider reports none, they are estimated
(about four characters per token) and the `Cost` says so. A per-model price table turns tokens
into USD. Spend is kept per UTC day for the whole bot, per channel (keyed by `ChannelKey`, so
same-named channels on two servers have two budgets) and per user, and starts again at UTC
midnight. Per-user and per-channel records are bounded (least recently active are forgotten
first, which can only make the bot *more* willing to answer a forgotten user).

Budget warnings fire at 80 %, 90 % and 100 % of each budget, exactly once per threshold per
day, through `on_budget_event(dict)`. Once a budget is spent, `allow()` says what to do: use
the configured cheaper provider, or stay silent.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal, TypeVar

from kryten_llm.config import ModelPrice, ProviderSettings, UsageSettings
from kryten_llm.types import ChannelKey, LLMRequest, LLMResult

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0
"""Rough English average, used only when a provider reports no token counts."""
THRESHOLDS_PERCENT = (80, 90, 100)
MAX_TRACKED_CHANNELS = 1000
TOKENS_PER_PRICE_UNIT = 1_000_000

Scope = Literal["global", "channel", "user"]
K = TypeVar("K", str, ChannelKey)
BudgetEvent = dict[str, object]


@dataclass(frozen=True, slots=True)
class Cost:
    """What one reply used and cost."""

    usd: float
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    """True when the provider reported no usage and the tokens are a chars/4 estimate."""
    model: str
    priced: bool
    """False when the model has no entry in `usage.prices` (it then counts as free)."""


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """May the bot ask an LLM now? `provider` (if set) must be used instead of the usual one."""

    allowed: bool
    provider: str | None = None
    reason: str = ""


@dataclass
class _Spend:
    """Spend of one scope/key today, and which thresholds already fired."""

    usd: float = 0.0
    fired: set[int] = field(default_factory=set)


def estimate_tokens(text: str) -> int:
    """Approximate token count of `text` (never 0 for non-empty text)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class UsageTracker:
    """Per-day spend accounting and budget decisions for one bot process."""

    def __init__(
        self,
        settings: UsageSettings,
        providers: dict[str, ProviderSettings] | None = None,
        *,
        on_budget_event: Callable[[BudgetEvent], None] | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.settings = settings
        self.providers = providers or {}
        self.on_budget_event = on_budget_event
        self._now = now
        self._day: date = now().date()
        self._global = _Spend()
        self._channels: OrderedDict[ChannelKey, _Spend] = OrderedDict()
        self._users: OrderedDict[str, _Spend] = OrderedDict()

    def reconfigure(
        self, settings: UsageSettings, providers: dict[str, ProviderSettings] | None = None
    ) -> None:
        """Hot reload: new prices and budgets apply at once; today's spend is kept."""
        self.settings = settings
        if providers is not None:
            self.providers = providers
        while len(self._users) > settings.max_tracked_users:
            self._users.popitem(last=False)

    def forget_user(self, user: str) -> bool:
        """Drop what is kept about a user's spending (`!chat forget me`); True if done.

        A user whose daily budget is spent keeps the record until the day ends: it is a
        limit in force, like a cooldown, and forgetting it would reset the budget.
        """
        if _spent(self._users.get(user.lower()), self.settings.user_daily_budget_usd):
            return False
        self._users.pop(user.lower(), None)
        return True

    # --- recording ---

    def record(
        self,
        result: LLMResult,
        channel: ChannelKey,
        user: str,
        *,
        request: LLMRequest | None = None,
    ) -> Cost:
        """Account one reply to the bot, its channel and the user who asked; return its cost.

        `request` lets the prompt size be estimated when the provider reported no usage.
        """
        self._roll_day()
        cost = self.cost(result, request)
        budgets = self.settings
        self._add(cost.usd, "global", "", self._global, budgets.daily_budget_usd)
        channel_spend = self._entry(self._channels, channel, MAX_TRACKED_CHANNELS)
        self._add(
            cost.usd, "channel", str(channel), channel_spend, budgets.channel_daily_budget_usd
        )
        user_spend = self._entry(self._users, user.lower(), budgets.max_tracked_users)
        self._add(cost.usd, "user", user, user_spend, budgets.user_daily_budget_usd)
        return cost

    def cost(self, result: LLMResult, request: LLMRequest | None = None) -> Cost:
        """Tokens (reported or estimated) and their price for one result."""
        estimated = result.prompt_tokens is None or result.completion_tokens is None
        prompt = result.prompt_tokens
        if prompt is None:
            prompt = _estimate_prompt(request) if request is not None else 0
        completion = result.completion_tokens
        if completion is None:
            completion = estimate_tokens(result.text)
        # Counts come from the provider: a negative one must not buy budget back.
        prompt, completion = max(prompt, 0), max(completion, 0)
        price = self._price(result)
        usd = 0.0
        if price is not None:
            usd = _usd(prompt, completion, price)
        return Cost(usd, prompt, completion, estimated, result.model, price is not None)

    def _price(self, result: LLMResult) -> ModelPrice | None:
        """The reported model's price, else the price of the model the provider is set to."""
        prices = self.settings.prices
        if result.model in prices:
            return prices[result.model]
        configured = self.providers.get(result.provider)
        if configured is not None and configured.model in prices:
            return prices[configured.model]
        return None

    # --- deciding ---

    def allow(self, channel: ChannelKey, user: str) -> BudgetDecision:
        """Whether to ask an LLM for this channel and user, and through which provider."""
        self._roll_day()
        exhausted = self.exhausted(channel, user)
        if exhausted is None:
            return BudgetDecision(True)
        if (
            self.settings.on_budget_exhausted == "cheaper_provider"
            and self.settings.cheaper_provider
        ):
            return BudgetDecision(True, self.settings.cheaper_provider, exhausted)
        return BudgetDecision(False, None, exhausted)

    def exhausted(self, channel: ChannelKey, user: str) -> str | None:
        """Which budget (if any) is spent: `global`, `channel <domain/name>` or `user <name>`."""
        s = self.settings
        if _spent(self._global, s.daily_budget_usd):
            return "global daily budget spent"
        if _spent(self._channels.get(channel), s.channel_daily_budget_usd):
            return f"channel {channel} daily budget spent"
        if _spent(self._users.get(user.lower()), s.user_daily_budget_usd):
            return f"user {user} daily budget spent"
        return None

    def restore_global(self, usd: float) -> None:
        """Today's spend as kept durably (`ledger.py`), read at start: a restart resumes it."""
        self._roll_day()
        self._global.usd = max(self._global.usd, usd)

    def user_spend(self, user: str) -> float:
        """What `user` has cost today, in USD (0 when nothing is known)."""
        self._roll_day()
        spend = self._users.get(user.lower())
        return spend.usd if spend is not None else 0.0

    def snapshot(self) -> dict[str, object]:
        """Today's spend, for health and status replies."""
        self._roll_day()
        return {
            "day": self._day.isoformat(),
            "global_usd": round(self._global.usd, 6),
            "daily_budget_usd": self.settings.daily_budget_usd,
            "channels_usd": {str(k): round(v.usd, 6) for k, v in self._channels.items()},
            "users_tracked": len(self._users),
        }

    # --- internals ---

    def _roll_day(self) -> None:
        today = self._now().date()
        if today != self._day:
            log.info("usage: new UTC day %s; yesterday's spend was $%.4f", today, self._global.usd)
            self._day = today
            self._global = _Spend()
            self._channels.clear()
            self._users.clear()

    @staticmethod
    def _entry(table: OrderedDict[K, _Spend], key: K, bound: int) -> _Spend:
        spend = table.pop(key, None) or _Spend()
        table[key] = spend  # most recently active last
        while len(table) > bound:
            table.popitem(last=False)
        return spend

    def _add(self, usd: float, scope: Scope, key: str, spend: _Spend, budget: float | None) -> None:
        before = spend.usd
        spend.usd += usd
        if budget is None:
            return
        for percent in THRESHOLDS_PERCENT:
            if percent in spend.fired:
                continue
            line = budget * percent / 100
            if spend.usd >= line and (before < line or budget == 0):
                spend.fired.add(percent)
                self._emit(scope, key, percent, spend.usd, budget)

    def _emit(self, scope: Scope, key: str, percent: int, spent: float, budget: float) -> None:
        event: BudgetEvent = {
            "event": "budget_threshold",
            "scope": scope,
            "key": key,
            "threshold_percent": percent,
            "spent_usd": round(spent, 6),
            "budget_usd": budget,
            "exhausted": percent >= 100,
            "action": self.settings.on_budget_exhausted if percent >= 100 else "warn",
            "day": self._day.isoformat(),
        }
        where = f"{scope} {key}".strip()
        level = logging.WARNING if percent >= 100 else logging.INFO
        log.log(
            level, "usage: %s daily budget at %d%% ($%.4f of $%.2f)", where, percent, spent, budget
        )
        if self.on_budget_event is None:
            return
        try:
            self.on_budget_event(event)
        except Exception:  # a broken publisher must not break accounting
            log.exception("usage: on_budget_event callback failed")


def _usd(prompt: int, completion: int, price: ModelPrice) -> float:
    """What the tokens cost; 0.0 (with a warning) rather than a sum that is not a finite,
    non-negative number, which would stick in every budget for the rest of the day."""
    try:
        usd = (
            prompt * price.input_per_million_usd + completion * price.output_per_million_usd
        ) / TOKENS_PER_PRICE_UNIT
    except OverflowError:
        usd = math.inf
    if math.isfinite(usd) and usd >= 0:
        return usd
    log.warning("usage: a reply's cost is out of range (tokens or price); counted as 0")
    return 0.0


def _spent(spend: _Spend | None, budget: float | None) -> bool:
    if budget is None:
        return False
    return (spend.usd if spend else 0.0) >= budget


def _estimate_prompt(request: LLMRequest) -> int:
    return estimate_tokens(request.system) + sum(
        estimate_tokens(m.content) for m in request.messages
    )
