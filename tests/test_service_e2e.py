"""End to end over a real nats-server and a real HTTP LLM: chat in, say command out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from kryten_llm.reply.guard import is_command_like
from tests.support.bridge import Bridge, now_ms
from tests.support.fake_llm import FakeLLM, completion, last_user_message
from tests.support.nats_server import NatsServer, free_port
from tests.support.service import (
    BOT,
    CHANNEL_A,
    CHANNEL_B,
    DOMAIN_A,
    DOMAIN_B,
    make_settings,
    running_service,
)

QUIET_SECONDS = 0.8
TOPICS = (
    "roundhouse kicks",
    "popcorn flavours",
    "villain monologues",
    "training montages",
    "stunt doubles",
)


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


def settings_for(nats_server: NatsServer, fake_llm: FakeLLM, **overrides: object):  # type: ignore[no-untyped-def]
    return make_settings(nats_server.url, fake_llm.base_url, **overrides)


async def test_mention_is_answered_in_the_channel_it_came_from(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.echo(prefix="echo: ")
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, "Alice", f"hey {BOT}, what is up in A?")
        await bridge.chat(CHANNEL_B, "Bob", "cynthia, anything on in B?", domain=DOMAIN_B)
        says = await bridge.wait_for_says(2)
    assert len(says) == 2
    by_channel = {s["meta"]["channel"]: s for s in says}
    assert by_channel[CHANNEL_A]["meta"]["domain"] == DOMAIN_A
    assert by_channel[CHANNEL_B]["meta"]["domain"] == DOMAIN_B
    assert "what is up in A?" in by_channel[CHANNEL_A]["args"]["message"]
    assert "anything on in B?" in by_channel[CHANNEL_B]["args"]["message"]
    for say in says:
        assert say["meta"]["source"] == "llm"
        assert set(say["meta"]) >= {"timestamp", "request_id", "domain", "channel"}


async def test_mention_is_a_whole_word_and_the_name_is_removed_for_the_llm(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with("Hi there.")
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, "Alice", "we were out-cynthiaing everyone")
        await bridge.chat(CHANNEL_A, "Alice", "CynthiaRothbotted again")
        await bridge.quiet_for(QUIET_SECONDS)
        assert bridge.says() == []
        await bridge.chat(CHANNEL_A, "Alice", "@CYNTHIAROTHBOT: tell me a joke")
        await bridge.wait_for_says(1)
    assert len(fake_llm.requests) == 1
    request_block = last_user_message(fake_llm.requests[0]).split("Alice says to you:", 1)[1]
    assert "tell me a joke" in request_block
    assert BOT.lower() not in request_block.lower()


async def test_messages_that_must_not_be_answered(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with("I should not be here.")
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, BOT.lower(), f"{BOT} talking to myself")
        await bridge.chat(CHANNEL_A, "Alice", f"!roll {BOT}")
        await bridge.chat(CHANNEL_A, "Mallory", f"{BOT} hi", meta={"shadow": True})
        await bridge.chat(CHANNEL_A, "[server]", f"{BOT} was promoted")
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} from history", time_ms=now_ms() - 60_000)
        await bridge.chat(CHANNEL_A, "Alice", "   ")
        await bridge.quiet_for(QUIET_SECONDS)
    assert bridge.says() == []
    assert fake_llm.requests == []


async def test_replayed_history_one_ms_before_start_is_not_answered(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with("Hello.")
    async with running_service(settings_for(nats_server, fake_llm)) as service:
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} old", time_ms=service.start_ms - 1)
        await bridge.quiet_for(QUIET_SECONDS)
        assert bridge.says() == []
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} new", time_ms=service.start_ms + 1)
        assert len(await bridge.wait_for_says(1)) == 1


async def test_html_escaped_message_reaches_the_llm_unescaped(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with("Sure.")
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, "Alice", f'{BOT} what\'s <b>up</b> & (why) "now"?')
        await bridge.wait_for_says(1)
    sent = last_user_message(fake_llm.requests[0])
    assert 'what\'s <b>up</b> & (why) "now"?' in sent
    assert "&#39;" not in sent and "&amp;" not in sent and "&#40;" not in sent


async def test_link_markup_is_reduced_to_the_url(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with("Nice link.")
    raw = (
        f'{BOT} look <a href="https://example.com/x?a=1&amp;b=2" target="_blank" '
        'rel="noopener noreferrer">https://example.com/x?a=1&amp;b=2</a>'
    )
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, "Alice", raw, escape=False)
        await bridge.wait_for_says(1)
    sent = last_user_message(fake_llm.requests[0])
    assert "look https://example.com/x?a=1&b=2" in sent
    assert "<a" not in sent


async def test_long_reply_is_split_and_every_part_fits(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    sentence = "This sentence is here to make the reply long enough to need splitting. "
    fake_llm.reply_with(sentence * 8)
    settings = settings_for(
        nats_server, fake_llm, message_processing={"max_message_length": 100, "max_parts": 10}
    )
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} talk a lot")
        says = await bridge.wait_for_says(8)
        await bridge.quiet_for(0.3)
        says = bridge.says()
    assert len(says) >= 2
    for say in says:
        text = say["args"]["message"]
        assert 0 < len(text.encode("utf-16-le")) // 2 <= 100


@pytest.mark.parametrize("evil", ["/kick alice", "  /clear", "/me /clear", "\n/ban bob"])
async def test_llm_command_output_is_never_published_as_a_command(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, evil: str
) -> None:
    fake_llm.reply_with(evil)
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} say something")
        await bridge.wait_for_says(1, timeout=3)
        await bridge.quiet_for(0.3)
    for say in bridge.says():
        text = say["args"]["message"]
        assert not is_command_like(text, ["/", "!", "."]), text
        assert not text.lstrip().startswith("/")


@pytest.mark.slow
async def test_five_simultaneous_mentions_overlap(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    async def answer_the_asker(body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        asked = last_user_message(body).split("says to you: <<<", 1)[1].split(">>>", 1)[0]
        return web.json_response(completion(f"ok {asked}"))

    fake_llm.behaviour = answer_the_asker
    async with running_service(settings_for(nats_server, fake_llm)):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(
            *(
                bridge.chat(CHANNEL_A, f"user{i}", f"{BOT} what about {topic}?")
                for i, topic in enumerate(TOPICS)
            )
        )
        says = await bridge.wait_for_says(5, timeout=15)
        elapsed = loop.time() - started
    assert len(says) == 5
    assert fake_llm.max_in_flight >= 3, fake_llm.max_in_flight
    # Serial handling would need 5 s of LLM time alone; generous bound for a noisy machine.
    assert elapsed < 4.5, elapsed
    assert sorted(s["args"]["message"] for s in says) == sorted(
        f"ok what about {topic}?" for topic in TOPICS
    )


@pytest.mark.slow
async def test_llm_failures_skip_the_message_and_the_next_is_answered(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = settings_for(
        nats_server,
        fake_llm,
        llm_providers={"fake": {"timeout_seconds": 0.5}},
        llm_manager={"max_retries": 0},
    )
    async with running_service(settings):
        for fault in ("500", "timeout"):
            bridge.clear()
            if fault == "500":
                fake_llm.fail_with(500, "internal error")
            else:
                fake_llm.hang(5)
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT} fail please ({fault})")
            await bridge.quiet_for(2.5)
            assert bridge.says() == [], fault
            fake_llm.reply_with(f"Back again after the {fault}.")
            await bridge.chat(CHANNEL_A, "Bob", f"{BOT} are you there? ({fault})")
            says = await bridge.wait_for_says(1)
            assert [s["args"]["message"] for s in says] == [f"Back again after the {fault}."]
    assert "llm_failed" in caplog.text


async def test_refused_connection_skips_and_the_next_message_is_answered(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    late_llm = FakeLLM(port=port)  # nothing listens on `port` yet: connections are refused
    settings = settings_for(
        nats_server,
        fake_llm,
        llm_providers={"fake": {"base_url": late_llm.base_url}},
        llm_manager={"max_retries": 0},
    )
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} anyone?")
        await bridge.quiet_for(1.5)
        assert bridge.says() == []
        await late_llm.start()
        try:
            late_llm.reply_with("Now I am here.")
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT} anyone now?")
            says = await bridge.wait_for_says(1)
        finally:
            await late_llm.stop()
    assert [s["args"]["message"] for s in says] == ["Now I am here."]
    assert "llm_failed" in caplog.text
    assert "sk-test" not in caplog.text


async def test_dry_run_publishes_nothing(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake_llm.reply_with("A line that stays in the log.")
    settings = settings_for(nats_server, fake_llm, testing={"dry_run": True})
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} hello?")
        await bridge.quiet_for(1.5)
    assert len(fake_llm.requests) == 1
    assert bridge.commands == []
    assert "[dry-run] would say" in caplog.text
    assert "A line that stays in the log." in caplog.text


async def test_malformed_events_are_logged_and_do_not_stop_the_bot(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    fake_llm.reply_with("Still here.")
    subject = f"kryten.events.cytube.{CHANNEL_A.lower()}.chatmsg"
    garbage = [
        b"not json",
        b"[1, 2, 3]",
        b'{"event_name": "chatMsg", "payload": null, "channel": "420Grindhouse", '
        b'"domain": "cytu.be"}',
        b'{"event_name": "chatMsg", "payload": {"username": 5, "msg": "x", "time": 1}, '
        b'"channel": "420Grindhouse", "domain": "cytu.be"}',
        b'{"event_name": "chatMsg", "payload": {"username": "a", "msg": "x"}, '
        b'"channel": "420Grindhouse", "domain": "cytu.be"}',
        b"\xff\xfe\x00",
    ]
    async with running_service(settings_for(nats_server, fake_llm)) as service:
        for data in garbage:
            await bridge.nc.publish(subject, data)
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} still alive?")
        says = await bridge.wait_for_says(1)
        # Envelope and payload problems alike: each counted, reported at most every few seconds.
        assert service.pipeline.malformed.total == len(garbage)
    assert [s["args"]["message"] for s in says] == ["Still here."]
    assert 1 <= caplog.text.count("malformed") < len(garbage)


async def test_events_for_an_unconfigured_domain_are_ignored(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with("Wrong room.")
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} hi", domain="other.example")
        await bridge.quiet_for(QUIET_SECONDS)
    assert bridge.says() == []
