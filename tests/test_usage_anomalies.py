"""Usage numbers are untrusted: hostile token counts are clamped or dropped, and noted.

JSON allows `"prompt_tokens": 1000...000` with 400 digits. Before, such a count reached the
budget and the metrics as it was, raised OverflowError after the reply had been posted, and
the reply's JSONL record was lost. Now every wire format's counts are settled where the
provider hands them over: clamped to `MAX_TOKENS_PER_CALL`, or None when they are no count at
all, with a note in `LLMResult.anomalies` that the JSONL record carries.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kryten_llm.config import LLMSettings, ModelPrice, UsageSettings
from kryten_llm.decide.budget import UsageTracker
from kryten_llm.llm.manager import LLMManager
from kryten_llm.llm.providers.base import MAX_TOKENS_PER_CALL
from kryten_llm.tools.simulate import chat_payload, envelope
from kryten_llm.types import ChatMessage, LLMRequest, LLMResult
from tests.support import fake_providers as fp
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM, completion
from tests.support.fake_providers import KINDS, FakeProvider
from tests.support.nats_server import NatsServer
from tests.support.service import BOT, CHANNEL_A, make_settings, read_records, running_service

REQUEST = LLMRequest(system="sys", messages=(ChatMessage("user", "alice: hi bot"),))
ANSWER = "Hello there."
USAGE_KEYS = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "input_tokens",
        "output_tokens",
        "prompt_eval_count",
        "eval_count",
        "promptTokenCount",
        "candidatesTokenCount",
    }
)
HUGE = 10**400
PRICE = ModelPrice(input_per_million_usd=3.0, output_per_million_usd=15.0)

# (id, the value every token count is reported as, the count expected, words in the note)
HOSTILE: list[tuple[str, Any, int | None, str]] = [
    ("huge-int", HUGE, MAX_TOKENS_PER_CALL, "clamped"),
    ("huge-float", 1e308, MAX_TOKENS_PER_CALL, "1e+308"),
    ("negative", -5, None, "-5, ignored"),
    ("nan-string", "NaN", None, "a string 'NaN'"),
    ("bool", True, None, "reported as true"),
    ("nan", math.nan, None, "nan"),
    ("infinity", math.inf, None, "inf"),
    ("object", {"n": 1}, None, "a dict"),
]


def with_usage(data: Any, value: Any) -> Any:
    """`data` with every token count replaced by `value`."""
    if isinstance(data, dict):
        return {k: value if k in USAGE_KEYS else with_usage(v, value) for k, v in data.items()}
    if isinstance(data, list):
        return [with_usage(v, value) for v in data]
    return data


def rewrite_frame(frame: bytes, value: Any) -> bytes:
    """One SSE event or NDJSON line of a stream, with its token counts replaced."""
    lines = frame.decode().split("\n")
    for index, line in enumerate(lines):
        if line.startswith("data: ") and line[6:].startswith("{"):
            lines[index] = "data: " + json.dumps(with_usage(json.loads(line[6:]), value))
        elif line.startswith("{"):
            lines[index] = json.dumps(with_usage(json.loads(line), value))
    return "\n".join(lines).encode()


def hostile_reply(value: Any) -> fp.Behaviour:
    """A correct answer in the provider's format whose usage reports `value` everywhere."""

    async def behaviour(
        fake: FakeProvider, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        if not fp._wants_stream(fake.kind, request, body):
            payload = with_usage(fp.success_body(fake.kind, ANSWER, fake.model), value)
            return web.Response(text=json.dumps(payload), content_type="application/json")
        frames, tail = fp.stream_frames(fake.kind, ["Hello ", "there."], fake.model)
        content_type = "application/x-ndjson" if fake.kind == "ollama" else "text/event-stream"
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for frame in frames + tail:
            await response.write(rewrite_frame(frame, value))
        await response.write_eof()
        return response

    return behaviour


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[dict[str, FakeProvider]]:
    started = {kind: await fp.start_fake_provider(kind) for kind in KINDS}
    yield started
    for server in started.values():
        await server.stop()


@pytest.fixture(params=KINDS)
def provider(request: pytest.FixtureRequest, servers: dict[str, FakeProvider]) -> FakeProvider:
    server = servers[request.param]
    server.reset()
    return server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def manager_for(provider: FakeProvider, session: aiohttp.ClientSession, stream: bool) -> LLMManager:
    settings = LLMSettings(max_retries=0, reply_deadline_seconds=5)
    providers = {"only": provider.settings(stream=stream)}
    return LLMManager(providers, settings, session, rng=random.Random(1))


def assert_settled(result: LLMResult, expected: int | None, words: str) -> None:
    assert (result.prompt_tokens, result.completion_tokens) == (expected, expected)
    assert len(result.anomalies) == 2
    prompt_note, completion_note = result.anomalies
    assert prompt_note.startswith("prompt_tokens reported as") and words in prompt_note
    assert completion_note.startswith("completion_tokens reported as")
    assert all(len(note) < 120 for note in result.anomalies)  # never the 400 digits


@pytest.mark.parametrize(
    ("value", "expected", "words"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
async def test_hostile_counts_in_a_completion(
    provider: FakeProvider,
    session: aiohttp.ClientSession,
    value: Any,
    expected: int | None,
    words: str,
) -> None:
    provider.always(hostile_reply(value))
    result = await manager_for(provider, session, stream=False).complete(REQUEST)
    assert result.text == ANSWER
    assert_settled(result, expected, words)


@pytest.mark.parametrize(
    ("value", "expected", "words"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "stream-false"])
async def test_hostile_counts_in_a_stream(
    provider: FakeProvider,
    session: aiohttp.ClientSession,
    value: Any,
    expected: int | None,
    words: str,
    stream: bool,
) -> None:
    provider.always(hostile_reply(value))
    handle = manager_for(provider, session, stream=stream).stream(REQUEST)
    assert "".join([delta async for delta in handle]) == ANSWER
    assert_settled(handle.result, expected, words)


async def test_sane_counts_are_kept_without_a_note(
    provider: FakeProvider, session: aiohttp.ClientSession
) -> None:
    provider.always(hostile_reply(12))
    result = await manager_for(provider, session, stream=False).complete(REQUEST)
    assert (result.prompt_tokens, result.completion_tokens, result.anomalies) == (12, 12, ())
    provider.always(hostile_reply(12.0))  # a whole number sent as a float is still a count
    result = await manager_for(provider, session, stream=False).complete(REQUEST)
    assert (result.prompt_tokens, result.completion_tokens, result.anomalies) == (12, 12, ())


# --- the budget, on its own ------------------------------------------------------------------


def tracker() -> UsageTracker:
    return UsageTracker(UsageSettings(prices={"m": PRICE}, daily_budget_usd=10.0))


def result_with(prompt: int | None, completion: int | None) -> LLMResult:
    return LLMResult("some text", "p", "m", 1.0, prompt, completion)


def test_the_budget_survives_counts_that_bypassed_the_provider_boundary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = tracker()
    caplog.set_level(logging.WARNING, logger="kryten_llm.decide.budget")
    cost = usage.record(result_with(HUGE, 7), "chan", "alice")
    assert cost.usd == 0.0 and "out of range" in caplog.text
    assert usage.snapshot()["global_usd"] == 0.0
    # The day's spend is still a number: the next reply is priced and counted as usual.
    assert usage.record(result_with(1_000_000, 0), "chan", "alice").usd == 3.0
    assert usage.snapshot()["global_usd"] == 3.0


def test_negative_counts_cost_nothing_and_cannot_buy_budget_back() -> None:
    usage = tracker()
    usage.record(result_with(1_000_000, 0), "chan", "alice")
    cost = usage.record(result_with(-(10**9), -(10**9)), "chan", "alice")
    assert cost.usd == 0.0 and (cost.prompt_tokens, cost.completion_tokens) == (0, 0)
    assert usage.snapshot()["global_usd"] == 3.0


# --- end to end over NATS --------------------------------------------------------------------


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


def hostile_usage(text: str) -> Any:
    async def behaviour(body: dict[str, Any]) -> web.StreamResponse:
        answer = completion(text)
        answer["usage"] = {"prompt_tokens": HUGE, "completion_tokens": HUGE, "total_tokens": HUGE}
        return web.Response(text=json.dumps(answer), content_type="application/json")

    return behaviour


async def test_a_huge_token_count_is_clamped_recorded_and_the_next_reply_works(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    settings = make_settings(
        nats_server.url,
        fake_llm.base_url,
        usage={"prices": {"fake-model": PRICE.model_dump()}, "daily_budget_usd": 1000.0},
    )
    fake_llm.behaviour = hostile_usage("First answer.")
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} how many tokens was that?")
        await bridge.wait_for_says(1, timeout=10)
        fake_llm.reply_with("Second answer.")
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} and this one?")
        await bridge.wait_for_says(2, timeout=10)
    assert [s["args"]["message"] for s in bridge.says()] == ["First answer.", "Second answer."]
    first, second = read_records(settings)
    assert first["outcome"] == "sent" and first["parts"] == ["First answer."]
    assert first["prompt_tokens"] == first["completion_tokens"] == MAX_TOKENS_PER_CALL
    assert [a.split(" reported")[0] for a in first["anomalies"]] == [
        "prompt_tokens",
        "completion_tokens",
    ]
    assert all("clamped" in a for a in first["anomalies"])
    # Clamped, the count is still priced as a (very expensive) finite number.
    assert first["cost_usd"] == pytest.approx(10 * (3.0 + 15.0))
    assert second["outcome"] == "sent" and second["anomalies"] == []
    assert (second["prompt_tokens"], second["completion_tokens"]) == (42, 7)


async def test_accounting_never_raises_and_notes_why(
    nats_server: NatsServer, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    """A count that bypassed the provider boundary cannot break accounting (or lose the log).

    Metrics turn counts into floats: 10**400 raises OverflowError there. `_account` logs it
    and notes it on the result the record is written from.
    """
    settings = make_settings(nats_server.url, fake_llm.base_url)
    async with running_service(settings) as service:
        pipeline = service.pipeline
        assert pipeline is not None
        raw = envelope("chatMsg", chat_payload("Alice", f"{BOT} hi"), CHANNEL_A, "cytu.be")
        job = pipeline.decide("chatmsg", json.loads(raw))
        assert job is not None
        hostile = LLMResult(ANSWER, "fake", "fake-model", 5.0, HUGE, 3)
        result, usd = pipeline._account(job, hostile, REQUEST)
    assert result is not None and usd == 0.0
    assert result.anomalies == ("accounting failed: OverflowError",)
    assert "accounting for the reply to Alice failed" in caplog.text
