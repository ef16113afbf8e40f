"""Output safety end to end: hostile LLM output in, only safe `say` commands out, over real NATS.

The fake LLM plays the hostile model; the Bridge publishes chat exactly as Kryten-Robot does and
collects what the service publishes on `kryten.robot.command`. Every published line is checked
with the guard's own predicate *and* with an independent check written here (NFKC, CyTube's
control-character and whitespace handling, then the first visible character), so a bug in the
guard's predicate cannot hide a bug in the guard.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from kryten_llm.config import Settings
from kryten_llm.reply.guard import is_command_like
from tests.adversarial_outputs import ADVERSARIAL_OUTPUTS, GUARD_CASE_SAFETY, GUARD_CASES
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM, completion, last_user_message
from tests.support.nats_server import NatsServer, free_port
from tests.support.service import (
    API_KEY,
    BOT,
    CHANNEL_A,
    CHANNEL_B,
    DOMAIN_B,
    make_settings,
    read_records,
    running_service,
)

MAX_UNITS = 240
COMMAND_PREFIXES = ["/", "!", "."]
QUIET_SECONDS = 0.8
RECORD_TIMEOUT_SECONDS = 30.0

# Written independently of kryten_llm.reply.guard.LOOKALIKES: characters that read as a command
# character but that NFKC leaves alone. (Fullwidth and small forms fold to ASCII under NFKC.)
SLASH_LOOKALIKES = frozenset(
    "\u2215\u2044\u29f8\u1735\u2571\u27cb\u29f6\u2afb\u2afd\u0337\u0338\u4e3f\u2f03"
)
COMMAND_STARTS = frozenset("/!.") | SLASH_LOOKALIKES | frozenset("\u01c3\ua4f8\u3002")
# Blank to the eye: skipped before looking for the first character (stricter than CyTube,
# which trims only whitespace after turning [\x00-\x1f] into spaces).
BLANK_CATEGORIES = frozenset({"Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp"})
BLANK_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f")
CASE_MARKER = re.compile(r"says to you: <<<case (\d+) go>>>")


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


def settings_for(nats_server: NatsServer, fake_llm: FakeLLM, **overrides: Any) -> Settings:
    return make_settings(nats_server.url, fake_llm.base_url, **overrides)


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def first_visible(text: str) -> str:
    """The first character a CyTube user (or CyTube's command parser) would meet, after NFKC."""
    text = re.sub(r"[\x00-\x1f]", " ", unicodedata.normalize("NFKC", text))
    for ch in text:
        if ch.isspace() or unicodedata.category(ch) in BLANK_CATEGORIES or ch in BLANK_FILLERS:
            continue
        return ch
    return ""


def assert_safe_line(text: str, where: str) -> None:
    """The published-line invariants, checked two ways."""
    assert isinstance(text, str) and text.strip(), f"{where}: empty line {text!r}"
    assert utf16_units(text) <= MAX_UNITS, f"{where}: {utf16_units(text)} units"
    assert not is_command_like(text, COMMAND_PREFIXES), f"{where}: command-like {text!r}"
    first = first_visible(text)
    assert first, f"{where}: nothing visible in {text!r}"
    assert first not in COMMAND_STARTS, f"{where}: starts with {first!r}: {text!r}"
    assert not any(unicodedata.category(c) == "Cc" for c in text), f"{where}: control char"
    assert unicodedata.normalize("NFKC", text) == text, f"{where}: not NFKC-normalised"


async def wait_for_records(
    settings: Settings, count: int, timeout: float = RECORD_TIMEOUT_SECONDS
) -> list[dict[str, Any]]:
    """JSONL records as the writer flushes them (it flushes after every batch)."""
    deadline = asyncio.get_running_loop().time() + timeout
    records = read_records(settings)
    while len(records) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        records = read_records(settings)
    return records


def messages_of(says: list[dict[str, Any]]) -> list[str]:
    return [s["args"]["message"] for s in says]


def case_problem(index: int, record: dict[str, Any]) -> str | None:
    """What is wrong with one corpus case's outcome, or None.

    Published parts must be safe lines under outcome `sent`; a case that published nothing
    must be recorded as stopped by the guard or the validator (or, for a blank completion,
    as the provider's `empty` failure): never as `sent`.
    """
    name, output = ADVERSARIAL_OUTPUTS[index]
    outcome, reason = record["outcome"], record["reason"]
    if record["parts"]:
        if outcome != "sent":
            return f"{name}: parts published but outcome {outcome!r}"
        for part in record["parts"]:
            try:
                assert_safe_line(part, name)
            except AssertionError as exc:
                return str(exc)
        return None
    if not output.strip():
        attempts = [a["outcome"] for a in record["attempts"]]
        if outcome == "llm_failed" and attempts == ["empty"]:
            return None
        return f"{name}: blank completion recorded as {outcome!r} {attempts}"
    if outcome in {"guard_blocked", "invalid"}:
        return None
    return f"{name}: nothing published but recorded as {outcome!r} ({reason!r})"


# --- the adversarial corpus -----------------------------------------------------------------------


@pytest.mark.slow
async def test_every_adversarial_output_is_published_safely_or_not_at_all(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    assert len(ADVERSARIAL_OUTPUTS) >= 40

    async def hostile_model(body: dict[str, Any]) -> web.StreamResponse:
        found = CASE_MARKER.findall(last_user_message(body))
        return web.json_response(completion(ADVERSARIAL_OUTPUTS[int(found[-1])][1]))

    fake_llm.behaviour = hostile_model
    # Many cases reduce to the same words ("clear"), and the repetition check would refuse
    # them before the guard ever saw them (even similarity_threshold 1.0 refuses exact repeats),
    # so it is switched off: this test is about the guard, and every case must reach it.
    settings = settings_for(
        nats_server,
        fake_llm,
        validation={"history_size": 0, "on_refusal": "silent"},
        context={"include_chat_history": False},
    )
    users = {f"user{i:02d}": i for i in range(len(ADVERSARIAL_OUTPUTS))}
    async with running_service(settings):
        for user, index in users.items():
            channel, domain = (CHANNEL_A, "cytu.be") if index % 2 == 0 else (CHANNEL_B, DOMAIN_B)
            await bridge.chat(channel, user, f"{BOT} case {index:02d} go", domain=domain)
        records = await wait_for_records(settings, len(users))
        expected_parts = sum(len(r["parts"]) for r in records)
        says = await bridge.wait_for_says(expected_parts, timeout=20)
        await bridge.quiet_for(0.3)
        says = bridge.says()

    by_user = {r["username"]: r for r in records}
    assert set(by_user) == set(users), set(users) - set(by_user)
    for say in says:
        assert_safe_line(say["args"]["message"], f"say in {say['meta']['channel']}")

    problems = [p for user, index in users.items() if (p := case_problem(index, by_user[user]))]
    assert not problems, "\n".join(problems)
    # What reached the bus is exactly what the records say was sent, in the right channels.
    sent_by_channel: Counter[tuple[str, str]] = Counter()
    for r in records:
        sent_by_channel.update((r["channel"], p) for p in r["parts"])
    assert Counter((s["meta"]["channel"], s["args"]["message"]) for s in says) == sent_by_channel
    # The guard neutralises, it does not just silence: most hostile replies still get a line.
    answered = sum(1 for r in records if r["parts"])
    assert answered >= len(users) // 2, answered


async def test_guard_cases_publish_exactly_the_expected_line(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    """Disguised blocked domains are cut, subdivision flags arrive whole: over the real bus."""

    async def model(body: dict[str, Any]) -> web.StreamResponse:
        found = CASE_MARKER.findall(last_user_message(body))
        return web.json_response(completion(GUARD_CASES[int(found[-1])][1]))

    fake_llm.behaviour = model
    settings = settings_for(
        nats_server,
        fake_llm,
        safety=GUARD_CASE_SAFETY,
        validation={"history_size": 0, "on_refusal": "silent"},
        context={"include_chat_history": False},
    )
    users = {f"guard{i:02d}": i for i in range(len(GUARD_CASES))}
    async with running_service(settings):
        for user, index in users.items():
            await bridge.chat(CHANNEL_A, user, f"{BOT} case {index:02d} go")
        records = await wait_for_records(settings, len(users))
        expected_lines = sum(1 for _, _, line in GUARD_CASES if line is not None)
        await bridge.wait_for_says(expected_lines, timeout=20)
        await bridge.quiet_for(0.3)
        says = bridge.says()

    by_user = {r["username"]: r for r in records}
    for user, index in users.items():
        name, _, line = GUARD_CASES[index]
        assert by_user[user]["parts"] == ([] if line is None else [line]), name
    published = sorted(s["args"]["message"] for s in says)
    assert published == sorted(line for _, _, line in GUARD_CASES if line is not None)
    for message in published:
        assert_safe_line(message, "guard case")
        assert not mentions_domain(message, "evil.com"), message


# --- phase 4: shaping, refusal, degradation ------------------------------------------------------


async def test_long_reply_splits_at_sentence_boundaries(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    sentences = [
        "Roundhouse kicks are an art form.",
        "Nobody expects the spinning back fist!",
        "Would you like to learn one?",
        "Start with your stance, feet apart and knees soft, then turn the hips before the leg.",
        "Breathe out on impact.",
        "That is the whole secret, honestly, and the rest is years and years of sweaty practice "
        "in a draughty gym with a sensei who never smiles at anyone at all.",
        "Keep going!",
    ]
    fake_llm.reply_with(" ".join(sentences))
    settings = settings_for(
        nats_server, fake_llm, message_processing={"max_message_length": 100, "max_parts": 10}
    )
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} teach me a kick")
        (record,) = await wait_for_records(settings, 1)
        parts = messages_of(await bridge.wait_for_says(len(record["parts"])))
        await bridge.quiet_for(0.3)
    assert parts == record["parts"] == messages_of(bridge.says())
    assert len(parts) >= 3, parts
    for part in parts:
        assert utf16_units(part) <= 100, part
        assert part.endswith((".", "!", "?", "...")), part
    cut_mid_sentence = [p for p in parts if p.endswith("...")]
    assert len(cut_mid_sentence) == 1, parts  # only the one sentence longer than a line
    joined = " ".join(parts)
    for sentence in sentences:
        if len(sentence) <= 100:
            # a sentence that fits on a line is never split across two
            assert any(sentence in p for p in parts), (sentence, parts)
    assert joined.replace("... ", " ").endswith("Keep going!")


async def test_single_line_code_keeps_its_text_and_loses_its_command(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    # "```...```" on one line has no info string: its text is the reply, not a language tag.
    fake_llm.reply_with("Try this: ```roundhouse kick to the face``` and enjoy.")
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} a tip?")
        await bridge.wait_for_says(1)
        fake_llm.reply_with("```/kick Alice```")
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} another tip?")
        await bridge.wait_for_says(2)
        await bridge.quiet_for(0.3)
        says = messages_of(bridge.says())
    assert says == ["Try this: roundhouse kick to the face and enjoy.", "kick Alice"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("As Cynthia Rothrock, I would roundhouse that villain.", "I would roundhouse that"),
        ("As CynthiaRothbot, my answer is a spinning kick.", "My answer is a spinning kick."),
        ("As an AI, I cannot kick, but I can cheer.", "I cannot kick, but I can cheer."),
        ("As an AI language model, I love B-movies.", "I love B-movies."),
    ],
)
async def test_self_reference_openings_are_removed(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, reply: str, expected: str
) -> None:
    fake_llm.reply_with(reply)
    # The shipped default variations: the persona is Cynthia Rothrock, the account CynthiaRothbot.
    settings = settings_for(
        nats_server, fake_llm, personality={"name_variations": ["cynthia", "rothrock"]}
    )
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} who are you?")
        says = messages_of(await bridge.wait_for_says(1))
    assert len(says) == 1
    assert says[0].startswith(expected), says
    assert not says[0].lower().startswith("as "), says


async def test_a_repeated_reply_is_refused(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with("The spinning back fist, every single time.")
    settings = settings_for(nats_server, fake_llm, validation={"on_refusal": "silent"})
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} best move?")
        assert len(await bridge.wait_for_says(1)) == 1
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} and your favourite move?")
        await wait_for_records(settings, 2)
        await bridge.quiet_for(0.3)
        says = messages_of(bridge.says())
    assert says == ["The spinning back fist, every single time."]
    bob = next(r for r in read_records(settings) if r["username"] == "Bob")
    assert bob["outcome"] == "invalid"
    assert "similar" in bob["reason"], bob


async def test_a_repeated_reply_becomes_the_fallback(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with("The spinning back fist, every single time.")
    settings = settings_for(
        nats_server,
        fake_llm,
        validation={"on_refusal": "fallback", "fallback_response": "Let me think of a new one."},
    )
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} best move?")
        await bridge.wait_for_says(1)
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} and your favourite move?")
        says = messages_of(await bridge.wait_for_says(2))
        await bridge.quiet_for(0.3)
    assert says == ["The spinning back fist, every single time.", "Let me think of a new one."]
    bob = next(r for r in read_records(settings) if r["username"] == "Bob")
    assert bob["outcome"] == "sent" and "fallback" in bob["reason"], bob


async def test_a_repeated_reply_is_regenerated(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_in_turn(
        "The spinning back fist, every single time.",
        "The spinning back fist, every single time.",
        "A flying scissor kick, obviously.",
    )
    settings = settings_for(nats_server, fake_llm, validation={"on_refusal": "regenerate"})
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} best move?")
        await bridge.wait_for_says(1)
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} and your favourite move?")
        says = messages_of(await bridge.wait_for_says(2))
        await bridge.quiet_for(0.3)
    assert says == [
        "The spinning back fist, every single time.",
        "A flying scissor kick, obviously.",
    ]
    assert len(fake_llm.requests) == 3


async def test_all_providers_failing_degrades_gracefully_and_recovers(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.fail_with(500, "internal error")
    refused_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here
    settings = settings_for(
        nats_server,
        fake_llm,
        llm_providers={
            "fake": {"priority": 1},
            "backup": {
                "type": "openai_compatible",
                "base_url": refused_url,
                "model": "fake-model",
                "api_key": API_KEY,
                "priority": 2,
                "timeout_seconds": 2,
            },
        },
        llm_manager={"max_retries": 0},
    )
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} are you there?")
        first = await wait_for_records(settings, 1)
        await bridge.quiet_for(0.3)
        assert bridge.says() == []
        fake_llm.reply_with("Back on my feet.")
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} how about now?")
        says = messages_of(await bridge.wait_for_says(1))
    assert says == ["Back on my feet."]
    assert len(first) == 1
    failed = first[0]
    assert failed["outcome"] == "llm_failed" and failed["username"] == "Alice"
    attempts = {a["provider"]: a["outcome"] for a in failed["attempts"]}
    assert set(attempts) == {"fake", "backup"}, failed["attempts"]
    assert attempts["fake"] == "http_500", attempts
    assert attempts["backup"] != "ok", attempts
    records = read_records(settings)
    assert [r["outcome"] for r in records] == ["llm_failed", "sent"]
    assert API_KEY not in settings.response_log.path.read_text(encoding="utf-8")


# --- links ----------------------------------------------------------------------------------------


async def test_default_link_policy_strips_links(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    fake_llm.reply_with(
        "Watch https://example.com/kicks?id=1 and www.example.org/more for the best kicks."
    )
    async with running_service(settings_for(nats_server, fake_llm)):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} any good clips?")
        says = messages_of(await bridge.wait_for_says(1))
        await bridge.quiet_for(0.3)
    assert says and all(s.strip() for s in says)
    joined = " ".join(says)
    assert "for the best kicks" in joined
    for fragment in ("http", "example.com", "www.", "example.org"):
        assert fragment not in joined, says


def mentions_domain(text: str, domain: str) -> bool:
    """Independent of the guard: fold dots and width, drop invisibles, then look."""
    folded = unicodedata.normalize("NFKC", text).replace("\u3002", ".").replace("\uff61", ".")
    folded = "".join(c for c in folded if unicodedata.category(c) != "Cf")
    return domain in folded.lower()


async def test_blocked_link_domain_is_never_published_even_when_links_are_allowed(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    hostile_links = [
        "https://evil.example/x",
        "HTTPS://EVIL.EXAMPLE/Y",
        "https://cdn.evil.example/z",
        "www.evil.example",
        "evil.example/free",
        "evil\u3002example",
        "evil\u200b.example",
        "https://evil．example/w",
    ]
    settings = settings_for(
        nats_server,
        fake_llm,
        safety={"link_policy": "allow", "blocked_link_domains": ["evil.example"]},
        validation={"history_size": 0},
    )
    async with running_service(settings):
        for i, link in enumerate(hostile_links):
            fake_llm.reply_with(
                f"Good clip at https://good.example/{i} and a bad one at {link} ok."
            )
            bridge.clear()
            await bridge.chat(CHANNEL_A, f"user{i}", f"{BOT} link me {i}")
            says = messages_of(await bridge.wait_for_says(1))
            await bridge.quiet_for(0.2)
            says = messages_of(bridge.says())
            assert says, link
            joined = " ".join(says)
            assert f"https://good.example/{i}" in joined, (link, says)  # policy allow: kept
            assert not mentions_domain(joined, "evil.example"), (link, says)
