"""Hard, durable daily budgets: reserve before each call, settle after, keep it in KV.

Real daemon, real nats-server with JetStream, real HTTP LLM. Each reply's answer costs
exactly $0.10 (7 completion tokens at the price below, prompts free), and `max_tokens` is 7,
so the reservation is an upper bound and a $1.05 budget fits ten replies, not eleven.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer
from tests.support.service import BOT, CHANNEL_A, make_settings, read_records, running_service

REPLY_USD = 0.10
BUDGET_USD = 1.05
TIMEOUT_SECONDS = 15.0


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def budget_settings(nats_server: NatsServer, fake_llm: FakeLLM, prefix: str | None = None):  # type: ignore[no-untyped-def]
    return make_settings(
        nats_server.url,
        fake_llm.base_url,
        llm_providers={"fake": {"max_tokens": 7, "timeout_seconds": 10}},
        usage={
            "daily_budget_usd": BUDGET_USD,
            "prices": {
                "fake-model": {
                    "input_per_million_usd": 0,
                    "output_per_million_usd": REPLY_USD / 7 * 1_000_000,
                }
            },
        },
        state={"bucket_prefix": prefix or f"t{uuid.uuid4().hex[:12]}_"},
        validation={"history_size": 0},  # every reply one call: none regenerated
    )


async def ask(nc: NatsClient, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(f"kryten.llm.{endpoint}", json.dumps(body).encode(), timeout=20)
    return dict(json.loads(msg.data))


async def test_twenty_replies_in_flight_spend_at_most_the_budget(
    nats_server: NatsServer, fake_llm: FakeLLM
) -> None:
    fake_llm.reply_with("an answer", delay_seconds=1.0)
    config = budget_settings(nats_server, fake_llm)
    bridge = await Bridge.connect(nats_server.url)
    try:
        async with running_service(config):
            for n in range(20):
                await bridge.chat(CHANNEL_A, f"user{n}", f"{BOT}, question {n}?")
            await bridge.wait_for_says(10, timeout=TIMEOUT_SECONDS)
            await asyncio.sleep(1.5)  # any reply past the budget would land by now
    finally:
        await bridge.close()
    records = read_records(config)
    sent = [r for r in records if r["outcome"] == "sent"]
    held = [r for r in records if r["outcome"] == "budget"]
    assert len(sent) == 10, [
        (r["outcome"], r["reason"][:80]) for r in records if r["outcome"] != "budget"
    ]
    assert len(held) == 10
    assert sum(r["cost_usd"] or 0 for r in records) <= BUDGET_USD


async def test_a_restart_keeps_the_days_spend(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("fine")
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    async with running_service(budget_settings(nats_server, fake_llm, prefix)):
        answers = [await ask(nc, "complete", {"prompt": "hi"}) for _ in range(6)]
        assert all(a["ok"] for a in answers)
    async with running_service(budget_settings(nats_server, fake_llm, prefix)):
        status = await ask(nc, "status", {})
        more = [await ask(nc, "complete", {"prompt": "hi"}) for _ in range(6)]
    assert status["budget"]["spent_usd"] == pytest.approx(6 * REPLY_USD)
    assert [a["ok"] for a in more] == [True] * 4 + [False] * 2
    assert more[-1]["error"]["code"] == "budget_exhausted"


async def test_two_instances_share_one_budget(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("fine", delay_seconds=0.5)
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    first = budget_settings(nats_server, fake_llm, prefix)
    second = budget_settings(nats_server, fake_llm, prefix)
    async with running_service(first) as one, running_service(second) as two:
        answers = await asyncio.gather(*(ask(nc, "complete", {"prompt": "x"}) for _ in range(20)))
        assert one.api is not None and two.api is not None
        by_instance = (one.api.answered.get("ok", 0), two.api.answered.get("ok", 0))
    assert sum(a["ok"] for a in answers) == 10
    assert all(a["error"]["code"] == "budget_exhausted" for a in answers if not a["ok"])
    assert min(by_instance) > 0  # both served, one budget
