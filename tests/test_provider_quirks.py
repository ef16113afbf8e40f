"""Providers as they really behave: request shapes per model, thinking budgets, retry delays.

Each test talks HTTP to a local server speaking the provider's wire format
(`tests/support/fake_providers.py`), which refuses a request of the wrong shape with the real
API's own error: OpenAI's reasoning models refuse `max_tokens` and `temperature`, Gemini 2.5
spends output tokens on thinking and answers nothing when they run out, a Gemini 429 names its
retry delay in the body. The manager is the real one; only its sleep is recorded, not slept.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kryten_llm.config import LLMSettings, ProviderSettings, UsageSettings
from kryten_llm.decide.budget import UsageTracker
from kryten_llm.llm.manager import LLMManager, LLMUnavailable
from kryten_llm.llm.providers import ProviderError, build_provider
from kryten_llm.llm.providers.openai_compatible import is_reasoning_model
from kryten_llm.types import ChannelKey, ChatMessage, LLMRequest, LLMResult
from tests.support import fake_providers as fp
from tests.support.fake_providers import COMPLETION_TOKENS, PROMPT_TOKENS, FakeProvider

REQUEST = LLMRequest(system="sys", messages=(ChatMessage("user", "alice: hi bot"),))
ANSWER = "Hello from the fake."
BACKUP_TEXT = "Backup here."
LOUNGE = ChannelKey("cytu.be", "lounge")


class Sleeps:
    """An injectable sleep that records what it was asked to wait, and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def openai() -> AsyncIterator[FakeProvider]:
    server = await fp.start_fake_provider("openai_compatible")
    yield server
    await server.stop()


@pytest.fixture
async def gemini() -> AsyncIterator[FakeProvider]:
    server = await fp.start_fake_provider("gemini", model="gemini-2.5-flash")
    yield server
    await server.stop()


@pytest.fixture
async def backup() -> AsyncIterator[FakeProvider]:
    server = await fp.start_fake_provider("openai_compatible", model="backup-model")
    server.always(fp.reply(BACKUP_TEXT))
    yield server
    await server.stop()


def manager(
    session: aiohttp.ClientSession,
    providers: dict[str, ProviderSettings],
    sleeps: Sleeps | None = None,
    **llm: Any,
) -> LLMManager:
    settings = LLMSettings(
        **{
            "reply_deadline_seconds": 20.0,
            "attempt_timeout_seconds": 2.0,
            "max_retries": 1,
            "retry_after_cap_seconds": 10.0,
            **llm,
        }
    )
    return LLMManager(providers, settings, session, rng=random.Random(1), sleep=sleeps or Sleeps())


def with_backup(primary: ProviderSettings, backup: FakeProvider) -> dict[str, ProviderSettings]:
    return {"primary": primary, "backup": backup.settings(priority=2)}


def outcomes(result: LLMResult) -> list[tuple[str, str]]:
    return [(a.provider, a.outcome) for a in result.attempts]


async def answer(
    session: aiohttp.ClientSession, settings: ProviderSettings, *, stream: bool
) -> LLMResult:
    """One call through the manager, streamed or not, with no other provider to hide behind."""
    llm = manager(session, {"only": settings}, max_retries=0)
    if not stream:
        return await llm.complete(REQUEST)
    handle = llm.stream(REQUEST)
    async for _delta in handle:
        pass
    return handle.result


# --- OpenAI reasoning models -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("model", ["o3-mini", "o1", "o4-mini-2025-04-16", "gpt-5", "gpt-5-nano"])
async def test_reasoning_models_get_max_completion_tokens_and_no_temperature(
    openai: FakeProvider, session: aiohttp.ClientSession, model: str, stream: bool
) -> None:
    openai.model = model
    result = await answer(session, openai.settings(max_tokens=300), stream=stream)
    assert result.text == ANSWER
    sent = openai.requests[-1].body
    assert sent["model"] == model
    assert sent["max_completion_tokens"] == 300
    assert "max_tokens" not in sent and "temperature" not in sent


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "llama3.2", "omni-model"])
async def test_other_models_get_max_tokens_and_temperature(
    openai: FakeProvider, session: aiohttp.ClientSession, model: str, stream: bool
) -> None:
    """Checked against a compatible server that does not know `max_completion_tokens`."""
    openai.model = model
    openai.knows_max_completion_tokens = False
    settings = openai.settings(max_tokens=120, temperature=0.7)
    result = await answer(session, settings, stream=stream)
    assert result.text == ANSWER
    sent = openai.requests[-1].body
    assert (sent["max_tokens"], sent["temperature"]) == (120, 0.7)
    assert "max_completion_tokens" not in sent


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("o1", True),
        ("o1-preview", True),
        ("o3-mini", True),
        ("O4-MINI", True),
        ("gpt-5", True),
        ("gpt-5.1", True),
        ("gpt-5-chat-latest", True),
        ("openai/o3", True),
        ("azure/gpt-5-mini", True),
        ("gpt-4o", False),
        ("gpt-50", False),
        ("o", False),
        ("omni", False),
        ("ollama-o3", False),
        ("llama3.2", False),
    ],
)
def test_reasoning_models_by_name(model: str, reasoning: bool) -> None:
    assert is_reasoning_model(model) is reasoning


async def test_the_fake_refuses_each_wrong_shape_as_the_real_apis_do(
    openai: FakeProvider, session: aiohttp.ClientSession
) -> None:
    """The per-provider option overrides the name; set wrongly, the request is refused."""
    openai.model = "o3-mini"
    wrong = openai.settings(reasoning_model=False)
    with pytest.raises(ProviderError) as refused:
        await build_provider("p", wrong).complete(session, REQUEST, 2.0)
    assert refused.value.kind == "http_400" and not refused.value.retryable
    assert "'max_tokens' is not supported with this model" in refused.value.detail

    openai.model = "gpt-4o-mini"
    openai.knows_max_completion_tokens = False
    with pytest.raises(ProviderError) as unknown:
        await build_provider("p", openai.settings(reasoning_model=True)).complete(
            session, REQUEST, 2.0
        )
    assert unknown.value.kind == "http_400"
    assert "Unrecognized request argument supplied: max_completion_tokens" in unknown.value.detail

    openai.reasoning = True  # a deployment whose name says nothing ("my-deployment")
    openai.model = "my-deployment"
    with pytest.raises(ProviderError) as temperature:
        # Without the option the name decides: not a reasoning model, so max_tokens and a
        # temperature go out, and the reasoning model behind the name refuses them.
        await build_provider("p", openai.settings()).complete(session, REQUEST, 2.0)
    assert temperature.value.kind == "http_400"
    settings = openai.settings(reasoning_model=True)
    assert (await build_provider("p", settings).complete(session, REQUEST, 2.0)).text == ANSWER


async def test_openai_temperature_is_refused_on_its_own_too(
    openai: FakeProvider, session: aiohttp.ClientSession
) -> None:
    """`max_completion_tokens` alone is not enough: a temperature other than 1 is refused."""
    openai.model = "o3-mini"
    provider = build_provider("p", openai.settings())
    body = provider.completion_payload(REQUEST) | {"temperature": 0.8}
    async with session.post(f"{openai.base_url}/chat/completions", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["param"], error["code"]) == ("temperature", "unsupported_value")


async def test_openrouter_keeps_max_tokens_for_openai_reasoning_models(
    session: aiohttp.ClientSession,
) -> None:
    server = await fp.start_fake_provider("openrouter", model="openai/o3-mini")
    try:
        result = await answer(session, server.settings(), stream=False)
        assert result.text == ANSWER
        assert "max_tokens" in server.requests[-1].body
        await answer(session, server.settings(reasoning_model=True), stream=False)
        assert "max_completion_tokens" in server.requests[-1].body
    finally:
        await server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_reasoning_that_spends_the_whole_budget_is_a_failed_attempt(
    openai: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession, stream: bool
) -> None:
    openai.model = "o3-mini"
    openai.always(fp.reasoning_spent_all())
    llm = manager(session, with_backup(openai.settings(priority=1), backup))
    if stream:
        handle = llm.stream(REQUEST)
        text = "".join([d async for d in handle])
        result = handle.result
    else:
        result = await llm.complete(REQUEST)
        text = result.text
    assert (text, result.provider) == (BACKUP_TEXT, "backup")
    assert outcomes(result) == [("primary", "max_tokens"), ("backup", "ok")]


# --- Gemini 2.5 thinking -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "budget"),
    [
        ("gemini-2.5-flash", 0),
        ("gemini-2.5-flash-lite", 0),
        ("gemini-2.5-pro", 128),
        ("gemini-2.0-flash", None),
        ("gemini-1.5-pro", None),
    ],
)
async def test_gemini_gets_a_thinking_budget_by_model(
    gemini: FakeProvider, session: aiohttp.ClientSession, model: str, budget: int | None
) -> None:
    gemini.model = model
    result = await answer(session, gemini.settings(max_tokens=256), stream=False)
    assert result.text == ANSWER
    config = gemini.requests[-1].body["generationConfig"]
    assert config.get("thinkingConfig") == (None if budget is None else {"thinkingBudget": budget})
    thinking = min(budget, fp.DYNAMIC_THINKING_TOKENS) if budget else 0
    assert result.completion_tokens == COMPLETION_TOKENS + thinking


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_thinking_that_eats_max_tokens_is_a_failed_attempt_not_silence(
    gemini: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession, stream: bool
) -> None:
    """Thinking left to the model (-1) spends all 64 tokens: no text, MAX_TOKENS."""
    primary = gemini.settings(priority=1, max_tokens=64, thinking_budget=-1)
    llm = manager(session, with_backup(primary, backup))
    if stream:
        handle = llm.stream(REQUEST)
        text = "".join([d async for d in handle])
        result = handle.result
    else:
        result = await llm.complete(REQUEST)
        text = result.text
    assert (text, result.provider) == (BACKUP_TEXT, "backup")
    assert outcomes(result) == [("primary", "max_tokens"), ("backup", "ok")]
    assert gemini.requests[-1].body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": -1}


async def test_with_no_other_provider_the_max_tokens_failure_is_reported(
    gemini: FakeProvider, session: aiohttp.ClientSession
) -> None:
    llm = manager(session, {"only": gemini.settings(max_tokens=64, thinking_budget=-1)})
    with pytest.raises(LLMUnavailable) as failed:
        await llm.complete(REQUEST)
    assert [a.outcome for a in failed.value.attempts] == ["max_tokens"]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_thinking_tokens_are_counted_in_usage_and_cost(
    gemini: FakeProvider, session: aiohttp.ClientSession, stream: bool
) -> None:
    settings = gemini.settings(max_tokens=256, thinking_budget=100)
    result = await answer(session, settings, stream=stream)
    assert result.text == ANSWER
    assert (result.prompt_tokens, result.completion_tokens) == (PROMPT_TOKENS, 107)
    prices = {"gemini-2.5-flash": {"input_per_million_usd": 1.0, "output_per_million_usd": 10.0}}
    usage = UsageTracker(UsageSettings(prices=prices), {"only": settings})
    cost = usage.record(result, LOUNGE, "alice")
    assert cost.completion_tokens == 107
    assert cost.usd == pytest.approx((PROMPT_TOKENS * 1.0 + 107 * 10.0) / 1_000_000)


async def test_gemini_pro_cannot_switch_thinking_off(
    gemini: FakeProvider, session: aiohttp.ClientSession
) -> None:
    """The real API refuses budget 0 on 2.5 Pro; the default sends the least it allows."""
    gemini.model = "gemini-2.5-pro"
    with pytest.raises(ProviderError) as refused:
        await build_provider("p", gemini.settings(thinking_budget=0)).complete(
            session, REQUEST, 2.0
        )
    assert refused.value.kind == "http_400"
    assert "only works in thinking mode" in refused.value.detail
    assert (await answer(session, gemini.settings(), stream=False)).text == ANSWER


async def test_a_budget_for_a_model_that_does_not_think_is_refused(
    gemini: FakeProvider, session: aiohttp.ClientSession
) -> None:
    gemini.model = "gemini-2.0-flash"
    with pytest.raises(ProviderError) as refused:
        await build_provider("p", gemini.settings(thinking_budget=64)).complete(
            session, REQUEST, 2.0
        )
    assert refused.value.kind == "http_400"


# --- retry delays ------------------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "seconds"), [("2s", 2.0), ("1.5s", 1.5), ("0.250s", 0.25)])
async def test_gemini_429_retry_delay_in_the_body_is_honoured(
    gemini: FakeProvider,
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    delay: str,
    seconds: float,
) -> None:
    gemini.then(fp.status(429, "quota", retry_delay=delay))
    sleeps = Sleeps()
    result = await manager(
        session, with_backup(gemini.settings(priority=1), backup), sleeps
    ).complete(REQUEST)
    assert result.provider == "primary" and result.text == ANSWER
    assert outcomes(result) == [("primary", "http_429"), ("primary", "ok")]
    assert sleeps.delays == [seconds]


async def test_gemini_429_retry_delay_beyond_the_cap_moves_on(
    gemini: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    gemini.always(fp.status(429, "quota", retry_delay="53s"))
    sleeps = Sleeps()
    llm = manager(session, with_backup(gemini.settings(priority=1), backup), sleeps)
    result = await llm.complete(REQUEST)
    assert result.provider == "backup"
    assert outcomes(result) == [("primary", "http_429"), ("backup", "ok")]
    assert sleeps.delays == []


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize("kind", ["openai_compatible", "anthropic", "gemini"])
async def test_retry_after_as_an_http_date_is_honoured_like_seconds(
    kind: Any, backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    server = await fp.start_fake_provider(kind)
    try:
        server.then(fp.status(503, "busy", retry_after=http_date(4)))
        sleeps = Sleeps()
        llm = manager(session, with_backup(server.settings(priority=1), backup), sleeps)
        result = await llm.complete(REQUEST)
        assert result.provider == "primary"
        assert outcomes(result) == [("primary", "http_503"), ("primary", "ok")]
        [waited] = sleeps.delays
        assert 2.0 <= waited <= 4.0  # whole seconds in the header, and the request took a moment

        server.then(fp.status(503, "busy", retry_after=http_date(120)))  # over the cap
        sleeps.delays.clear()
        result = await llm.complete(REQUEST)
        assert result.provider == "backup" and sleeps.delays == []
    finally:
        await server.stop()
