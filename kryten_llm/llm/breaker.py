"""A circuit breaker per provider: stop calling a provider that keeps failing, then probe it.

States:

- `closed`: every call is admitted. Each verdict (success or failure) goes into a rolling
  window of the last `window` verdicts; once the window holds at least `min_calls` of them and
  the failure share is at least `failure_rate`, the breaker opens.
- `open`: no call is admitted (the manager skips the provider and records `breaker_open`)
  until `cooldown_seconds` have passed since it opened.
- `half_open`: the first call after the cool-down is admitted as the *probe*; every other
  call is refused while it runs. The probe's verdict decides: success closes the breaker
  (with an empty window), failure opens it again for another cool-down. A probe that ends
  without a verdict (the caller went away, the deadline ran out before it started, the
  provider refused the prompt rather than failed) lets the next call be the probe.

Every admitted call holds a `Ticket` and settles it exactly once: `succeeded()`, `failed()`
or `released()` (no verdict). Settling twice is harmless (the first one counts), so a caller
can release in a `finally` after recording a verdict. The probe ends in exactly one place,
`CircuitBreaker._settle`, whichever way its ticket is settled.

Verdicts of calls admitted while the breaker was still closed but settled after it opened
are counted in the window, but never decide a half-open breaker: only its probe does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kryten_llm.config import LLMSettings

BreakerState = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open (from `LLMSettings`)."""

    window: int
    failure_rate: float
    min_calls: int
    cooldown_seconds: float

    @classmethod
    def of(cls, llm: LLMSettings) -> BreakerPolicy:
        return cls(
            window=llm.breaker_window,
            failure_rate=llm.breaker_failure_rate,
            min_calls=llm.breaker_min_calls,
            cooldown_seconds=llm.breaker_cooldown_seconds,
        )


class Ticket:
    """One admitted call; settle it once with a verdict, or release it without one."""

    __slots__ = ("_breaker", "probe", "settled")

    def __init__(self, breaker: CircuitBreaker, probe: bool) -> None:
        self._breaker = breaker
        self.probe = probe
        """True for the single call a half-open breaker lets through."""
        self.settled = False

    def succeeded(self) -> BreakerState:
        """The call worked; returns the state the breaker is left in."""
        return self._breaker._settle(self, True, "ok")

    def failed(self, kind: str) -> BreakerState:
        """The call failed in a way that speaks about the provider's health."""
        return self._breaker._settle(self, False, kind)

    def released(self) -> BreakerState:
        """The call ended without a verdict on the provider (cancelled, never started, ...)."""
        return self._breaker._settle(self, None, "")


class CircuitBreaker:
    """One provider's health, from its recent verdicts. See the module docstring."""

    def __init__(self, policy: BreakerPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.window: deque[bool] = deque(maxlen=policy.window)
        self.state: BreakerState = "closed"
        self.opened_at = 0.0
        self.probe_in_flight = False
        self.last_success_at: float | None = None
        """Wall-clock time (for people reading a status reply), like the two below."""
        self.last_failure_at: float | None = None
        self.last_error: str | None = None

    def reconfigure(self, policy: BreakerPolicy) -> None:
        """New thresholds apply at once; the recent verdicts and the state are kept."""
        self.policy = policy
        if self.window.maxlen != policy.window:
            self.window = deque(self.window, maxlen=policy.window)

    def admit(self) -> Ticket | None:
        """A ticket if a call may start now, else None (open, or a probe already running)."""
        if self.state == "open" and self.clock() - self.opened_at >= self.policy.cooldown_seconds:
            self.state = "half_open"
        if self.state == "closed":
            return Ticket(self, probe=False)
        if self.state == "half_open" and not self.probe_in_flight:
            self.probe_in_flight = True
            return Ticket(self, probe=True)
        return None

    def snapshot(self) -> dict[str, object]:
        """State, window size and failure share, last success/failure: for health and status."""
        calls = len(self.window)
        return {
            "state": self.state,
            "calls": calls,
            "failure_rate": (self.window.count(False) / calls) if calls else 0.0,
            "last_success_at": self.last_success_at,
            "last_failure_at": self.last_failure_at,
            "last_error": self.last_error,
        }

    def _settle(self, ticket: Ticket, ok: bool | None, kind: str) -> BreakerState:
        """Count one ticket's verdict (None: no verdict); a ticket counts only once."""
        if ticket.settled:
            return self.state
        ticket.settled = True
        if ok is not None:
            self._note(ok, kind)
        if ticket.probe:
            self.probe_in_flight = False  # the one place a probe ends
            if ok is True:
                self.state = "closed"
                self.window.clear()
            elif ok is False:
                self._open()
            return self.state
        if ok is not None:
            self.window.append(ok)
            if self.state == "closed" and self._tripped():
                self._open()
        return self.state

    def _note(self, ok: bool, kind: str) -> None:
        if ok:
            self.last_success_at = time.time()
        else:
            self.last_failure_at = time.time()
            self.last_error = kind

    def _tripped(self) -> bool:
        calls = len(self.window)
        return calls >= self.policy.min_calls and (
            self.window.count(False) / calls >= self.policy.failure_rate
        )

    def _open(self) -> None:
        self.state = "open"
        self.opened_at = self.clock()
