"""The gates: one contract (`check` asks, `spend` spends) for every reason to hold back."""

from __future__ import annotations

import typing

from kryten_llm.config import (
    ModelPrice,
    ProviderSettings,
    RateLimitSettings,
    SpamSettings,
    UsageSettings,
)
from kryten_llm.decide.budget import UsageTracker
from kryten_llm.decide.gates import (
    BudgetGate,
    Gate,
    Hold,
    PausedGate,
    RateLimitGate,
    ReplyLoopGate,
    Reroute,
    SpamGate,
    Verdict,
    consult,
    spend,
)
from kryten_llm.decide.limits import RateLimiter
from kryten_llm.decide.spam import SpamGuard
from kryten_llm.types import (
    ChannelKey,
    ChatLine,
    HoldOutcome,
    LLMResult,
    Outcome,
    Trigger,
    Turn,
)

NOW = 1000.0


def turn(user: str = "alice", domain: str = "cytu.be", spam: str = "") -> Turn:
    line = ChatLine("Lounge", domain, user, "bot, hi", 0)
    return Turn(line, Trigger("mention", "mention", "hi"), spam=spam)


def limiter(**limits: float) -> RateLimiter:
    return RateLimiter(RateLimitSettings(**limits), clock=lambda: NOW)


def test_hold_outcomes_are_outcomes() -> None:
    assert set(typing.get_args(HoldOutcome)) <= set(typing.get_args(Outcome))
    assert "cancelled" in typing.get_args(Outcome)


def test_the_first_hold_decides_and_asking_spends_nothing() -> None:
    limits = limiter(global_cooldown_seconds=60)
    paused = {ChannelKey("cytu.be", "lounge")}
    gates: list[Gate] = [SpamGate(), PausedGate(paused), RateLimitGate(limits)]
    assert consult(gates, turn(spam="flood")) == Hold("spam", "flood")
    assert consult(gates, turn()) == Hold("paused", "channel paused by the operator")
    assert consult(gates, turn(domain="other.example")) is None, "paused here, not there"
    assert limits.tracked() == {"channels": 0, "users": 0, "triggers": 0}, "check is pure"
    paused.clear()
    spend(gates, turn())
    held = consult(gates, turn(user="bob"))
    assert isinstance(held, Hold) and held.outcome == "rate_limited"
    assert held.reason.startswith("global_cooldown: ")


def test_reply_loop_gate_counts_a_reply_when_spent() -> None:
    guard = SpamGuard(SpamSettings(max_replies_per_window=1), clock=lambda: NOW)
    gate = ReplyLoopGate(guard)
    assert gate.check(turn()) is None
    gate.spend(turn())
    held = gate.check(turn(user="bob"))
    assert isinstance(held, Hold) and held.outcome == "loop_protection"
    assert held.reason.startswith("reply_window: ")
    assert gate.check(turn(user="bob", domain="other.example")) is None


def spent_usage(**settings: object) -> UsageTracker:
    usage = UsageTracker(
        UsageSettings(
            prices={"m": ModelPrice(input_per_million_usd=1e6, output_per_million_usd=0)},
            channel_daily_budget_usd=0.5,
            **settings,
        ),
        {"main": ProviderSettings(model="m"), "cheap": ProviderSettings(model="tiny")},
    )
    usage.record(LLMResult("x", "main", "m", 1.0, 1, 1), ChannelKey("cytu.be", "lounge"), "a")
    return usage


def test_a_spent_budget_holds_or_reroutes_and_a_later_hold_still_wins() -> None:
    assert consult([BudgetGate(spent_usage())], turn()) == Hold(
        "budget", "channel cytu.be/lounge daily budget spent"
    )
    cheaper = BudgetGate(
        spent_usage(on_budget_exhausted="cheaper_provider", cheaper_provider="cheap")
    )
    said = consult([cheaper], turn())
    assert isinstance(said, Reroute) and said.provider == "cheap"
    assert consult([cheaper], turn(domain="other.example")) is None, "another room's budget"

    class Closed:
        def check(self, turn: Turn) -> Verdict:
            return Hold("paused", "closed")

        def spend(self, turn: Turn) -> None:
            raise AssertionError("never spent")

    assert consult([cheaper, Closed()], turn()) == Hold("paused", "closed")


def test_a_quiet_room_answers_what_was_asked_and_holds_what_was_not() -> None:
    """The share cap in a quiet room: a mention or a chat command is asked for; a trigger
    word is not, and is held (the room has three lines from people, none from the bot)."""
    guard = SpamGuard(SpamSettings(), clock=lambda: NOW)
    room = ChannelKey("cytu.be", "lounge")
    for user in ("alice", "bob", "carol"):
        guard.note_chat_line(room, user, is_bot=False)
    gate = ReplyLoopGate(guard)
    line = ChatLine("Lounge", "cytu.be", "alice", "!chat help", 0)
    for kind in ("mention", "command"):
        assert gate.check(Turn(line, Trigger(kind, kind, "help"))) is None, kind  # type: ignore[arg-type]
    held = gate.check(Turn(line, Trigger("trigger_word", "popcorn", "popcorn")))
    assert isinstance(held, Hold) and held.reason.startswith("chat_share: ")
