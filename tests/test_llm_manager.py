"""The LLM manager against real local provider servers: fallback, retries, breakers, streams."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kryten_llm.config import LLMSettings, ProviderSettings
from kryten_llm.llm.manager import LLMManager, LLMUnavailable, StreamHandle
from kryten_llm.types import ChatMessage, LLMRequest
from tests.support import fake_providers as fp
from tests.support.fake_providers import KINDS, FakeProvider
from tests.support.nats_server import free_port

SECRET = "sk-live-TOPSECRET-987654321"
REQUEST = LLMRequest(system="sys", messages=(ChatMessage("user", "alice: hi bot"),))
BACKUP_TEXT = "Backup here."


class Sleeps:
    """An injectable sleep that records delays and returns at once (the deadline is real)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


class Clock:
    """Real monotonic time plus an offset a test can advance (for breaker cool-downs)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def llm_settings(**overrides: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "reply_deadline_seconds": 6.0,
        "attempt_timeout_seconds": 0.6,
        "fallback_reserve_seconds": 1.0,
        "stream_idle_timeout_seconds": 0.6,
        "max_retries": 2,
        "backoff_base_seconds": 0.1,
        "backoff_max_seconds": 1.0,
        "jitter_fraction": 0.5,
        "retry_after_cap_seconds": 5.0,
        "breaker_window": 10,
        "breaker_failure_rate": 0.5,
        "breaker_min_calls": 4,
        "breaker_cooldown_seconds": 30.0,
        "health_check_timeout_seconds": 1.0,
    }
    return LLMSettings(**(values | overrides))


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[dict[str, FakeProvider]]:
    started: dict[str, FakeProvider] = {kind: await fp.start_fake_provider(kind) for kind in KINDS}
    started["backup"] = await fp.start_fake_provider("openai_compatible", model="backup-model")
    yield started
    for server in started.values():
        await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def backup(servers: dict[str, FakeProvider]) -> FakeProvider:
    server = servers["backup"]
    server.reset()
    server.always(fp.reply(BACKUP_TEXT))
    return server


@pytest.fixture(params=KINDS)
def primary(request: pytest.FixtureRequest, servers: dict[str, FakeProvider]) -> FakeProvider:
    server = servers[request.param]
    server.reset()
    return server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_manager(
    session: aiohttp.ClientSession,
    providers: dict[str, ProviderSettings],
    sleeps: Sleeps | None = None,
    clock: Clock | None = None,
    **llm: Any,
) -> LLMManager:
    return LLMManager(
        providers,
        llm_settings(**llm),
        session,
        rng=random.Random(7),
        sleep=sleeps or Sleeps(),
        clock=clock or Clock(),
    )


def pair(
    primary: FakeProvider, backup: FakeProvider, **primary_overrides: Any
) -> dict[str, ProviderSettings]:
    return {
        "primary": primary.settings(priority=1, api_key=SECRET, **primary_overrides),
        "backup": backup.settings(priority=2),
    }


def outcomes(attempts: tuple[Any, ...]) -> list[tuple[str, str]]:
    return [(a.provider, a.outcome) for a in attempts]


# --- fault matrix: every fault, every wire format -> the fallback answers -----------------------

FAULTS: list[tuple[str, Any, list[str], str]] = [
    # (id, behaviour, primary outcomes expected, text expected in the log)
    ("500", fp.status(500), ["http_500"] * 3, "outcome=http_500"),
    ("502", fp.status(502), ["http_502"] * 3, "outcome=http_502"),
    ("503", fp.status(503), ["http_503"] * 3, "outcome=http_503"),
    ("429-long", fp.status(429, retry_after="120"), ["http_429"], "moving to the next provider"),
    ("401", fp.status(401, "bad key"), ["http_401"], "outcome=http_401"),
    ("400", fp.status(400, "bad request"), ["http_400"], "outcome=http_400"),
    ("403", fp.status(403), ["http_403"], "outcome=http_403"),
    ("404", fp.status(404), ["http_404"], "outcome=http_404"),
    ("hang", fp.hang(30), ["timeout"] * 3, "outcome=timeout"),
    ("malformed", fp.malformed(), ["bad_json"], "outcome=bad_json"),
    ("empty", fp.empty(), ["empty"], "outcome=empty"),
    ("null", fp.null_content(), ["empty"], "outcome=empty"),
]


SLOW_FAULTS = frozenset({"hang"})
"""Faults that wait out a real attempt timeout (marked slow for the inner loop)."""


@pytest.mark.parametrize(
    ("behaviour", "expected", "logged"),
    [
        pytest.param(*f[1:], id=f[0], marks=[pytest.mark.slow] if f[0] in SLOW_FAULTS else [])
        for f in FAULTS
    ],
)
async def test_fault_falls_back(
    primary: FakeProvider,
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
    behaviour: Any,
    expected: list[str],
    logged: str,
) -> None:
    primary.always(behaviour)
    manager = make_manager(session, pair(primary, backup), sleeps)
    caplog.set_level(logging.WARNING, logger="kryten_llm.llm.manager")
    started = time.monotonic()
    result = await manager.complete(REQUEST)
    assert time.monotonic() - started < 6.0
    assert result.text == BACKUP_TEXT and result.provider == "backup"
    assert outcomes(result.attempts) == [("primary", o) for o in expected] + [("backup", "ok")]
    assert len(primary.requests) == len(expected)
    assert logged in caplog.text
    assert "provider=primary" in caplog.text or "primary asked to retry" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize("kind", KINDS)
async def test_refused_connection_falls_back(
    kind: Any,
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    providers = {
        "down": ProviderSettings(type=kind, base_url=fp.closed_port_url(kind), priority=1),
        "backup": backup.settings(priority=2),
    }
    caplog.set_level(logging.WARNING, logger="kryten_llm.llm.manager")
    result = await make_manager(session, providers).complete(REQUEST)
    assert result.provider == "backup"
    assert outcomes(result.attempts) == [("down", "connect")] * 3 + [("backup", "ok")]
    assert "provider=down outcome=connect" in caplog.text


async def test_redirect_is_an_error_not_retried_and_the_fallback_answers(
    primary: FakeProvider,
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A redirect is a configuration error: one attempt, an ERROR line naming the host."""
    primary.always(fp.redirect(f"http://127.0.0.2:{backup.port}/v1/chat/completions"))
    manager = make_manager(session, pair(primary, backup))
    caplog.set_level(logging.WARNING, logger="kryten_llm.llm.manager")
    result = await manager.complete(REQUEST)
    assert result.provider == "backup"
    assert outcomes(result.attempts) == [("primary", "redirect"), ("backup", "ok")]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "configuration error" in errors[0].getMessage()
    assert f"127.0.0.2:{backup.port}" in errors[0].getMessage()
    assert SECRET not in caplog.text
    assert len(backup.requests) == 1  # only the fallback's own request, nothing redirected


@pytest.mark.slow
async def test_hanging_provider_leaves_room_for_fallback(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["openai_compatible"]
    primary.reset()
    primary.always(fp.hang(60))
    # The primary's own timeout is longer than the whole deadline: the reserve must cut it.
    providers = pair(primary, backup, timeout_seconds=60)
    manager = make_manager(
        session, providers, reply_deadline_seconds=2.5, fallback_reserve_seconds=1.0, max_retries=0
    )
    started = time.monotonic()
    result = await manager.complete(REQUEST)
    elapsed = time.monotonic() - started
    assert result.provider == "backup"
    assert elapsed < 2.5
    assert outcomes(result.attempts)[0] == ("primary", "timeout")
    assert result.attempts[0].latency_ms >= 1000  # it got 2.5 - 1.0 s, not the whole deadline


async def test_retry_then_success_with_jittered_backoff(
    primary: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession, sleeps: Sleeps
) -> None:
    primary.then(fp.status(503), fp.status(500)).always(fp.reply("second time lucky"))
    result = await make_manager(session, pair(primary, backup), sleeps).complete(REQUEST)
    assert result.text == "second time lucky" and result.provider == "primary"
    assert outcomes(result.attempts) == [
        ("primary", "http_503"),
        ("primary", "http_500"),
        ("primary", "ok"),
    ]
    first, second = sleeps.delays
    assert 0.05 <= first <= 0.15  # base 0.1 * [0.5, 1.5]
    assert 0.1 <= second <= 0.3  # base * 2 * [0.5, 1.5]
    assert backup.requests == []


async def test_backoff_is_capped(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["openai_compatible"]
    primary.reset()
    primary.always(fp.status(500))
    sleeps = Sleeps()
    manager = make_manager(
        session,
        pair(primary, backup),
        sleeps,
        max_retries=6,
        backoff_base_seconds=0.2,
        backoff_max_seconds=0.5,
        breaker_min_calls=50,
    )
    await manager.complete(REQUEST)
    assert len(sleeps.delays) == 6
    assert max(sleeps.delays) <= 0.5


async def test_retry_after_is_honoured(
    primary: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession, sleeps: Sleeps
) -> None:
    primary.then(fp.status(429, "slow down", retry_after="2")).always(fp.reply("after the wait"))
    result = await make_manager(session, pair(primary, backup), sleeps).complete(REQUEST)
    assert result.text == "after the wait"
    assert sleeps.delays == [2.0]


async def test_retry_after_beyond_deadline_moves_on(
    servers: dict[str, FakeProvider],
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary = servers["anthropic"]
    primary.reset()
    primary.always(fp.status(429, retry_after="4"))  # under the cap, over the time left
    caplog.set_level(logging.WARNING, logger="kryten_llm.llm.manager")
    manager = make_manager(session, pair(primary, backup), sleeps, reply_deadline_seconds=3.0)
    result = await manager.complete(REQUEST)
    assert result.provider == "backup" and sleeps.delays == []
    assert "asked to retry after 4s" in caplog.text


async def test_every_provider_fails(
    servers: dict[str, FakeProvider],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = servers["gemini"], servers["ollama"]
    a.reset()
    b.reset()
    a.always(fp.status(401))
    b.always(fp.malformed())
    providers = {"a": a.settings(priority=1, api_key=SECRET), "b": b.settings(priority=2)}
    caplog.set_level(logging.WARNING, logger="kryten_llm.llm.manager")
    with pytest.raises(LLMUnavailable) as info:
        await make_manager(session, providers).complete(REQUEST)
    assert outcomes(info.value.attempts) == [("a", "http_401"), ("b", "bad_json")]
    assert "a=http_401" in info.value.reason and "b=bad_json" in info.value.reason
    assert "no reply" in caplog.text
    assert SECRET not in caplog.text and SECRET not in str(info.value)


@pytest.mark.slow
async def test_deadline_bounds_the_whole_reply(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    a, b = servers["openai_compatible"], servers["ollama"]
    a.reset()
    b.reset()
    a.always(fp.hang(60))
    b.always(fp.hang(60))
    providers = {
        "a": a.settings(priority=1, timeout_seconds=30),
        "b": b.settings(priority=2, timeout_seconds=30),
    }
    manager = make_manager(
        session, providers, reply_deadline_seconds=1.5, fallback_reserve_seconds=0.7
    )
    started = time.monotonic()
    with pytest.raises(LLMUnavailable) as info:
        await manager.complete(REQUEST)
    assert time.monotonic() - started < 1.5 + 1.0
    assert [o for _, o in outcomes(info.value.attempts)][:2] == ["timeout", "timeout"]


async def test_secret_never_logged_or_recorded(
    servers: dict[str, FakeProvider],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for kind in KINDS:
        server = servers[kind]
        server.reset()
        server.always(fp.status(401, f"Invalid API key: {SECRET}"))
        manager = make_manager(session, {"p": server.settings(api_key=SECRET)})
        with pytest.raises(LLMUnavailable) as info:
            await manager.complete(REQUEST)
        assert SECRET not in repr(info.value.attempts) and SECRET not in info.value.reason
        handle = manager.stream(REQUEST)
        with pytest.raises(LLMUnavailable):
            async for _ in handle:
                pass
        server.models_status = 401
        checks = await manager.check_all()
        assert SECRET not in repr(checks)
    assert SECRET not in caplog.text
    assert "***" in caplog.text


# --- ordering ---------------------------------------------------------------------------------


def test_order_priority_preferred_and_fallback_chains(session: aiohttp.ClientSession) -> None:
    def p(
        priority: int, fallback: list[str] | None = None, enabled: bool = True
    ) -> ProviderSettings:
        return ProviderSettings(priority=priority, fallback=fallback or [], enabled=enabled)

    providers = {
        "cheap": p(1, ["mid"]),
        "mid": p(5),
        "big": p(3, ["cheap", "ghost", "off"]),
        "off": p(0, enabled=False),
        "last": p(9),
    }
    manager = make_manager(session, providers)
    assert manager.order() == ["cheap", "mid", "big", "last"]
    assert manager.order("big") == ["big", "cheap", "mid", "last"]
    assert manager.order("off") == ["cheap", "mid", "big", "last"]  # disabled: ignored
    assert manager.order("nope") == ["cheap", "mid", "big", "last"]


async def test_preferred_provider_answers(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    special = servers["gemini"]
    special.reset()
    special.always(fp.reply("from gemini"))
    providers = {"backup": backup.settings(priority=1), "special": special.settings(priority=9)}
    manager = make_manager(session, providers)
    assert (await manager.complete(REQUEST)).provider == "backup"
    assert (await manager.complete(REQUEST, preferred="special")).text == "from gemini"


async def test_no_enabled_provider(session: aiohttp.ClientSession) -> None:
    manager = make_manager(session, {"x": ProviderSettings(enabled=False)})
    with pytest.raises(LLMUnavailable) as info:
        await manager.complete(REQUEST)
    assert info.value.reason == "no enabled provider" and info.value.attempts == ()


# --- circuit breaker --------------------------------------------------------------------------


async def test_breaker_opens_skips_half_opens_and_closes(
    servers: dict[str, FakeProvider],
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary = servers["ollama"]
    primary.reset()
    primary.always(fp.status(500))
    manager = make_manager(
        session, pair(primary, backup), clock=clock, max_retries=0, breaker_min_calls=4
    )
    caplog.set_level(logging.WARNING, logger="kryten_llm.llm.manager")
    for _ in range(4):
        await manager.complete(REQUEST)
    state = manager.breaker_states()["primary"]
    assert state["state"] == "open" and state["last_error"] == "http_500"
    assert state["failure_rate"] == 1.0 and state["last_failure_at"] is not None

    # Open: skipped without a request.
    before = len(primary.requests)
    result = await manager.complete(REQUEST)
    assert len(primary.requests) == before
    assert outcomes(result.attempts) == [("primary", "breaker_open"), ("backup", "ok")]
    assert "primary skipped: circuit breaker open" in caplog.text

    # After the cool-down: one probe. It fails -> open again.
    clock.offset += 31
    await manager.complete(REQUEST)
    assert len(primary.requests) == before + 1
    assert manager.breaker_states()["primary"]["state"] == "open"

    # Next cool-down: the probe succeeds -> closed.
    clock.offset += 31
    primary.always(fp.reply("healthy again"))
    result = await manager.complete(REQUEST)
    assert result.provider == "primary"
    state = manager.breaker_states()["primary"]
    assert state["state"] == "closed" and state["last_success_at"] is not None


async def test_half_open_admits_a_single_probe(
    servers: dict[str, FakeProvider],
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    primary = servers["anthropic"]
    primary.reset()
    primary.always(fp.status(503))
    manager = make_manager(
        session, pair(primary, backup), clock=clock, max_retries=0, breaker_min_calls=2
    )
    for _ in range(2):
        await manager.complete(REQUEST)
    assert manager.breaker_states()["primary"]["state"] == "open"
    clock.offset += 31
    primary.reset()
    primary.always(fp.reply("slow probe", delay_seconds=0.3))
    results = await asyncio.gather(*(manager.complete(REQUEST) for _ in range(3)))
    assert len(primary.requests) == 1
    assert sorted(r.provider for r in results) == ["backup", "backup", "primary"]
    assert manager.breaker_states()["primary"]["state"] == "closed"


async def test_breaker_needs_min_calls_and_rate(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["openrouter"]
    primary.reset()
    primary.then(fp.status(500), fp.reply("a"), fp.status(500), fp.reply("b"), fp.reply("c"))
    manager = make_manager(
        session, pair(primary, backup), max_retries=0, breaker_min_calls=4, breaker_failure_rate=0.6
    )
    for _ in range(5):
        await manager.complete(REQUEST)
    state = manager.breaker_states()["primary"]
    assert state["state"] == "closed" and state["calls"] == 5


async def test_reconfigure_keeps_breakers_of_surviving_providers(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["gemini"]
    primary.reset()
    primary.always(fp.status(500))
    manager = make_manager(session, pair(primary, backup), max_retries=0, breaker_min_calls=2)
    for _ in range(2):
        await manager.complete(REQUEST)
    assert manager.breaker_states()["primary"]["state"] == "open"
    new_providers = {"primary": primary.settings(priority=1), "other": backup.settings(priority=5)}
    manager.reconfigure(new_providers, llm_settings(breaker_window=3))
    states = manager.breaker_states()
    assert states["primary"]["state"] == "open"
    assert set(states) == {"primary", "other"}
    assert states["other"]["state"] == "closed"
    result = await manager.complete(REQUEST)
    assert result.provider == "other"


# --- availability -----------------------------------------------------------------------------


async def test_check_all_logs_each_and_survives_a_dead_provider(
    servers: dict[str, FakeProvider],
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    providers: dict[str, ProviderSettings] = {}
    for kind in KINDS:
        servers[kind].reset()
        providers[kind] = servers[kind].settings()
    providers["dead"] = ProviderSettings(type="ollama", base_url=fp.closed_port_url("ollama"))
    providers["off"] = ProviderSettings(enabled=False)
    caplog.set_level(logging.INFO, logger="kryten_llm.llm.manager")
    results = await make_manager(session, providers).check_all()
    assert set(results) == {*KINDS, "dead"}
    assert all(results[k][0] for k in KINDS)
    assert results["dead"][0] is False
    assert "dead (ollama" in caplog.text and "UNAVAILABLE" in caplog.text
    for kind in KINDS:
        assert f"LLM provider {kind} (" in caplog.text


async def test_check_all_times_out_a_hanging_models_endpoint(
    session: aiohttp.ClientSession,
) -> None:
    from aiohttp import web

    async def never(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/models", never)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        providers = {"slow": ProviderSettings(base_url=f"http://127.0.0.1:{port}/v1")}
        manager = make_manager(session, providers, health_check_timeout_seconds=0.3)
        started = time.monotonic()
        results = await manager.check_all()
        assert time.monotonic() - started < 3
        assert results["slow"][0] is False and results["slow"][1].startswith("timeout")
    finally:
        await runner.cleanup()


# --- streaming --------------------------------------------------------------------------------


async def drain(handle: StreamHandle) -> list[str]:
    return [delta async for delta in handle]


async def test_stream_each_kind(
    primary: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary.always(fp.stream(["Stre", "amed ", "reply"]))
    handle = make_manager(session, pair(primary, backup)).stream(REQUEST)
    assert await drain(handle) == ["Stre", "amed ", "reply"]
    result = handle.result
    assert result.text == "Streamed reply" and result.provider == "primary"
    assert (result.prompt_tokens, result.completion_tokens) == (42, 7)
    assert handle.interrupted is None
    assert outcomes(result.attempts) == [("primary", "ok")]


@pytest.mark.slow
async def test_stream_first_delta_before_generation_ends(
    primary: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary.always(fp.stream(["Quick ", "then slow"], pause_after_first_seconds=1.0))
    manager = make_manager(session, pair(primary, backup), stream_idle_timeout_seconds=3.0)
    handle = manager.stream(REQUEST)
    started = time.monotonic()
    first_at = None
    async for _ in handle:
        if first_at is None:
            first_at = time.monotonic() - started
    total = time.monotonic() - started
    assert first_at is not None and total >= 1.0
    assert first_at < total - 0.5
    assert handle.result.text == "Quick then slow"
    assert handle.first_delta_ms is not None and handle.first_delta_ms < 1000 * (total - 0.5)


@pytest.mark.parametrize(
    ("behaviour", "outcome"),
    [
        (fp.status(500), "http_500"),
        (fp.status(401), "http_401"),
        (fp.hang(30), "timeout"),
        (fp.malformed(), "bad_json"),
        (fp.raw_json({"error": {"message": "no such model"}}), "api_error"),
        (fp.cut([]), "stream_cut"),
        (fp.cut([" ", "\n"]), "stream_cut"),  # only blank text reached us: still fallback
    ],
)
async def test_stream_falls_back_before_first_delta(
    primary: FakeProvider,
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    behaviour: Any,
    outcome: str,
) -> None:
    primary.always(behaviour)
    caplog.set_level(logging.WARNING, logger="kryten_llm.llm.manager")
    handle = make_manager(session, pair(primary, backup), max_retries=0).stream(REQUEST)
    text = "".join(await drain(handle))
    assert text == BACKUP_TEXT
    assert handle.result.provider == "backup" and handle.interrupted is None
    assert outcomes(handle.result.attempts) == [("primary", outcome), ("backup", "ok")]
    assert f"outcome={outcome}" in caplog.text


@pytest.mark.parametrize("abort", [True, False])
async def test_stream_cut_midway_ends_cleanly(
    primary: FakeProvider,
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    abort: bool,
) -> None:
    primary.always(fp.cut(["Half a ", "thought"], abort=abort))
    caplog.set_level(logging.WARNING, logger="kryten_llm.llm.manager")
    handle = make_manager(session, pair(primary, backup)).stream(REQUEST)
    assert await drain(handle) == ["Half a ", "thought"]
    assert handle.interrupted == "stream_cut"
    assert handle.result.text == "Half a thought"
    assert outcomes(handle.result.attempts) == [("primary", "stream_cut")]
    assert backup.requests == []  # no fallback once text reached the caller
    assert "broke after 14 chars" in caplog.text


async def test_stream_stall_midway_hits_idle_timeout(
    primary: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary.always(fp.cut(["Started "], stall_seconds=30))
    manager = make_manager(session, pair(primary, backup), stream_idle_timeout_seconds=0.4)
    handle = manager.stream(REQUEST)
    started = time.monotonic()
    assert await drain(handle) == ["Started "]
    assert time.monotonic() - started < 3
    assert handle.interrupted == "timeout"
    assert handle.result.text == "Started "


async def test_stream_in_stream_error_after_text(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["anthropic"]
    primary.reset()
    primary.always(fp.stream_error_event(["Some text"], "Overloaded"))
    handle = make_manager(session, pair(primary, backup)).stream(REQUEST)
    assert await drain(handle) == ["Some text"]
    assert handle.interrupted == "api_error"


async def test_stream_false_provider_yields_one_delta(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["gemini"]
    primary.reset()
    primary.always(fp.reply("whole answer at once"))
    handle = make_manager(session, pair(primary, backup, stream=False)).stream(REQUEST)
    assert await drain(handle) == ["whole answer at once"]
    assert primary.requests[-1].path.endswith(":generateContent")
    assert handle.result.completion_tokens == 7


async def test_stream_total_failure_raises(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    primary = servers["ollama"]
    primary.reset()
    primary.always(fp.status(503))
    handle = make_manager(session, {"only": primary.settings()}).stream(REQUEST)
    with pytest.raises(LLMUnavailable) as info:
        await drain(handle)
    assert [o for _, o in outcomes(info.value.attempts)] == ["http_503"] * 3
    with pytest.raises(RuntimeError):
        _ = handle.result


async def test_stream_retry_before_first_delta(
    servers: dict[str, FakeProvider],
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    sleeps: Sleeps,
) -> None:
    primary = servers["openai_compatible"]
    primary.reset()
    primary.then(fp.status(429, retry_after="1")).always(fp.stream(["ok ", "now"]))
    handle = make_manager(session, pair(primary, backup), sleeps).stream(REQUEST)
    assert await drain(handle) == ["ok ", "now"]
    assert sleeps.delays == [1.0]
    assert outcomes(handle.result.attempts) == [("primary", "http_429"), ("primary", "ok")]


async def test_stream_abandoned_early_closes_cleanly(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["openai_compatible"]
    primary.reset()
    primary.always(fp.stream(["a ", "b ", "c"], delay_between_seconds=0.2))
    manager = make_manager(session, pair(primary, backup))
    handle = manager.stream(REQUEST)
    async for _ in handle:
        break
    await handle.aclose()
    assert not handle.done
    assert manager.breaker_states()["primary"]["calls"] == 0  # no verdict on the provider
    with pytest.raises(RuntimeError):
        async for _ in handle:
            pass


@pytest.mark.slow
async def test_stream_past_the_deadline_ends_with_what_it_has(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["ollama"]
    primary.reset()
    primary.always(fp.stream([f"w{i} " for i in range(20)], delay_between_seconds=0.2))
    manager = make_manager(
        session, pair(primary, backup), reply_deadline_seconds=1.2, stream_idle_timeout_seconds=1.0
    )
    handle = manager.stream(REQUEST)
    started = time.monotonic()
    deltas = await drain(handle)
    assert time.monotonic() - started < 2.5
    assert 1 <= len(deltas) < 20
    assert handle.interrupted == "deadline"
    assert handle.result.text == "".join(deltas)


async def test_reload_removing_a_provider_mid_reply(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary = servers["openrouter"]
    primary.reset()
    primary.always(fp.reply("slow but fine", delay_seconds=0.3))
    manager = make_manager(session, pair(primary, backup))
    pending = asyncio.create_task(manager.complete(REQUEST))
    await asyncio.sleep(0.1)
    manager.reconfigure({"backup": backup.settings()}, llm_settings())
    result = await pending
    assert result.text == "slow but fine"
    assert set(manager.breaker_states()) == {"backup"}


class Endless:
    """A stream that never ends: it writes text frames until the client closes the connection."""

    def __init__(self, text: str = "and on ") -> None:
        self.text = text
        self.frames_written = 0
        self.closed_by_client = asyncio.Event()

    async def __call__(
        self, fake: FakeProvider, request: Any, body: dict[str, Any]
    ) -> web.StreamResponse:
        frames, _tail = fp.stream_frames(fake.kind, [self.text], fake.model)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if fake.kind == "ollama":
            response.content_type = "application/x-ndjson"
        await response.prepare(request)
        try:
            for frame in frames[:-1]:  # Anthropic's opening events
                await response.write(frame)
            while self.frames_written < 1_000_000:
                await response.write(frames[-1])
                self.frames_written += 1
                await asyncio.sleep(0.001)
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            self.closed_by_client.set()
        return response


async def test_stream_stopped_keeps_the_text_and_closes_the_request(
    primary: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    endless = Endless()
    primary.always(endless)
    manager = make_manager(session, pair(primary, backup))
    handle = manager.stream(REQUEST)
    received: list[str] = []
    async for delta in handle:
        received.append(delta)
        if len(received) == 3:
            break
    await handle.stop()
    assert handle.done and handle.interrupted == "stopped"
    assert handle.result.text == "".join(received) == "and on " * 3
    assert handle.result.provider == "primary" and handle.result.model == primary.model
    assert outcomes(handle.result.attempts) == [("primary", "stopped")]
    assert manager.breaker_states()["primary"]["calls"] == 0  # no verdict on the provider
    await asyncio.wait_for(endless.closed_by_client.wait(), timeout=5)
    assert endless.frames_written < 1000
    assert backup.requests == []


async def test_stop_after_the_stream_ended_changes_nothing(
    primary: FakeProvider, backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    primary.always(fp.stream(["All ", "done."]))
    handle = make_manager(session, pair(primary, backup)).stream(REQUEST)
    assert await drain(handle) == ["All ", "done."]
    await handle.stop()
    assert handle.interrupted is None
    assert outcomes(handle.result.attempts) == [("primary", "ok")]


async def test_a_long_blank_prefix_is_linear_and_bounded(
    servers: dict[str, FakeProvider], backup: FakeProvider, session: aiohttp.ClientSession
) -> None:
    """Thousands of whitespace deltas before the text: not re-scanned, not all kept."""
    primary = servers["openai_compatible"]
    primary.reset()
    primary.always(fp.stream([" " * 16] * 20_000 + ["Hello."]))
    handle = make_manager(
        session, pair(primary, backup), reply_deadline_seconds=30, attempt_timeout_seconds=20
    ).stream(REQUEST)
    started = time.monotonic()
    (delta,) = await drain(handle)
    assert time.monotonic() - started < 10
    assert delta.endswith("Hello.") and delta.isascii()
    assert len(delta) <= 4096 + 16 + len("Hello.")
    assert handle.result.text == delta


async def test_a_probe_that_never_started_does_not_wedge_the_breaker(
    servers: dict[str, FakeProvider],
    backup: FakeProvider,
    session: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    """Half-open, but the reply's deadline is too short to start the probe: the next may."""
    primary = servers["openai_compatible"]
    primary.reset()
    primary.always(fp.status(500))
    providers = pair(primary, backup)
    manager = make_manager(session, providers, clock=clock, max_retries=0, breaker_min_calls=2)
    for _ in range(2):
        await manager.complete(REQUEST)
    assert manager.breaker_states()["primary"]["state"] == "open"
    clock.offset += 31
    primary.reset()
    primary.always(fp.reply("back again"))
    manager.reconfigure(providers, llm_settings(reply_deadline_seconds=0.05, max_retries=0))
    with pytest.raises(LLMUnavailable) as info:
        await manager.complete(REQUEST)
    assert "deadline" in info.value.reason and primary.requests == []
    manager.reconfigure(providers, llm_settings(max_retries=0, breaker_min_calls=2))
    result = await manager.complete(REQUEST)
    assert result.provider == "primary" and result.text == "back again"
    assert manager.breaker_states()["primary"]["state"] == "closed"
