"""The day's spend, held hard and kept durable: reserve before each LLM call, settle after.

Why: checking a budget when a line is decided and adding the cost when the reply is done
lets every reply already in flight overshoot it (measured: $1.60 spent on a $1.00 budget by
a burst of mentions), and a spend held only in memory is forgotten on restart. So before a
call an estimate is reserved (the prompt's tokens, counted as `estimate_tokens` does, and
`max_tokens` for the answer, at the model's price); the call is refused when spend plus
every open reservation plus this one does not fit `usage.daily_budget_usd`. After the call
the reservation is replaced by what the reply really cost (or released, when nothing
answered).

The day's record (spend and open reservations) is one JetStream KV value, changed only by
compare-and-set (`Bucket.update`), so a restart keeps the day's spend and two instances on
one bus share one budget. A reservation a crashed process never settled expires after
`RESERVATION_TTL_SECONDS`. Without JetStream the state layer's memory fallback keeps it per
process (and the warning says so).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from kryten_llm.config import ProviderSettings, UsageSettings
from kryten_llm.decide.budget import TOKENS_PER_PRICE_UNIT, estimate_tokens
from kryten_llm.state import Bucket, StateKey, StateStore
from kryten_llm.types import LLMRequest

log = logging.getLogger(__name__)

RESERVATION_TTL_SECONDS = 900.0
"""An unsettled reservation (its process died) stops holding budget after this long."""
RESERVATIONS_MAX = 10_000
"""Open reservations kept in the day's record at most (the oldest go first)."""
DAY_KEY = StateKey.of("spend", "global")
BUDGET_SLACK_USD = 1e-9
"""Float sums of prices: ten $0.10 replies must fit a $1.00 budget."""


class DayRecord(BaseModel):
    """The day's spend in USD and the reservations still open (id -> [usd, expires at])."""

    day: str
    spent_usd: float = 0.0
    reservations: dict[str, tuple[float, float]] = Field(default_factory=dict)

    def held_usd(self) -> float:
        return self.spent_usd + sum(usd for usd, _ in self.reservations.values())


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    usd: float


def utc_day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).date().isoformat()


class Ledger:
    """Reserve and settle against the global daily budget, in KV (see the module doc)."""

    def __init__(
        self,
        settings: UsageSettings,
        providers: dict[str, ProviderSettings],
        store: StateStore | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self._clock = clock
        self._bucket: Bucket[DayRecord] | None = (
            store.bucket("spend", DayRecord) if store is not None else None
        )
        self._local = DayRecord(day=utc_day(clock()))
        """The record when there is no store at all (replay, unit tests)."""

    def reconfigure(self, settings: UsageSettings, providers: dict[str, ProviderSettings]) -> None:
        self.settings, self.providers = settings, providers

    def estimate_usd(self, request: LLMRequest, provider: str | None) -> float:
        """The most this request can cost: its prompt, and `max_tokens` of answer."""
        configured = self.providers.get(provider) if provider else None
        if configured is None:
            return 0.0
        price = self.settings.prices.get(configured.model)
        if price is None:
            return 0.0
        prompt = estimate_tokens(request.system) + sum(
            estimate_tokens(m.content) for m in request.messages
        )
        completion = request.max_tokens or configured.max_tokens
        return (
            prompt * price.input_per_million_usd + completion * price.output_per_million_usd
        ) / TOKENS_PER_PRICE_UNIT

    async def spent_today(self) -> float:
        record = await self._read()
        return record.spent_usd

    async def reserve(self, usd: float) -> Reservation | None:
        """Hold `usd` of today's budget; None when it does not fit (refuse the call)."""
        budget = self.settings.daily_budget_usd
        reservation = Reservation(uuid.uuid4().hex, max(0.0, usd))
        if budget is None or reservation.usd == 0:
            return reservation  # nothing to hold: a free model (a budget's cheaper provider)
        fits = [False]

        def hold(current: DayRecord | None) -> DayRecord:
            record = self._fresh(current)
            fits[0] = record.held_usd() + reservation.usd <= budget + BUDGET_SLACK_USD
            if fits[0]:
                expires = self._clock() + RESERVATION_TTL_SECONDS
                record.reservations[reservation.id] = (reservation.usd, expires)
            return record

        await self._update(hold)
        return reservation if fits[0] else None

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Replace the reservation with what the call really cost (0 when it failed)."""

        def book(current: DayRecord | None) -> DayRecord:
            record = self._fresh(current)
            record.reservations.pop(reservation.id, None)
            record.spent_usd += max(0.0, actual_usd)
            return record

        if self.settings.daily_budget_usd is None and actual_usd <= 0:
            return
        await self._update(book)

    # --- internals ---

    def _fresh(self, current: DayRecord | None) -> DayRecord:
        """Today's record (a new day starts at 0) without expired reservations; a copy."""
        now = self._clock()
        today = utc_day(now)
        if current is None or current.day != today:
            return DayRecord(day=today)
        open_ = {k: v for k, v in current.reservations.items() if v[1] > now}
        while len(open_) > RESERVATIONS_MAX:
            open_.pop(next(iter(open_)))
        return DayRecord(day=today, spent_usd=current.spent_usd, reservations=open_)

    async def _read(self) -> DayRecord:
        if self._bucket is None:
            return self._fresh(self._local)
        return self._fresh(await self._bucket.get(DAY_KEY))

    async def _update(self, fn: Callable[[DayRecord | None], DayRecord]) -> None:
        if self._bucket is None:
            self._local = fn(self._local)
            return
        await self._bucket.update(DAY_KEY, fn)
