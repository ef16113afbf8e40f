"""Every reason to hold a triggered line back, behind one contract: a gate.

A gate looks at a `Turn` (the line, its room, the sender's rank, the trigger and its limits)
and answers with `check(turn)`:

- `None`: no objection;
- `Hold(outcome, reason)`: not now; the outcome and reason go into the JSONL record;
- `Reroute(provider, reason)`: go ahead, but ask this provider (a spent budget's cheaper one).

`check` changes nothing, so asking is free. When every gate has had its say and none holds,
the pipeline calls `spend(turn)` on each, in the same order: that is where a limit or a reply
cap is used up, at decision time (see the pipeline's docstring for why, and for the order).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Protocol

from kryten_llm.decide.budget import UsageTracker
from kryten_llm.decide.limits import RateLimiter
from kryten_llm.decide.quota import UserQuota
from kryten_llm.decide.spam import SpamGuard
from kryten_llm.types import ChannelKey, HoldOutcome, Turn


@dataclass(frozen=True, slots=True)
class Hold:
    """Not now: the outcome and the reason for the record (`user_cooldown: ...`)."""

    outcome: HoldOutcome
    reason: str


@dataclass(frozen=True, slots=True)
class Reroute:
    """Go ahead, but through `provider` instead of the usual one; `reason` says why."""

    provider: str
    reason: str


Verdict = Hold | Reroute | None


class Gate(Protocol):
    """One reason to hold back (see the module docstring)."""

    def check(self, turn: Turn) -> Verdict:
        """May this turn go ahead? Pure: changes nothing."""
        ...

    def spend(self, turn: Turn) -> None:
        """The turn goes ahead (or would, in dry run): use up whatever it costs here."""
        ...


def consult(gates: Iterable[Gate], turn: Turn) -> Verdict:
    """Ask every gate in order: the first `Hold` decides; otherwise the last `Reroute`, if any.

    A gate after a `Reroute` may still hold: a cheaper provider is no reason to break a limit.
    """
    verdict: Verdict = None
    for gate in gates:
        said = gate.check(turn)
        if isinstance(said, Hold):
            return said
        verdict = said or verdict
    return verdict


def spend(gates: Iterable[Gate], turn: Turn) -> None:
    """Every gate spends what the turn costs it, in order."""
    for gate in gates:
        gate.spend(turn)


class SpamGate:
    """The sender is spamming or penalised (judged when the line was heard: `Turn.spam`)."""

    def check(self, turn: Turn) -> Hold | None:
        return Hold("spam", turn.spam) if turn.spam else None

    def spend(self, turn: Turn) -> None:
        """Nothing to spend: the spam guard counted the line when it was heard."""


class PausedGate:
    """The operator paused the room: it is still heard and remembered, not answered."""

    def __init__(self, paused: Set[ChannelKey]) -> None:
        self.paused = paused
        """The service's live set: a pause applies to the very next line."""

    def check(self, turn: Turn) -> Hold | None:
        if turn.key in self.paused:
            return Hold("paused", "channel paused by the operator")
        return None

    def spend(self, turn: Turn) -> None:
        """Nothing to spend."""


class RateLimitGate:
    """Global, per-user and per-trigger cooldowns and caps of the room (`limits.py`)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def check(self, turn: Turn) -> Hold | None:
        decision = self.limiter.check(turn)
        if decision.allowed:
            return None
        return Hold("rate_limited", f"{decision.reason}: {decision.detail}")

    def spend(self, turn: Turn) -> None:
        self.limiter.record(turn)


class UserQuotaGate:
    """The asker's own usage limits (`quota.py`): requests per minute, hour, day; tokens.

    Only for what a user asked for (a mention, a chat command): a trigger word asks nothing,
    and counting it would use up someone's limit for them.
    """

    def __init__(self, quota: UserQuota) -> None:
        self.quota = quota

    def check(self, turn: Turn) -> Hold | None:
        if turn.trigger.kind not in ("mention", "command"):
            return None
        refused = self.quota.refusal(turn.username, turn.rank)
        return Hold("rate_limited", refused) if refused else None

    def spend(self, turn: Turn) -> None:
        if turn.trigger.kind in ("mention", "command"):
            self.quota.take(turn.username, turn.rank)


class ReplyLoopGate:
    """The bot's own pace in the room: reply window, replies in a row, chat share (`spam.py`)."""

    def __init__(self, guard: SpamGuard) -> None:
        self.guard = guard

    def check(self, turn: Turn) -> Hold | None:
        # A mention or a chat command is addressed to the bot: asked for, not unsolicited.
        solicited = turn.trigger.kind in ("mention", "command")
        decision = self.guard.check_reply(turn.key, turn.username, solicited=solicited)
        if decision.allowed:
            return None
        return Hold("loop_protection", f"{decision.reason}: {decision.detail}")

    def spend(self, turn: Turn) -> None:
        # One chat line for now; the pipeline adds the rest once the reply is formatted.
        self.guard.record_reply(turn.key, turn.username, parts=1)


class BudgetGate:
    """Daily budgets (`budget.py`): silence when spent, or a cheaper provider if configured.

    Nothing is spent here: what a reply cost is only known once the LLM has answered.
    """

    def __init__(self, usage: UsageTracker) -> None:
        self.usage = usage

    def check(self, turn: Turn) -> Verdict:
        if turn.trigger.kind == "command":
            return None  # answered without the LLM: it costs nothing (and privacy commands
            # must work when a budget is spent)
        decision = self.usage.allow(turn.key, turn.username)
        if not decision.allowed:
            return Hold("budget", decision.reason)
        if decision.provider:
            return Reroute(decision.provider, decision.reason)
        return None

    def spend(self, turn: Turn) -> None:
        """Nothing to spend yet: the pipeline accounts the reply's cost when it has one."""
