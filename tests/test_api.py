"""The service API on the bus, end to end: the real daemon, a real nats-server, a real HTTP LLM.

Every request goes out with `nats.request` from a separate test client, as another Kryten
service would send it, and every answer is read as that service would read it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from kryten_llm.config import ProviderSettings, build_settings
from kryten_llm.tools.demo import demo_settings
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer, free_port
from tests.support.service import (
    BOT,
    CHANNEL_A,
    DOMAIN_A,
    make_settings,
    read_records,
    running_service,
)

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "kryten.llm"
REQUEST_TIMEOUT_SECONDS = 10.0
TOKEN = "api-token-for-tests-0123456789"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def ask(
    nc: NatsClient,
    endpoint: str,
    body: Any,
    headers: dict[str, str] | None = None,
    prefix: str = PREFIX,
) -> tuple[dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(
        f"{prefix}.{endpoint}", data, timeout=REQUEST_TIMEOUT_SECONDS, headers=headers
    )
    return json.loads(msg.data), dict(msg.headers or {})


def code_of(answer: dict[str, Any]) -> str | None:
    return answer["error"]["code"] if not answer["ok"] else None


def settings(nats_server: NatsServer, fake_llm: FakeLLM, **overrides: Any):  # type: ignore[no-untyped-def]
    overrides.setdefault("llm_manager", {"max_retries": 0})
    return make_settings(nats_server.url, fake_llm.base_url, **overrides)


async def test_micro_info_lists_every_endpoint_with_its_schema(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    async with running_service(settings(nats_server, fake_llm)):
        msg = await nc.request("$SRV.INFO.kryten-llm", b"", timeout=REQUEST_TIMEOUT_SECONDS)
    info = json.loads(msg.data)
    subjects = {e["subject"]: e for e in info["endpoints"]}
    for endpoint in (
        "chat",
        "complete",
        "summarize",
        "memory.add",
        "memory.recall",
        "memory.forget",
        "status",
        "usage",
    ):
        entry = subjects[f"{PREFIX}.{endpoint}"]
        assert entry["queue_group"] == "q"
        assert "properties" in json.loads(entry["metadata"]["request_schema"])
    assert f"{PREFIX}.control.status" in subjects  # one service, control endpoints alongside


async def test_chat_uses_history_and_memory_and_records_the_exchange(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("Popcorn is the answer.")
    async with running_service(settings(nats_server, fake_llm)) as service:
        added, _ = await ask(
            nc,
            "memory.add",
            {"channel": CHANNEL_A, "user": "Alice", "content": "Alice hates spoilers"},
        )
        assert added["ok"] and added["memory"]["user"] == "Alice"
        answer, headers = await ask(
            nc, "chat", {"channel": CHANNEL_A, "user": "Alice", "message": "any spoilers today?"}
        )
        assert answer["ok"], answer
        assert answer["reply"] == "Popcorn is the answer."
        assert answer["posted"] == []
        assert answer["completion"]["model"] == "fake-model"
        prompt = json.dumps(fake_llm.requests[-1])
        assert "Alice hates spoilers" in prompt  # the memory reached the prompt
        # Recorded in history: the next prompt for Alice carries the exchange.
        await ask(nc, "chat", {"channel": CHANNEL_A, "user": "Alice", "message": "and now?"})
        assert "Popcorn is the answer." in json.dumps(fake_llm.requests[-1])
        room = service.pipeline.settings.channels[0].key
        assert service.pipeline.context.snapshot(room, "alice").conversation
    assert "Nats-Service-Error-Code" not in headers


async def test_chat_with_post_goes_to_chat_through_the_guard(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("/clear everything please")
    bridge = await Bridge.connect(nats_server.url)
    try:
        async with running_service(settings(nats_server, fake_llm)):
            answer, _ = await ask(
                nc,
                "chat",
                {
                    "channel": f"{DOMAIN_A}/{CHANNEL_A}",
                    "user": "Bob",
                    "message": "hi",
                    "post": True,
                },
            )
            says = await bridge.wait_for_says(1)
    finally:
        await bridge.close()
    assert answer["ok"], answer
    assert answer["posted"] and not answer["posted"][0].startswith("/")
    assert says[0]["args"]["message"] == answer["posted"][0]


async def test_complete_and_summarize_and_status_and_usage(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("done")
    bridge = await Bridge.connect(nats_server.url)
    try:
        async with running_service(settings(nats_server, fake_llm)):
            complete, _ = await ask(
                nc, "complete", {"prompt": "2+2?", "system": "be brief", "max_tokens": 10}
            )
            assert complete["ok"] and complete["text"] == "done"
            sent = fake_llm.requests[-1]
            assert sent["max_tokens"] == 10 and "be brief" in json.dumps(sent["messages"])
            text, _ = await ask(nc, "summarize", {"text": "a long story about popcorn"})
            assert text["ok"] and text["summary"] == "done" and text["lines"] == 0
            await bridge.chat(CHANNEL_A, "Carol", "the plot twist was great")
            await bridge.chat(CHANNEL_A, "Dave", "I saw it coming")
            await asyncio.sleep(0.3)
            room, _ = await ask(nc, "summarize", {"channel": CHANNEL_A, "last_n": 5})
            assert room["ok"] and room["lines"] == 2
            assert "plot twist" in json.dumps(fake_llm.requests[-1])
            status, _ = await ask(nc, "status", {})
            usage, _ = await ask(nc, "usage", {"user": "anonymous"})
    finally:
        await bridge.close()
    assert status["ok"] and status["provider"] == "fake" and status["model"] == "fake-model"
    assert status["requests_today"] >= 4 and status["tokens_today"] >= 3 * 49
    assert status["providers"]["fake"]["state"] == "closed"
    assert usage["ok"] and usage["user"] == "anonymous"


async def test_memory_recall_and_forget_follow_the_command_rules(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    async with running_service(settings(nats_server, fake_llm)):
        added, _ = await ask(
            nc,
            "memory.add",
            {"channel": CHANNEL_A, "user": "Eve", "content": "Eve loves kung fu", "importance": 5},
        )
        assert added["memory"]["importance"] == 3  # not a moderator: capped as in chat
        ident = added["memory"]["id"]
        recalled, _ = await ask(nc, "memory.recall", {"channel": CHANNEL_A, "query": "kung fu"})
        assert [m["id"] for m in recalled["memories"]] == [ident]
        refused, headers = await ask(
            nc, "memory.forget", {"channel": CHANNEL_A, "user": "Mallory", "id": ident}
        )
        assert code_of(refused) == "forbidden" and headers["Nats-Service-Error-Code"] == "403"
        forgot, _ = await ask(
            nc, "memory.forget", {"channel": CHANNEL_A, "user": "eve", "id": ident}
        )
        assert forgot["ok"] and forgot["id"] == ident
        after, _ = await ask(nc, "memory.recall", {"channel": CHANNEL_A, "query": "kung fu"})
        assert after["memories"] == []


@pytest.mark.parametrize(
    ("endpoint", "body", "fragment"),
    [
        ("chat", b"{not json", "not valid JSON"),
        ("chat", b"[1, 2]", "JSON object"),
        ("chat", b"[" * 100_000, "larger than"),
        ("chat", {"channel": CHANNEL_A, "user": "A", "message": 5}, "message"),
        ("chat", {"channel": CHANNEL_A, "user": "A", "message": "x" * 5000}, "message"),
        ("chat", {"channel": CHANNEL_A, "user": "A", "message": "hi", "extra": 1}, "extra"),
        ("chat", {"channel": "nowhere", "user": "A", "message": "hi"}, "unknown channel"),
        ("chat", {"channel": CHANNEL_A, "user": "A", "message": "hi", "persona": "x"}, "persona"),
        ("complete", {"prompt": "hi", "max_tokens": "10"}, "max_tokens"),
        ("complete", {"prompt": "hi", "max_tokens": 10**9}, "max_tokens"),
        ("summarize", {}, "either"),
        ("memory.add", {"channel": CHANNEL_A, "user": "A"}, "content"),
        ("usage", {"user": ""}, "user"),
    ],
)
async def test_invalid_requests_are_refused_and_the_service_lives_on(
    nats_server: NatsServer,
    fake_llm: FakeLLM,
    nc: NatsClient,
    endpoint: str,
    body: Any,
    fragment: str,
) -> None:
    fake_llm.reply_with("fine")
    async with running_service(settings(nats_server, fake_llm)):
        answer, headers = await ask(nc, endpoint, body)
        alive, _ = await ask(nc, "status", {})
    assert code_of(answer) == "invalid_request", answer
    assert fragment in answer["error"]["message"]
    assert headers["Nats-Service-Error-Code"] == "400"
    assert headers["Nats-Service-Error"] == answer["error"]["message"]
    assert alive["ok"]
    assert fake_llm.requests == []


async def test_token_is_required_when_configured_and_never_echoed(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("fine")
    async with running_service(settings(nats_server, fake_llm, api={"token": TOKEN})):
        missing, headers = await ask(nc, "complete", {"prompt": "hi"})
        wrong, _ = await ask(nc, "complete", {"prompt": "hi", "token": "nope"})
        by_header, _ = await ask(
            nc, "complete", {"prompt": "hi"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        in_body, _ = await ask(nc, "complete", {"prompt": "hi", "token": TOKEN})
    assert code_of(missing) == "forbidden" and headers["Nats-Service-Error-Code"] == "403"
    assert code_of(wrong) == "forbidden"
    assert by_header["ok"] and in_body["ok"]
    assert TOKEN not in json.dumps([missing, wrong, by_header, in_body])


async def test_a_caller_over_its_limit_is_rate_limited(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("fine")
    config = settings(nats_server, fake_llm, api={"caller_max_per_minute": 2})
    async with running_service(config):
        answers = [
            (await ask(nc, "complete", {"prompt": "hi", "caller": "trivia"}))[0] for _ in range(3)
        ]
        other, _ = await ask(nc, "complete", {"prompt": "hi", "caller": "playlist"})
    assert [a["ok"] for a in answers] == [True, True, False]
    assert code_of(answers[2]) == "rate_limited"
    assert other["ok"]


async def test_a_spent_budget_is_budget_exhausted(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("fine")
    # $0.001 a token: the fake's 42 + 7 tokens cost $0.049; a request reserves its prompt
    # (about 8 tokens) and max_tokens (10) first, $0.018, so after one the next does not fit.
    usage = {
        "daily_budget_usd": 0.06,
        "prices": {"fake-model": {"input_per_million_usd": 1000, "output_per_million_usd": 1000}},
    }
    async with running_service(settings(nats_server, fake_llm, usage=usage)):
        first, _ = await ask(nc, "complete", {"prompt": "hi", "max_tokens": 10})
        second, headers = await ask(nc, "complete", {"prompt": "hi", "max_tokens": 10})
        chat, _ = await ask(nc, "chat", {"channel": CHANNEL_A, "user": "A", "message": "hi"})
        status, _ = await ask(nc, "status", {})
    assert first["ok"]
    assert code_of(second) == "budget_exhausted" and headers["Nats-Service-Error-Code"] == "402"
    assert code_of(chat) == "budget_exhausted"
    assert status["budget"]["spent_usd"] == pytest.approx(0.049)
    assert len(fake_llm.requests) == 1


async def test_llm_down_is_llm_unavailable_within_the_deadline(
    nats_server: NatsServer, nc: NatsClient
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = make_settings(
        nats_server.url, dead, llm_manager={"max_retries": 0}, api={"deadline_seconds": 5}
    )
    async with running_service(config):
        started = time.monotonic()
        answer, headers = await ask(nc, "complete", {"prompt": "hi"})
        elapsed = time.monotonic() - started
    assert code_of(answer) == "llm_unavailable" and headers["Nats-Service-Error-Code"] == "503"
    assert elapsed < 5


async def test_llm_hanging_is_timeout_within_the_deadline(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.hang()
    config = settings(nats_server, fake_llm, api={"deadline_seconds": 1})
    async with running_service(config):
        started = time.monotonic()
        answers = await asyncio.gather(
            ask(nc, "complete", {"prompt": "hi"}),
            ask(nc, "chat", {"channel": CHANNEL_A, "user": "A", "message": f"{BOT}?"}),
        )
        elapsed = time.monotonic() - started
        alive, _ = await ask(nc, "status", {})
    for answer, headers in answers:
        assert code_of(answer) == "timeout" and headers["Nats-Service-Error-Code"] == "504"
    assert elapsed < 4  # the deadline is 1 s; the provider alone would wait far longer
    assert alive["ok"]


async def test_a_burst_of_fifty_is_served_concurrently(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("slow", delay_seconds=1.0)
    config = settings(
        nats_server,
        fake_llm,
        llm_providers={"fake": {"timeout_seconds": 10}},
        api={"deadline_seconds": 20},
    )
    async with running_service(config):
        started = time.monotonic()
        answers = await asyncio.gather(
            *(ask(nc, "complete", {"prompt": f"q{i}"}) for i in range(50))
        )
        elapsed = time.monotonic() - started
    assert all(a["ok"] for a, _ in answers)
    assert elapsed < 6, f"50 requests took {elapsed:.1f} s: served one at a time?"
    assert fake_llm.max_in_flight > 10


async def test_the_prefix_is_configurable(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    config = settings(nats_server, fake_llm, api={"subject_prefix": "rosey.llm"})
    async with running_service(config):
        answer, _ = await ask(nc, "status", {}, prefix="rosey.llm")
    assert answer["ok"]


async def test_two_instances_share_the_load(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("fine", delay_seconds=0.2)
    first = settings(nats_server, fake_llm)
    second = settings(nats_server, fake_llm, state={"bucket_prefix": first.state.bucket_prefix})
    async with running_service(first) as one, running_service(second) as two:
        answers = await asyncio.gather(*(ask(nc, "complete", {"prompt": "x"}) for _ in range(20)))
        assert one.api is not None and two.api is not None
        served = (one.api.answered.get("ok", 0), two.api.answered.get("ok", 0))
    assert all(a["ok"] for a, _ in answers)
    assert sum(served) == 20  # each answered once, by exactly one instance
    assert min(served) > 0


DOC_REQUEST = re.compile(r"^nats req (\S+) '(.*)'$", re.MULTILINE)


async def test_every_example_in_the_api_doc_works_against_the_demo_settings(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient, tmp_path: Path
) -> None:
    """docs/API.md's `nats req` lines, sent as written to a service with the demo's channel."""
    fake_llm.reply_with("a fine answer")
    provider = {
        "type": "openai_compatible",
        "base_url": fake_llm.base_url,
        "model": "fake-model",
        "api_key": "sk-demo",
    }
    base = build_settings({}, "test")
    providers = {name: ProviderSettings(**provider) for name in base.llm_providers}
    config = demo_settings(base, nats_server.url, providers, tmp_path)
    state = config.state.model_copy(update={"bucket_prefix": f"t{uuid.uuid4().hex[:12]}_"})
    config = config.model_copy(update={"state": state})
    examples = DOC_REQUEST.findall((ROOT / "docs" / "API.md").read_text(encoding="utf-8"))
    assert len(examples) >= 11
    bridge = await Bridge.connect(nats_server.url)
    answers: dict[str, dict[str, Any]] = {}
    try:
        async with running_service(config):
            await bridge.chat("DemoTheater", "Bob", "this film is wild", domain="demo.local")
            await asyncio.sleep(0.3)
            for subject, body in examples:
                if "<id from memory.add>" in body:
                    body = body.replace(
                        "<id from memory.add>", answers["memory.add"]["memory"]["id"]
                    )
                msg = await nc.request(subject, body.encode(), timeout=REQUEST_TIMEOUT_SECONDS)
                answer = json.loads(msg.data)
                endpoint = subject.removeprefix(f"{PREFIX}.")
                answers.setdefault(endpoint, answer)
                expected_ok = '"message"' in body or endpoint != "chat"
                assert answer["ok"] is expected_ok, (subject, body, answer)
    finally:
        await bridge.close()
    assert set(answers) == {
        "chat",
        "complete",
        "summarize",
        "memory.add",
        "memory.recall",
        "memory.forget",
        "status",
        "usage",
    }


async def test_one_user_limit_for_mentions_commands_and_api_calls_with_events(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    """Five requests a minute for Alice, however she asks; marks at 80/90/100 % said once."""
    fake_llm.reply_with("sure")
    limits = {"requests_per_minute": 5, "requests_per_hour": 0, "requests_per_day": 0}
    config = settings(nats_server, fake_llm, user_limits=limits)
    events: list[dict[str, Any]] = []

    async def on_event(msg: Any) -> None:
        events.append(json.loads(msg.data))

    await nc.subscribe(f"{PREFIX}.events.usage_threshold", cb=on_event)
    bridge = await Bridge.connect(nats_server.url)
    try:
        async with running_service(config):
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT}, first question?")
            await bridge.wait_for_says(1)
            await bridge.chat(CHANNEL_A, "Alice", "!chat recall popcorn")
            await bridge.wait_for_says(2)
            body = {"channel": CHANNEL_A, "user": "alice", "message": "third?"}
            third, _ = await ask(nc, "chat", body)
            note = {"channel": CHANNEL_A, "user": "Alice", "content": "Alice likes tea"}
            fourth, _ = await ask(nc, "memory.add", note)
            fifth, _ = await ask(nc, "chat", body)
            sixth, headers = await ask(nc, "chat", body)
            other, _ = await ask(nc, "chat", {**body, "user": "Bob"})
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT}, one more?")
            await asyncio.sleep(0.5)
            usage, _ = await ask(nc, "usage", {"user": "Alice"})
    finally:
        await bridge.close()
    records = read_records(config)
    assert third["ok"] and fourth["ok"] and fifth["ok"], (third, fourth, fifth)
    assert code_of(sixth) == "rate_limited" and headers["Nats-Service-Error-Code"] == "429"
    assert "requests per minute" in sixth["error"]["message"]
    assert other["ok"]
    held = [r for r in records if r["username"] == "Alice" and r["outcome"] == "rate_limited"]
    assert held and "user requests per minute" in held[-1]["reason"]
    assert usage["limits"]["requests_per_minute"] == {"used": 5, "limit": 5, "remaining": 0}
    marks = [(e["user"].lower(), e["limit"], e["percent"]) for e in events]
    assert marks == [
        ("alice", "requests_per_minute", 80),
        ("alice", "requests_per_minute", 90),
        ("alice", "requests_per_minute", 100),
    ]


async def test_events_for_responses_errors_and_memory_without_keys_or_chat_text(
    nats_server: NatsServer, fake_llm: FakeLLM, nc: NatsClient
) -> None:
    fake_llm.reply_with("an answer")
    events: list[tuple[str, dict[str, Any]]] = []

    async def on_event(msg: Any) -> None:
        events.append((msg.subject.rsplit(".", 1)[1], json.loads(msg.data)))

    await nc.subscribe(f"{PREFIX}.events.>", cb=on_event)
    await nc.flush()
    bridge = await Bridge.connect(nats_server.url)
    try:
        config = settings(nats_server, fake_llm, commands={"remember_min_rank": 0})
        async with running_service(config):
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT}, my secret plan is tacos?")
            await bridge.wait_for_says(1)
            await bridge.chat(CHANNEL_A, "Alice", "!chat remember Alice likes tacos")
            await bridge.wait_for_says(2)
            await ask(nc, "complete", {"prompt": "hi", "caller": "trivia"})
            added, _ = await ask(
                nc, "memory.add", {"channel": CHANNEL_A, "user": "Bob", "content": "Bob: tea"}
            )
            await ask(
                nc,
                "memory.forget",
                {"channel": CHANNEL_A, "user": "Bob", "id": added["memory"]["id"]},
            )
            fake_llm.fail_with(401, "bad key sk-test-DO-NOT-LEAK-1234567890")
            await ask(nc, "chat", {"channel": CHANNEL_A, "user": "Carol", "message": "tacos?"})
            await asyncio.sleep(0.5)
    finally:
        await bridge.close()
    kinds = [kind for kind, _ in events]
    responses = [e for kind, e in events if kind == "response"]
    assert {(e["source"], e["user"]) for e in responses} == {("chat", "Alice"), ("api", "trivia")}
    chat_reply = next(e for e in responses if e["source"] == "chat")
    assert chat_reply["channel"] == f"{DOMAIN_A}/{CHANNEL_A.lower()}"
    assert chat_reply["provider"] == "fake" and chat_reply["model"] == "fake-model"
    assert chat_reply["prompt_tokens"] == 42 and chat_reply["completion_tokens"] == 7
    assert chat_reply["latency_ms"] >= 0 and "cost_usd" in chat_reply
    memory = [(e["source"], e["action"], e["user"]) for k, e in events if k == "memory"]
    assert memory == [
        ("chat", "remember", "Alice"),
        ("api", "remember", "Bob"),
        ("api", "forget", "Bob"),
    ]
    errors = [e for kind, e in events if kind == "error"]
    assert errors and errors[0]["code"] == "llm_unavailable" and errors[0]["user"] == "Carol"
    assert "usage_threshold" not in kinds  # limits are off in test services
    raw = json.dumps(events)
    assert "sk-test" not in raw and "tacos" not in raw  # no key, no chat text
