"""Hostile events over a real nats-server: huge mentions, oversized and deeply nested events.

Every event is published as the bridge publishes it (or, for garbage, as raw bytes on the
subject the bridge uses); the service runs in-process against the fake LLM.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kryten_llm.events import CUT_MARK, chat_subject
from kryten_llm.types import ChannelKey
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM, last_user_message
from tests.support.nats_server import NatsServer
from tests.support.service import BOT, CHANNEL_A, make_settings, read_records, running_service

HUGE_MENTION_BYTES = 600 * 1024
DEFAULT_CHAT_CHARS = 4000
REQUEST_BYTES_BOUND = 16 * 1024
"""A prompt with one bounded line (plus system prompt and history) stays well below this."""

ROOM_A = ChannelKey("cytu.be", CHANNEL_A)


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


def huge_text() -> str:
    """A mention whose bridge event is about 600 KB: escaped `&` included, as CyTube sends."""
    unit = "lorem & ipsum "
    return f"{BOT} " + unit * (HUGE_MENTION_BYTES // (len(unit) + 4))


def request_bytes(body: dict[str, Any]) -> int:
    return len(json.dumps(body).encode())


async def test_a_600_kb_mention_reaches_prompt_record_and_history_bounded(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_in_turn("That was a lot.", "Mostly lorem ipsum, friend.")
    settings = make_settings(nats_server.url, fake_llm.base_url)
    text = huge_text()
    cleaned_after_name = " ".join(text.split())[len(BOT) + 1 :]
    async with running_service(settings) as service:
        await bridge.chat(CHANNEL_A, "Alice", text)
        assert len(await bridge.wait_for_says(1)) == 1
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} what did Alice say?")
        assert len(await bridge.wait_for_says(2)) == 2
        remembered = service.pipeline.context.snapshot(ROOM_A, "nobody").chat
    first, second = fake_llm.requests
    assert request_bytes(first) < REQUEST_BYTES_BOUND
    asked = last_user_message(first)
    assert "lorem & ipsum" in asked and "…[cut " in asked
    # The history entry, as the next prompt shows it, is the same bounded line.
    assert request_bytes(second) < REQUEST_BYTES_BOUND
    assert "Alice: " in last_user_message(second) and "…[cut " in last_user_message(second)
    alice_lines = [line for user, line in remembered if user == "Alice"]
    assert len(alice_lines) == 1 and len(alice_lines[0]) < DEFAULT_CHAT_CHARS + 30
    records = [r for r in read_records(settings) if r["username"] == "Alice"]
    assert len(records) == 1
    message = records[0]["message"]
    cut = len(" ".join(text.split())) - DEFAULT_CHAT_CHARS
    assert message.endswith(CUT_MARK.format(chars=cut))
    assert len(message) == DEFAULT_CHAT_CHARS + len(CUT_MARK.format(chars=cut))
    assert cleaned_after_name.startswith(message[len(BOT) + 1 : 200])


async def test_events_over_the_byte_limit_are_dropped_before_decoding(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    fake_llm.reply_with("Fine.")
    settings = make_settings(
        nats_server.url,
        fake_llm.base_url,
        listener={"max_chat_chars": 320, "max_event_bytes": 65_536},
    )
    async with running_service(settings) as service:
        await bridge.chat(CHANNEL_A, "Mallory", f"{BOT} " + "x" * 100_000)
        await bridge.chat(CHANNEL_A, "Mallory", f"{BOT} " + "y" * 100_000)
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} " + "z" * 2_000)
        says = await bridge.wait_for_says(1)
        assert service.listener is not None
        assert service.listener.oversized == 2
    assert len(says) == 1
    assert len(fake_llm.requests) == 1
    assert "zzz" in last_user_message(fake_llm.requests[0])
    assert "…[cut " in last_user_message(fake_llm.requests[0])
    warnings = [r.getMessage() for r in caplog.records if "max_event_bytes" in r.getMessage()]
    assert len(warnings) == 1, warnings  # throttled: one line for the burst


async def test_a_big_userlist_is_not_dropped(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    users = [
        {
            "name": f"viewer{i:05d}",
            "rank": 2 if i == 7 else 1,
            "profile": {"image": f"https://i.example/{i:05d}.png", "text": "hi " * 20},
            "meta": {"afk": False, "muted": False, "smuted": False, "aliases": []},
        }
        for i in range(2500)
    ]
    assert 300_000 < len(json.dumps(users)) < 1_000_000
    async with running_service(make_settings(nats_server.url, fake_llm.base_url)) as service:
        await bridge.publish(CHANNEL_A, "userlist", users)
        await bridge.quiet_for(1.0)
        assert service.pipeline.ranks.user_count(ROOM_A) == 2500
        assert service.pipeline.ranks.rank_of(ROOM_A, "viewer00007") == 2
        assert service.listener is not None and service.listener.oversized == 0


DEPTH = 100_000


async def test_deeply_nested_events_are_counted_drops_not_tracebacks(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    fake_llm.reply_with("Still standing.")
    nested = b"[" * DEPTH + b"]" * DEPTH
    in_payload = (
        b'{"event_name": "chatMsg", "payload": '
        + nested
        + b', "channel": "420Grindhouse", "domain": "cytu.be"}'
    )
    garbage = [
        (chat_subject(CHANNEL_A, "chatMsg"), nested),
        (chat_subject(CHANNEL_A, "chatMsg"), in_payload),
        (chat_subject(CHANNEL_A, "userlist"), in_payload.replace(b"chatMsg", b"userlist")),
    ]
    caplog.set_level(logging.INFO)
    async with running_service(make_settings(nats_server.url, fake_llm.base_url)) as service:
        for subject, data in garbage:
            await bridge.nc.publish(subject, data)
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} still there?")
        says = await bridge.wait_for_says(1)
        assert service.pipeline.malformed.total == len(garbage)
    assert [s["args"]["message"] for s in says] == ["Still standing."]
    assert not [r for r in caplog.records if r.exc_info], "no traceback for malformed input"
    reports = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(reports) == 1 and "nested too deeply" in reports[0], reports
