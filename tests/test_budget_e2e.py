"""Daily budgets end to end: threshold events on the bus once each, then silence or a switch."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer
from tests.support.service import BOT, CHANNEL_A, make_settings, read_records, running_service

# The fake reports 7 completion tokens per reply: at $1,000,000 per million completion
# tokens (prompts free), one reply costs $7, and with `max_tokens` 7 that is also what each
# reply reserves (the budget is hard: decide/ledger.py). A $35 budget crosses 80% on the 4th
# reply (28), and 90% and 100% on the 5th (35); a 6th does not fit.
PRICE = {"input_per_million_usd": 0.0, "output_per_million_usd": 1_000_000.0}
REPLY_MAX_TOKENS = 7
TOPICS = ("kicks", "punches", "villains", "montages", "stunts", "popcorn", "sequels")


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


async def collect_budget_events(url: str, sink: list[dict[str, Any]]) -> Any:
    nc = await nats.connect(url)

    async def on_msg(msg: Any) -> None:
        sink.append(json.loads(msg.data))

    await nc.subscribe("kryten.service.budget", cb=on_msg)
    await nc.flush()
    return nc


@pytest.mark.parametrize("action", ["silent", "cheaper_provider"])
async def test_budget_thresholds_fire_once_each_then_the_action_applies(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, action: str
) -> None:
    events: list[dict[str, Any]] = []
    nc = await collect_budget_events(nats_server.url, events)
    usage: dict[str, Any] = {
        "prices": {"fake-model": PRICE},
        "daily_budget_usd": 35.0,
        "on_budget_exhausted": action,
    }
    providers: dict[str, Any] = {"fake": {"max_tokens": REPLY_MAX_TOKENS}}
    if action == "cheaper_provider":
        usage["cheaper_provider"] = "cheap"
        providers["cheap"] = {
            "type": "openai_compatible",
            "base_url": fake_llm.base_url,
            "model": "cheap-model",
            "priority": 500,
        }
    settings = make_settings(
        nats_server.url,
        fake_llm.base_url,
        usage=usage,
        llm_providers=providers,
        validation={"history_size": 0},
    )  # similar echoes are fine here
    fake_llm.echo(prefix="About ")
    try:
        async with running_service(settings):
            for i, topic in enumerate(TOPICS):
                await bridge.chat(CHANNEL_A, f"user{i}", f"{BOT} what about {topic}?")
                await bridge.wait_for_says(min(i + 1, 5), timeout=5)
            await bridge.quiet_for(0.5)
    finally:
        await nc.close()
    thresholds = [e["threshold_percent"] for e in events if e.get("scope") == "global"]
    assert thresholds == [80, 90, 100], events
    assert all(e["service"] == "llm" for e in events)
    records = read_records(settings)
    outcomes = [r["outcome"] for r in records]
    assert outcomes[:5] == ["sent"] * 5
    published = sum(len(r["parts"]) for r in records if r["outcome"] == "sent")
    assert len(bridge.says()) == published  # nothing was said beyond the sent records
    if action == "silent":
        assert outcomes[5:] == ["budget", "budget"]
        assert "daily" in records[5]["reason"] or "budget" in records[5]["reason"]
    else:
        assert outcomes[5:] == ["sent", "sent"]
        assert [m["model"] for m in fake_llm.requests[5:]] == ["cheap-model", "cheap-model"]
