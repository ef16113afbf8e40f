"""Two rooms with one name: `cytu.be/Lounge` and `other.example/lounge` share nothing.

The config allows the same channel name on two CyTube servers, and the bridge's subjects carry
no domain (both rooms publish on `kryten.events.cytube.lounge.*`; only the envelope says which
server). The service runs over a real nats-server, events are published byte for byte as the
bridge publishes them, and each test shows one kind of per-channel state kept apart: rate
limits, chat history, the operator's pause. Every reply must go back to its own server
(`meta.domain` of the command).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from kryten_llm.config import Settings
from kryten_llm.ops.control import CONTROL_SUBJECT_PREFIX
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer
from tests.support.service import (
    BOT,
    LOOSE_LIMITS,
    make_settings,
    read_records,
    running_service,
)

HERE = ("cytu.be", "Lounge")
THERE = ("other.example", "lounge")
TOKEN = "rooms-test-token-0123456789"
REQUEST_TIMEOUT_SECONDS = 5.0


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


def two_rooms(nats_server: NatsServer, fake_llm: FakeLLM, **overrides: Any) -> Settings:
    rooms = [{"domain": d, "channel": c, "username": BOT} for d, c in (HERE, THERE)]
    return make_settings(nats_server.url, fake_llm.base_url, cytube=rooms, **overrides)


async def say(bridge: Bridge, room: tuple[str, str], user: str, text: str) -> None:
    domain, channel = room
    await bridge.chat(channel, user, text, domain=domain)


async def ask(bridge: Bridge, room: tuple[str, str], user: str, text: str) -> None:
    await say(bridge, room, user, f"{BOT} {text}")


async def replied(bridge: Bridge, count: int) -> list[dict[str, Any]]:
    says = await bridge.wait_for_says(count)
    assert len(says) == count, says
    return says


def where(command: dict[str, Any]) -> tuple[str, str]:
    return command["meta"]["domain"], command["meta"]["channel"]


def outcomes(settings: Settings) -> dict[str, tuple[str, str, str]]:
    """Each user's record as (domain, outcome, machine reason); every user asks once."""
    return {
        r["username"]: (r["domain"], r["outcome"], r["reason"].split(":", 1)[0])
        for r in read_records(settings)
    }


async def test_a_cooldown_spent_in_one_room_does_not_hold_back_the_other(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.echo(prefix="heard: ")
    settings = two_rooms(
        nats_server, fake_llm, rate_limits={**LOOSE_LIMITS, "global_cooldown_seconds": 3600}
    )
    async with running_service(settings):
        await ask(bridge, HERE, "Alice", "first question here")
        assert where((await replied(bridge, 1))[0]) == HERE
        await ask(bridge, THERE, "Bob", "first question there")
        assert where((await replied(bridge, 2))[1]) == THERE
        await ask(bridge, HERE, "Carol", "second question here")  # inside Lounge's cooldown
        await ask(bridge, THERE, "Dave", "second question there")  # ...and lounge's
        await bridge.quiet_for(0.5)
        assert len(bridge.says()) == 2
    assert outcomes(settings) == {
        "Alice": ("cytu.be", "sent", ""),
        "Bob": ("other.example", "sent", ""),
        "Carol": ("cytu.be", "rate_limited", "global_cooldown"),
        "Dave": ("other.example", "rate_limited", "global_cooldown"),
    }


def prompt_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m["content"]) for m in body["messages"])


async def test_the_prompt_for_one_room_holds_only_that_rooms_chat(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reset()
    fake_llm.reply_in_turn("Bananas, I gather.", "Pineapple, I think.")
    async with running_service(two_rooms(nats_server, fake_llm)):
        await say(bridge, HERE, "Carol", "the secret fruit here is pineapple")
        await say(bridge, THERE, "Dave", "over here we only talk about bananas")
        await ask(bridge, THERE, "Alice", "which fruit was mentioned?")
        await replied(bridge, 1)
        await ask(bridge, HERE, "Alice", "and in this room?")
        says = await replied(bridge, 2)
    assert [where(c) for c in says] == [THERE, HERE]
    there, here = (prompt_text(body) for body in fake_llm.requests)
    assert "bananas" in there and "pineapple" not in there
    assert "pineapple" in here and "bananas" not in here
    assert "which fruit" not in here, "Alice's talk in the other room is not this room's"


async def control(nc: Any, endpoint: str, body: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    msg = await nc.request(
        f"{CONTROL_SUBJECT_PREFIX}.{endpoint}",
        json.dumps(body).encode(),
        timeout=REQUEST_TIMEOUT_SECONDS,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    return (json.loads(msg.data) if msg.data else None), dict(msg.headers or {})


async def test_pausing_one_room_leaves_the_other_answering(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.echo(prefix="heard: ")
    settings = two_rooms(nats_server, fake_llm, control={"token": TOKEN})
    operator = await nats.connect(nats_server.url)
    try:
        async with running_service(settings):
            answer, headers = await control(operator, "pause", {"channel": "lounge"})
            assert headers.get("Nats-Service-Error-Code") == "400", "a bare name is ambiguous"
            answer, _ = await control(operator, "pause", {"channel": "other.example/lounge"})
            assert answer == {"ok": True, "paused": ["other.example/lounge"]}
            await ask(bridge, THERE, "Alice", "anyone there?")
            await ask(bridge, HERE, "Bob", "anyone here?")
            assert [where(c) for c in await replied(bridge, 1)] == [HERE]
            answer, _ = await control(operator, "resume", {"channel": "other.example/lounge"})
            assert answer == {"ok": True, "paused": []}
            await ask(bridge, THERE, "Carol", "and now?")
            assert [where(c) for c in await replied(bridge, 2)] == [HERE, THERE]
    finally:
        await operator.close()
    assert outcomes(settings) == {
        "Alice": ("other.example", "paused", "channel paused by the operator"),
        "Bob": ("cytu.be", "sent", ""),
        "Carol": ("other.example", "sent", ""),
    }
