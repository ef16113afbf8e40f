"""Never silently absent: when no LLM answers, a direct mention gets the fallback line.

Over a real nats-server: chat is published as the bridge publishes it, `say` commands are read
off `kryten.robot.command`, the LLM is the fake OpenAI-compatible server answering 500 (and,
once the breaker opens, not asked at all), and the JSONL records are read as written. Time is
the chat's own (`EventClock`), so "ten minutes later" is a timestamp, not a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kryten_llm.config import Settings
from kryten_llm.daemon.service import LLMService
from kryten_llm.pipeline import EventClock
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer
from tests.support.service import BOT, CHANNEL_A, make_settings, read_records

FALLBACK = "Give me a moment, my brain is buffering."
COOLDOWN_SECONDS = 600
RECORD_TIMEOUT_SECONDS = 15.0
QUIET_SECONDS = 0.3
Record = dict[str, Any]


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


def outage_settings(nats_server: NatsServer, fake_llm: FakeLLM, **overrides: Any) -> Settings:
    """Every provider down: the one fake answers 500; one failure opens its breaker."""
    fake_llm.fail_with(500, "upstream exploded")
    overrides.setdefault(
        "validation",
        {"fallback_response": FALLBACK, "fallback_cooldown_seconds": COOLDOWN_SECONDS},
    )
    return make_settings(
        nats_server.url,
        fake_llm.base_url,
        llm_manager={
            "max_retries": 0,
            "breaker_min_calls": 1,
            "breaker_failure_rate": 0.5,
            "breaker_cooldown_seconds": 3600,
        },
        triggers=[{"name": "movies", "patterns": ["movie"], "cooldown_seconds": 0}],
        **overrides,
    )


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[LLMService]:
    service = LLMService(settings, log_level="DEBUG")
    service.pipeline_options = {"clock": EventClock()}
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


class Room:
    """One channel, chat at chosen times after the service started, one record per line."""

    def __init__(self, bridge: Bridge, service: LLMService) -> None:
        self.bridge = bridge
        self.service = service
        self.base_ms = (service.start_ms // 1000 + 10) * 1000
        self.lines = 0

    async def say(self, user: str, text: str, at_seconds: float) -> None:
        """Publish a line and wait until its record is written (so records keep chat order)."""
        self.lines += 1
        time_ms = self.base_ms + round(at_seconds * 1000)
        await self.bridge.chat(CHANNEL_A, user, text, time_ms=time_ms)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORD_TIMEOUT_SECONDS
        while self.service.response_log.stats()["written"] < self.lines:
            assert loop.time() < deadline, f"no record for {text!r}"
            await asyncio.sleep(0.02)


def summary(records: list[Record]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(r["username"], r["outcome"], tuple(r["parts"])) for r in records]


async def test_a_mention_during_an_outage_gets_the_fallback_line_once_per_cooldown(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    settings = outage_settings(nats_server, fake_llm)
    async with running(settings) as service:
        room = Room(bridge, service)
        await room.say("Alice", f"{BOT} are you there?", 0)
        await room.say("Alice", f"{BOT} hello??", 60)  # within her fallback cooldown
        await room.say("Bob", f"{BOT} what about me?", 90)  # someone else: told once too
        await room.say("Carol", "what a movie", 120)  # a trigger word asked nothing
        await room.say("Alice", f"{BOT} still down?", 60 + COOLDOWN_SECONDS)
        await bridge.quiet_for(QUIET_SECONDS)
        says = [s["args"]["message"] for s in bridge.says()]
    records = read_records(settings)
    assert summary(records) == [
        ("Alice", "fallback", (FALLBACK,)),
        ("Alice", "llm_failed", ()),
        ("Bob", "fallback", (FALLBACK,)),
        ("Carol", "llm_failed", ()),
        ("Alice", "fallback", (FALLBACK,)),
    ]
    assert says == [FALLBACK] * 3
    # The first failure opened the breaker: later ones never reached the provider at all,
    # and still the room was told once.
    assert [a["outcome"] for a in records[0]["attempts"]] == ["http_500"]
    assert [a["outcome"] for a in records[2]["attempts"]] == ["breaker_open"]
    assert len(fake_llm.requests) == 1
    assert records[0]["reason"].startswith("all providers failed")
    assert "fallback line already given to this user" in records[1]["reason"]
    assert all(r["dry_run"] is False for r in records)


async def test_no_fallback_line_configured_means_silence(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    settings = outage_settings(nats_server, fake_llm, validation={"fallback_response": ""})
    async with running(settings) as service:
        room = Room(bridge, service)
        await room.say("Alice", f"{BOT} are you there?", 0)
        await bridge.quiet_for(QUIET_SECONDS)
    assert bridge.says() == []
    assert summary(read_records(settings)) == [("Alice", "llm_failed", ())]


async def test_the_fallback_line_passes_the_guard_like_any_reply(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    """A configured line that reads as a command is neutralised, not posted as one."""
    settings = outage_settings(
        nats_server, fake_llm, validation={"fallback_response": "/clear the chat, I am out"}
    )
    async with running(settings) as service:
        room = Room(bridge, service)
        await room.say("Alice", f"{BOT} are you there?", 0)
        says = await bridge.wait_for_says(1)
    assert [s["args"]["message"] for s in says] == ["clear the chat, I am out"]
    assert summary(read_records(settings)) == [("Alice", "fallback", ("clear the chat, I am out",))]


async def test_in_dry_run_the_fallback_is_recorded_not_posted(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    settings = outage_settings(nats_server, fake_llm, testing={"dry_run": True})
    async with running(settings) as service:
        room = Room(bridge, service)
        await room.say("Alice", f"{BOT} are you there?", 0)
        await bridge.quiet_for(QUIET_SECONDS)
    assert bridge.says() == []
    records = read_records(settings)
    assert summary(records) == [("Alice", "fallback", (FALLBACK,))]
    assert records[0]["dry_run"] is True
