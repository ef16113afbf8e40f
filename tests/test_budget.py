"""Token accounting, prices, daily budgets, threshold events and the exhausted-budget action."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from kryten_llm.config import ModelPrice, ProviderSettings, UsageSettings, build_settings
from kryten_llm.decide.budget import UsageTracker, estimate_tokens
from kryten_llm.types import ChannelKey, ChatMessage, LLMRequest, LLMResult

LOUNGE = ChannelKey("cytu.be", "lounge")
PRICES = {"big-model": ModelPrice(input_per_million_usd=10.0, output_per_million_usd=30.0)}


class Now:
    def __init__(self) -> None:
        self.value = datetime(2025, 3, 1, 23, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.value


def result(
    prompt: int | None = 1000,
    completion: int | None = 1000,
    model: str = "big-model",
    text: str = "x" * 40,
    provider: str = "main",
) -> LLMResult:
    return LLMResult(
        text=text,
        provider=provider,
        model=model,
        latency_ms=1.0,
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


def tracker(
    events: list[dict[str, Any]] | None = None, now: Now | None = None, **settings: Any
) -> UsageTracker:
    values: dict[str, Any] = {"prices": PRICES} | settings
    sink = events if events is not None else []
    return UsageTracker(
        UsageSettings(**values),
        {"main": ProviderSettings(model="big-model"), "cheap": ProviderSettings(model="tiny")},
        on_budget_event=sink.append,
        now=now or Now(),
    )


def test_cost_from_reported_tokens() -> None:
    cost = tracker().record(result(1000, 2000), LOUNGE, "alice")
    assert cost.usd == pytest.approx((1000 * 10 + 2000 * 30) / 1e6)
    assert (cost.prompt_tokens, cost.completion_tokens, cost.estimated) == (1000, 2000, False)
    assert cost.priced


def test_tokens_estimated_when_absent() -> None:
    request = LLMRequest(system="s" * 400, messages=(ChatMessage("user", "u" * 80),))
    cost = tracker().record(result(None, None, text="y" * 41), LOUNGE, "alice", request=request)
    assert cost.estimated
    assert (cost.prompt_tokens, cost.completion_tokens) == (120, 11)
    assert estimate_tokens("") == 0 and estimate_tokens("abc") == 1


def test_price_falls_back_to_configured_model_and_unknown_is_free() -> None:
    usage = tracker()
    dated = usage.record(result(model="big-model-2025-01-01"), ChannelKey("cytu.be", "c"), "u")
    assert dated.priced and dated.usd > 0  # the provider "main" is configured as big-model
    free = usage.record(
        result(model="mystery", provider="unknown"), ChannelKey("cytu.be", "c"), "u"
    )
    assert not free.priced and free.usd == 0.0


def test_thresholds_fire_once_each(caplog: pytest.LogCaptureFixture) -> None:
    events: list[dict[str, Any]] = []
    usage = tracker(events, daily_budget_usd=1.0)
    caplog.set_level(logging.INFO, logger="kryten_llm.decide.budget")
    # Each call costs 0.04 USD (1000 in + 1000 out at 10/30 per million).
    for _ in range(40):
        usage.record(result(), LOUNGE, "alice")
    fired = [(e["scope"], e["threshold_percent"]) for e in events]
    assert fired == [("global", 80), ("global", 90), ("global", 100)]
    assert events[-1]["exhausted"] is True and events[-1]["action"] == "silent"
    assert events[0]["spent_usd"] == pytest.approx(0.8)
    assert "global daily budget at 100%" in caplog.text


def test_one_big_reply_crosses_several_thresholds_at_once() -> None:
    events: list[dict[str, Any]] = []
    usage = tracker(events, channel_daily_budget_usd=0.05)
    usage.record(result(1000, 1500), ChannelKey("cytu.be", "Lounge"), "bob")  # 0.055 USD
    assert [(e["scope"], e["key"], e["threshold_percent"]) for e in events] == [
        ("channel", "cytu.be/lounge", 80),
        ("channel", "cytu.be/lounge", 90),
        ("channel", "cytu.be/lounge", 100),
    ]


def test_silent_when_exhausted() -> None:
    usage = tracker(user_daily_budget_usd=0.05)
    assert usage.allow(LOUNGE, "alice").allowed
    usage.record(result(), LOUNGE, "alice")
    usage.record(result(), LOUNGE, "alice")
    decision = usage.allow(LOUNGE, "ALICE")
    assert not decision.allowed and decision.provider is None
    assert "user ALICE" in decision.reason
    assert usage.allow(LOUNGE, "bob").allowed  # other users unaffected


def test_cheaper_provider_when_exhausted() -> None:
    usage = tracker(
        channel_daily_budget_usd=0.01,
        on_budget_exhausted="cheaper_provider",
        cheaper_provider="cheap",
    )
    usage.record(result(), LOUNGE, "alice")
    decision = usage.allow(LOUNGE, "carol")
    assert decision.allowed and decision.provider == "cheap"
    assert usage.allow(ChannelKey("cytu.be", "other"), "carol").provider is None
    assert usage.allow(ChannelKey("other.example", "lounge"), "carol").provider is None


def test_cheaper_provider_mode_needs_a_provider() -> None:
    with pytest.raises(ValidationError):
        UsageSettings(on_budget_exhausted="cheaper_provider")


def test_budgets_reset_at_utc_midnight() -> None:
    events: list[dict[str, Any]] = []
    now = Now()
    usage = tracker(events, now=now, daily_budget_usd=0.04)
    usage.record(result(), LOUNGE, "alice")
    assert not usage.allow(LOUNGE, "alice").allowed
    assert len(events) == 3
    now.value += timedelta(hours=1)  # 00:00 UTC the next day
    assert usage.allow(LOUNGE, "alice").allowed
    assert usage.snapshot()["global_usd"] == 0.0
    usage.record(result(), LOUNGE, "alice")
    assert len(events) == 6  # the new day's thresholds fire again, once each
    assert events[-1]["day"] == "2025-03-02"


def test_per_user_memory_is_bounded() -> None:
    usage = tracker(user_daily_budget_usd=1.0, max_tracked_users=50)
    for i in range(500):
        usage.record(result(), LOUNGE, f"user{i}")
    assert usage.snapshot()["users_tracked"] == 50


def test_broken_event_callback_does_not_break_accounting(caplog: pytest.LogCaptureFixture) -> None:
    def explode(event: dict[str, object]) -> None:
        raise RuntimeError("nats down")

    usage = UsageTracker(
        UsageSettings(prices=PRICES, daily_budget_usd=0.01), on_budget_event=explode, now=Now()
    )
    cost = usage.record(result(), LOUNGE, "alice")
    assert cost.usd > 0
    assert "on_budget_event callback failed" in caplog.text
    assert not usage.allow(LOUNGE, "alice").allowed


def test_zero_budget_means_no_spending() -> None:
    usage = tracker(daily_budget_usd=0.0)
    assert not usage.allow(LOUNGE, "alice").allowed


def test_reconfigure_keeps_todays_spend() -> None:
    usage = tracker(daily_budget_usd=1.0)
    usage.record(result(), LOUNGE, "alice")
    usage.reconfigure(UsageSettings(prices=PRICES, daily_budget_usd=0.03))
    assert not usage.allow(LOUNGE, "alice").allowed


def test_settings_sections_load_from_config_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRYTEN_LLM_USAGE_DAILY_BUDGET_USD", "2.5")
    monkeypatch.setenv("KRYTEN_LLM_LLM_MANAGER_MAX_RETRIES", "4")
    monkeypatch.setenv("KRYTEN_LLM_LLM_PROVIDERS", '{"a": {"model": "m", "fallback": []}}')
    settings = build_settings(
        {"usage": {"prices": {"m": {"input_per_million_usd": 1, "output_per_million_usd": 2}}}},
        "test",
    )
    assert settings.usage.daily_budget_usd == 2.5
    assert settings.llm_manager.max_retries == 4
    assert settings.llm_providers["a"].model == "m"
    assert settings.usage.prices["m"].output_per_million_usd == 2
