"""When the bot holds back, end to end: triggers, limits, spam, loops, ranks, the JSONL record.

Everything goes over a real nats-server: chat is published byte for byte as the bridge does
(tests/support/bridge.py), `say` commands are read off `kryten.robot.command`, and the JSONL
response log is read after the service stops. Scenarios with cooldowns run on an `EventClock`
(time is each chatMsg's own `time`), so "an hour later" is a number in a payload, not a sleep.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web

from kryten_llm.config import RateLimitSettings, Settings, SpamSettings
from kryten_llm.daemon.service import LLMService, configured_secrets
from kryten_llm.decide.ranks import RankRegistry, userlist_bucket
from kryten_llm.events import chat_subject
from kryten_llm.pipeline import EventClock
from kryten_llm.response_log import ResponseLog, ResponseRecord
from kryten_llm.tools.replay import ReplayOptions, replay_transcript
from kryten_llm.tools.simulate import cytube_escape
from kryten_llm.tools.transcript import TranscriptEvent, parse_transcript
from kryten_llm.types import ChannelKey
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM, completion, last_user_message
from tests.support.nats_server import NatsServer
from tests.support.service import (
    BOT,
    CHANNEL_A,
    LOOSE_LIMITS,
    LOOSE_SPAM,
    make_settings,
    read_records,
)

DATA = Path(__file__).parent / "data"
RECORD_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.02
DEFAULT_LIMITS = RateLimitSettings().model_dump(mode="json")
DEFAULT_SPAM = SpamSettings().model_dump(mode="json")
"""Production defaults (the shared test settings are loose unless a test says otherwise)."""
REPLY_WAIT_SECONDS = 2.0
Record = dict[str, Any]


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


@pytest.fixture
def answer(fake_llm: FakeLLM) -> FakeLLM:
    """An instant, one-sentence answer: one chat line per reply, whatever was asked."""
    fake_llm.reply_with("Sure thing.")
    return fake_llm


def settings_for(nats_server: NatsServer, fake_llm: FakeLLM, **overrides: Any) -> Settings:
    # The repetition check would refuse the fake's identical answers: not what is tested here.
    overrides.setdefault("validation", {"history_size": 0})
    return make_settings(nats_server.url, fake_llm.base_url, **overrides)


@dataclass
class Timeline:
    """Synthetic chat times after the service's start, on whole seconds (exact as floats)."""

    base_ms: int

    def at(self, seconds: float) -> int:
        return self.base_ms + round(seconds * 1000)


class WatchedLog(ResponseLog):
    """The service's real JSONL log, which also shows the test each record as it is written."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.response_log, secrets=lambda: configured_secrets(settings))
        self.seen: list[ResponseRecord] = []

    def write(self, record: ResponseRecord) -> bool:
        self.seen.append(record)
        return super().write(record)


@asynccontextmanager
async def running(settings: Settings, **pipeline_options: Any) -> AsyncIterator[LLMService]:
    service = LLMService(settings, log_level="DEBUG")
    service.response_log = WatchedLog(settings)
    service.pipeline_options = dict(pipeline_options)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def watched(service: LLMService) -> WatchedLog:
    assert isinstance(service.response_log, WatchedLog)
    return service.response_log


def timeline(service: LLMService) -> Timeline:
    return Timeline((service.start_ms // 1000 + 10) * 1000)


async def poll(condition: Callable[[], bool], timeout: float = RECORD_TIMEOUT_SECONDS) -> bool:
    """True once `condition()` holds, False if it still does not after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if condition():
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    assert await poll(condition), f"timed out waiting for {what}"


async def wait_for_records(service: LLMService, count: int) -> None:
    """Until `count` records are on disk; the assertions that follow say what is missing."""
    await poll(lambda: service.response_log.stats()["written"] >= count)


def rank_is(ranks: RankRegistry, channel: str, name: str, rank: float) -> Callable[[], bool]:
    """The channels here are all on cytu.be (the bridge helper's default domain)."""
    return lambda: ranks.rank_of(ChannelKey("cytu.be", channel), name) == rank


@dataclass
class Chat:
    """Publishes chatMsg exactly as the bridge does, numbering each line's correlation id.

    The pipeline carries the id into the line's record, so records sort back into chat order
    (a held-back record is written at once, a reply's only after the LLM answered).
    """

    bridge: Bridge
    channel: str = CHANNEL_A
    count: int = 0

    async def say(self, user: str, text: str, time_ms: int) -> None:
        self.count += 1
        body = {
            "event_name": "chatMsg",
            "payload": {"username": user, "msg": cytube_escape(text), "meta": {}, "time": time_ms},
            "channel": self.channel,
            "domain": "cytu.be",
            "timestamp": datetime.now(UTC).isoformat(),
            "correlation_id": f"line-{self.count:05d}",
        }
        await self.bridge.nc.publish(
            chat_subject(self.channel, "chatMsg"), json.dumps(body).encode()
        )
        await self.bridge.nc.flush()


def in_chat_order(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: str(r["correlation_id"]))


def machine_reason(record: Record) -> str:
    """`user_cooldown`, not the seconds left; LLM failures say what the provider said."""
    return "" if record["outcome"] == "llm_failed" else str(record["reason"]).split(":", 1)[0]


def summary(records: list[Record]) -> list[tuple[str, str, str]]:
    """(user, outcome, machine reason) per record."""
    return [(r["username"], r["outcome"], machine_reason(r)) for r in records]


# --- triggers ----------------------------------------------------------------------------------


async def test_a_trigger_at_probability_one_always_answers(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    trigger = {"name": "kungfu", "patterns": ["kung fu"], "probability": 1.0}
    settings = settings_for(
        nats_server,
        answer,
        triggers=[{**trigger, "cooldown_seconds": 0, "max_responses_per_hour": 1000}],
    )
    async with running(settings):
        for i in range(10):
            await bridge.chat(CHANNEL_A, f"fan{i}", f"kung fu number {i}")
        await bridge.chat(CHANNEL_A, "Alice", "no trigger word in this one")
        says = await bridge.wait_for_says(10)
        await bridge.quiet_for(0.3)
    assert len(bridge.says()) == len(says) == 10
    records = read_records(settings)
    assert len(records) == 10
    assert {(r["trigger_type"], r["trigger_name"], r["outcome"]) for r in records} == {
        ("trigger_word", "kungfu", "sent")
    }


async def test_a_trigger_at_probability_a_tenth_answers_about_a_tenth(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    trigger = {"name": "movies", "patterns": ["movie"], "probability": 0.1}
    settings = settings_for(
        nats_server,
        answer,
        triggers=[{**trigger, "cooldown_seconds": 0, "max_responses_per_hour": 10_000}],
        testing={"dry_run": True},
    )
    lines = 200
    async with running(settings, rng=random.Random(20261122)) as service:
        for i in range(lines):
            await bridge.chat(CHANNEL_A, f"viewer{i % 17}", f"what a movie, take {i}")
        # Only lines whose roll succeeds are triggered (and recorded): a sentinel mention
        # proves every earlier line has been decided.
        await bridge.chat(CHANNEL_A, "Sentinel", f"{BOT} done?")
        seen = watched(service).seen
        await wait_until(lambda: any(r.username == "Sentinel" for r in seen), "the sentinel")
        await wait_for_records(service, len(seen))
    records = [r for r in read_records(settings) if r["username"] != "Sentinel"]
    assert {r["outcome"] for r in records} == {"dry_run"}
    assert bridge.commands == []  # dry run decides exactly like live, and posts nothing
    assert 8 <= len(records) <= 35, len(records)  # expected 20 of 200


# --- limits and spam ---------------------------------------------------------------------------


async def test_spammed_mentions_hit_the_limits_with_reasons(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    """Production limits and spam defaults: a burst of mentions is mostly held back."""
    settings = settings_for(nats_server, answer, rate_limits=DEFAULT_LIMITS, spam=DEFAULT_SPAM)
    async with running(settings, clock=EventClock()) as service:
        t, chat = timeline(service), Chat(bridge)
        for i in range(8):  # one a second: cooldowns, then a mention flood, then a penalty
            await chat.say("Alice", f"{BOT} hey, number {i}", t.at(i))
        for i in range(4):  # the same line again and again, much later
            await chat.say("Bob", f"{BOT} same thing again", t.at(1000 + i))
        await wait_for_records(service, 12)
    records = read_records(settings)
    assert len(records) == 12  # one per triggered line, held back or not
    by_line = summary(in_chat_order(records))
    assert by_line[:8] == [
        ("Alice", "sent", ""),
        ("Alice", "rate_limited", "mention_cooldown"),
        ("Alice", "rate_limited", "mention_cooldown"),
        ("Alice", "spam", "mention_flood"),
        ("Alice", "spam", "penalty"),
        ("Alice", "spam", "penalty"),
        ("Alice", "spam", "penalty"),
        ("Alice", "spam", "penalty"),
    ]
    assert by_line[8:] == [
        ("Bob", "sent", ""),
        ("Bob", "rate_limited", "mention_cooldown"),
        ("Bob", "spam", "repeated_message"),
        ("Bob", "spam", "penalty"),
    ]
    held = [r for r in records if r["outcome"] != "sent"]
    assert all(r["reason"] and r["parts"] == [] for r in held)
    assert len(bridge.says()) == 2


async def test_users_have_independent_cooldowns_and_trigger_cooldowns_hold(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    limits = {**LOOSE_LIMITS, "user_cooldown_seconds": 60}
    trigger = {"name": "kungfu", "patterns": ["kung fu"], "probability": 1.0}
    settings = settings_for(
        nats_server,
        answer,
        rate_limits=limits,
        triggers=[{**trigger, "cooldown_seconds": 300, "max_responses_per_hour": 100}],
    )
    plan = [  # (seconds, user, text)
        (0, "Alice", f"{BOT} first from Alice"),
        (1, "Bob", f"{BOT} first from Bob"),  # Alice's cooldown is hers alone
        (10, "Alice", f"{BOT} too soon, Alice"),
        (61, "Bob", f"{BOT} Bob after his cooldown"),
        (62, "Alice", f"{BOT} Alice after hers"),
        (100, "Carol", "kung fu time"),
        (150, "Dave", "more kung fu please"),  # Dave is fresh, but the trigger cooled down
        (401, "Dave", "kung fu again, later"),
    ]
    async with running(settings, clock=EventClock()) as service:
        t, chat = timeline(service), Chat(bridge)
        for seconds, user, text in plan:
            await chat.say(user, text, t.at(seconds))
        await wait_for_records(service, len(plan))
    records = in_chat_order(read_records(settings))
    assert summary(records) == [
        ("Alice", "sent", ""),
        ("Bob", "sent", ""),
        ("Alice", "rate_limited", "user_cooldown"),
        ("Bob", "sent", ""),
        ("Alice", "sent", ""),
        ("Carol", "sent", ""),
        ("Dave", "rate_limited", "trigger_cooldown"),
        ("Dave", "sent", ""),
    ]
    assert "allowed again in 50.0 s" in records[2]["reason"]
    assert "allowed again in 250.0 s" in records[6]["reason"]
    assert len(bridge.says()) == 6


# --- ranks -------------------------------------------------------------------------------------

MOD_LIMITS = {
    **LOOSE_LIMITS,
    "user_cooldown_seconds": 60,
    "admin_min_rank": 2,
    "admin_cooldown_multiplier": 0.5,
}


async def _moderator_scenario(service: LLMService, bridge: Bridge, channel: str) -> None:
    t = timeline(service)
    plan = [
        (0, "ModMolly", "one"),
        (1, "Alice", "one"),
        (40, "ModMolly", "two"),
        (41, "Alice", "two"),
    ]
    chat = Chat(bridge, channel)
    for seconds, user, text in plan:
        await chat.say(user, f"{BOT} {text} from {user}", t.at(seconds))
    await wait_for_records(service, len(plan))


def _assert_moderator_outcomes(settings: Settings) -> None:
    records = in_chat_order(read_records(settings))
    assert summary(records) == [
        ("ModMolly", "sent", ""),
        ("Alice", "sent", ""),
        ("ModMolly", "sent", ""),  # 40 s: past a moderator's 30 s cooldown
        ("Alice", "rate_limited", "user_cooldown"),  # ...but not a user's 60 s
    ]
    assert [r["rank"] for r in records] == [3.0, 1.0, 3.0, 1.0]


async def test_moderator_cooldowns_are_shorter_with_ranks_from_bus_events(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    settings = settings_for(nats_server, answer, rate_limits=MOD_LIMITS)
    async with running(settings, clock=EventClock()) as service:
        assert service.pipeline is not None
        ranks = service.pipeline.ranks
        await bridge.publish(CHANNEL_A, "userlist", [{"name": "Alice", "rank": 1, "meta": {}}])
        await bridge.publish(
            CHANNEL_A, "addUser", {"name": "ModMolly", "rank": 3, "profile": {}, "meta": {}}
        )
        await wait_until(rank_is(ranks, CHANNEL_A, "modmolly", 3), "ModMolly's rank")
        await wait_until(rank_is(ranks, CHANNEL_A, "alice", 1), "Alice's rank")
        await _moderator_scenario(service, bridge, CHANNEL_A)
    _assert_moderator_outcomes(settings)


async def test_moderator_cooldowns_are_shorter_with_ranks_from_the_kv_bucket(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    channel = f"KvRoom{uuid.uuid4().hex[:8]}"
    users = [
        {"name": "ModMolly", "rank": 3, "profile": {"image": "", "text": ""}, "meta": {}},
        {"name": "Alice", "rank": 1, "profile": {"image": "", "text": ""}, "meta": {}},
    ]
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = userlist_bucket(channel)
    try:
        kv = await js.create_key_value(bucket=bucket)
        await kv.put("users", json.dumps(users).encode())
        settings = settings_for(
            nats_server,
            answer,
            cytube=[{"domain": "cytu.be", "channel": channel, "username": BOT}],
            rate_limits=MOD_LIMITS,
        )
        async with running(settings, clock=EventClock()) as service:
            assert service.pipeline is not None
            room = ChannelKey("cytu.be", channel)
            assert service.pipeline.ranks.rank_of(room, "ModMolly") == 3  # before any event
            await _moderator_scenario(service, bridge, channel)
        _assert_moderator_outcomes(settings)
    finally:
        await js.delete_key_value(bucket)
        await nc.close()


# --- every case is on record --------------------------------------------------------------------


async def test_the_jsonl_log_holds_one_record_per_case_with_the_right_outcome(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    async def fail_on_request(body: dict[str, Any]) -> web.StreamResponse:
        # Only the message being answered counts: chat history in the prompt may repeat it.
        asked = last_user_message(body).rpartition("says to you: <<<")[2]
        if asked.startswith("please fail"):
            return web.json_response({"error": {"message": "boom"}}, status=500)
        return web.json_response(completion("Sure thing."))

    fake_llm.behaviour = fail_on_request
    settings = settings_for(
        nats_server,
        fake_llm,
        rate_limits={**LOOSE_LIMITS, "user_cooldown_seconds": 60},
        spam={**LOOSE_SPAM, "repeat_max_identical": 1, "max_consecutive_replies_to_user": 2},
        llm_manager={"max_retries": 0},
        triggers=[{"name": "dice", "patterns": ["dice"], "probability": 0.0}],
    )
    cases = [  # (seconds, user, text, expected outcome, expected machine reason)
        (0, "Alice", f"{BOT} hello", "sent", ""),
        (5, "Alice", f"{BOT} hello again", "rate_limited", "user_cooldown"),
        (10, "Bob", f"{BOT} spam spam", "sent", ""),
        (11, "Bob", f"{BOT} spam spam", "spam", "repeated_message"),
        (20, "Carol", f"{BOT} please fail", "llm_failed", ""),
        (100, "Alice", f"{BOT} third time", "sent", ""),
        (200, "Alice", f"{BOT} fourth time", "sent", ""),
        (300, "Alice", f"{BOT} fifth time", "loop_protection", "consecutive_replies"),
    ]
    async with running(settings, clock=EventClock()) as service:
        t, chat = timeline(service), Chat(bridge)
        await chat.say("Dave", "roll the dice", t.at(1))  # triggers, but the roll says no
        await chat.say("Erin", "no trigger at all", t.at(2))
        for seconds, user, text, _, _ in cases:
            await chat.say(user, text, t.at(seconds))
        await wait_for_records(service, len(cases))
        await bridge.quiet_for(0.3)
    records = in_chat_order(read_records(settings))
    assert len(records) == len(cases)  # untriggered lines leave no record
    assert [(r["username"], r["message"], r["outcome"], machine_reason(r)) for r in records] == [
        (user, text, outcome, reason) for _, user, text, outcome, reason in cases
    ]
    assert all(bool(r["parts"]) == (r["outcome"] == "sent") for r in records)
    failed = next(r for r in records if r["outcome"] == "llm_failed")
    assert failed["reason"] and failed["attempts"][0]["outcome"] == "http_500"
    assert len({r["correlation_id"] for r in records}) == len(records)
    assert "sk-test" not in settings.response_log.path.read_text()


# --- bots -----------------------------------------------------------------------------------------


async def _ping_pong(
    bridge: Bridge, service: LLMService, partners: list[str], rounds_max: int = 30
) -> int:
    """Other bots that mention ours each time it speaks (echoing its line, as CyTube does).

    Returns how many replies our bot made before the exchange stopped on its own.
    """
    t = timeline(service)
    seconds = 0
    await bridge.chat(CHANNEL_A, partners[0], f"{BOT} hello, fellow bot", time_ms=t.at(seconds))
    for round_no in range(rounds_max):
        says = await bridge.wait_for_says(round_no + 1, timeout=REPLY_WAIT_SECONDS)
        if len(says) <= round_no:
            return len(says)
        seconds += 2
        said = says[-1]["args"]["message"]
        await bridge.chat(CHANNEL_A, BOT, said, time_ms=t.at(seconds))  # the echo
        partner = partners[(round_no + 1) % len(partners)]
        seconds += 1
        await bridge.chat(
            CHANNEL_A, partner, f"{BOT} you said: {said} ({round_no})", time_ms=t.at(seconds)
        )
    raise AssertionError("the bots never stopped talking")


@pytest.mark.slow
async def test_two_bots_mentioning_each_other_stop_at_the_consecutive_cap(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    spam = {**LOOSE_SPAM, "max_consecutive_replies_to_user": 4}
    settings = settings_for(nats_server, answer, spam=spam)
    async with running(settings, clock=EventClock()) as service:
        replies = await _ping_pong(bridge, service, ["ChattyBot"])
        await wait_for_records(service, replies + 1)
    assert replies == 4
    records = read_records(settings)
    assert [r["outcome"] for r in records].count("sent") == 4
    [stopped] = [r for r in records if r["outcome"] != "sent"]
    assert stopped["outcome"] == "loop_protection"
    assert stopped["reason"].startswith("consecutive_replies")
    assert all(r["username"] == "ChattyBot" for r in records)


@pytest.mark.slow
async def test_bots_taking_turns_stop_at_the_reply_window_cap(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    spam = {**LOOSE_SPAM, "max_replies_per_window": 6, "reply_window_seconds": 300}
    settings = settings_for(nats_server, answer, spam=spam)
    async with running(settings, clock=EventClock()) as service:
        replies = await _ping_pong(bridge, service, ["BotOne", "BotTwo"])
        await wait_for_records(service, replies + 1)
    assert replies == 6
    records = read_records(settings)
    [stopped] = [r for r in records if r["outcome"] != "sent"]
    assert stopped["outcome"] == "loop_protection"
    assert stopped["reason"].startswith("reply_window")


async def test_listed_other_bots_and_our_own_name_are_never_answered(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge
) -> None:
    spam = {**LOOSE_SPAM, "other_bots": ["ChattyBot"]}
    settings = settings_for(nats_server, answer, spam=spam)
    async with running(settings):
        for name in ("ChattyBot", "chattybot", "CHATTYBOT"):
            await bridge.chat(CHANNEL_A, name, f"{BOT} talk to me, {name}")
        for name in (BOT, BOT.lower(), BOT.upper(), "cYnThIaRoThBoT"):
            await bridge.chat(CHANNEL_A, name, f"hey {BOT}, it's me, {name}")
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} and me?")
        says = await bridge.wait_for_says(1)
        await bridge.quiet_for(0.5)
    assert len(says) == len(bridge.says()) == 1
    records = read_records(settings)
    assert [(r["username"], r["outcome"]) for r in records] == [("Alice", "sent")]


# --- replay predicts live ------------------------------------------------------------------------


def _decision_key(username: str, message: str, outcome: str, reason: str) -> tuple[str, ...]:
    return (username, message, outcome, reason)


async def _publish_live(bridge: Bridge, service: LLMService, events: list[TranscriptEvent]) -> None:
    """The transcript as the bridge would publish it, shifted to just after the start."""
    assert service.pipeline is not None
    ranks = service.pipeline.ranks
    chat_times = [e.payload["time"] for e in events if e.event_name == "chatMsg"]
    shift = timeline(service).base_ms - min(chat_times)
    for event in events:
        if event.event_name == "chatMsg":
            payload = {**event.payload, "time": event.payload["time"] + shift}
            await bridge.publish(CHANNEL_A, "chatMsg", payload)
            continue
        await bridge.publish(CHANNEL_A, event.event_name, event.payload)
        # Events travel on other subjects than chat: let each land before the next line.
        if event.event_name in ("addUser", "setUserRank"):
            name, rank = event.payload["name"], event.payload["rank"]
            await wait_until(rank_is(ranks, CHANNEL_A, name, rank), f"{name}'s rank")
        elif event.event_name == "userlist":
            first = event.payload[0]
            await wait_until(rank_is(ranks, CHANNEL_A, first["name"], first["rank"]), "the list")
        else:
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("sample", ["replay_sample.txt", "replay_sample.jsonl"])
async def test_replay_decides_exactly_as_the_live_service(
    nats_server: NatsServer, answer: FakeLLM, bridge: Bridge, sample: str
) -> None:
    path = DATA / sample
    triggers = [
        {"name": "movies", "patterns": ["movie", "film"], "probability": 0.5},
        {"name": "kungfu", "patterns": ["kung fu"], "cooldown_seconds": 200},
    ]
    settings = settings_for(
        nats_server,
        answer,
        rate_limits=DEFAULT_LIMITS,
        spam=DEFAULT_SPAM,
        triggers=triggers,
        testing={"dry_run": True},
    )
    seed = 42
    replayed = await replay_transcript(path, settings, ReplayOptions(seed=seed, llm="configured"))
    expected = sorted(
        _decision_key(d.username, d.message, d.outcome, d.reason) for d in replayed.decisions
    )
    assert replayed.malformed == 0 and replayed.errors == 0
    outcomes = {k[2] for k in expected}
    assert "dry_run" in outcomes and len(outcomes) >= 2, expected  # answers and holds alike

    with path.open(encoding="utf-8") as handle:
        events = [e for e in parse_transcript(handle) if isinstance(e, TranscriptEvent)]
    async with running(settings, clock=EventClock(), rng=random.Random(seed)) as service:
        await _publish_live(bridge, service, events)
        await wait_for_records(service, len(expected))
        await bridge.quiet_for(0.3)
    live = sorted(
        _decision_key(r["username"], r["message"], r["outcome"], r["reason"])
        for r in read_records(settings)
    )
    assert live == expected
