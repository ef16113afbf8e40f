"""Every provider against a local server speaking its real wire format: answers, faults, streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest

from kryten_llm.config import ProviderSettings
from kryten_llm.llm.providers import (
    Provider,
    ProviderError,
    StreamItem,
    StreamUsage,
    build_provider,
)
from kryten_llm.llm.providers._sse import SSEEvent, sse_events
from kryten_llm.llm.providers.base import merged_turns, parse_retry_after
from kryten_llm.types import ChatMessage, LLMRequest
from tests.support import fake_providers as fp
from tests.support.fake_providers import KINDS, FakeProvider

SECRET = "sk-test-SECRET-0123456789"
REQUEST = LLMRequest(
    system="You are a test bot.",
    messages=(
        ChatMessage("user", "alice: hi"),
        ChatMessage("user", "bob: hello bot"),
        ChatMessage("assistant", "hey"),
        ChatMessage("user", "alice: tell me a joke"),
    ),
)


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[dict[str, FakeProvider]]:
    started = {kind: await fp.start_fake_provider(kind) for kind in KINDS}
    yield started  # type: ignore[misc]
    for server in started.values():
        await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture(params=KINDS)
def fake(request: pytest.FixtureRequest, servers: dict[str, FakeProvider]) -> FakeProvider:
    server = servers[request.param]
    server.reset()
    return server


def provider_for(fake: FakeProvider, **overrides: object) -> Provider:
    values: dict[str, object] = {"api_key": SECRET} | overrides
    return build_provider(f"p-{fake.kind}", fake.settings(**values))


async def collect(items: AsyncIterator[StreamItem]) -> tuple[list[str], list[StreamUsage]]:
    deltas: list[str] = []
    usages: list[StreamUsage] = []
    async for item in items:
        if isinstance(item, str):
            deltas.append(item)
        else:
            usages.append(item)
    return deltas, usages


# --- complete(): the happy path and each format's wire details ----------------------------------


async def test_complete_reads_text_tokens_and_model(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.always(fp.reply("A roundhouse kick!"))
    result = await provider_for(fake).complete(session, REQUEST, 5.0)
    assert result.text == "A roundhouse kick!"
    assert (result.prompt_tokens, result.completion_tokens) == (42, 7)
    assert result.model == "fake-model"
    assert result.provider == f"p-{fake.kind}"


async def test_complete_without_usage_leaves_tokens_unknown(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.always(fp.reply("ok", usage=False))
    result = await provider_for(fake).complete(session, REQUEST, 5.0)
    assert result.prompt_tokens is None and result.completion_tokens is None


async def test_openai_wire(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["openai_compatible"]
    fake.reset()
    await provider_for(fake, max_tokens=99, temperature=0.3).complete(session, REQUEST, 5.0)
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {SECRET}"
    assert sent.body["messages"][0] == {"role": "system", "content": "You are a test bot."}
    assert sent.body["max_tokens"] == 99 and sent.body["temperature"] == 0.3
    assert "stream" not in sent.body


async def test_openrouter_sends_attribution_headers(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["openrouter"]
    fake.reset()
    provider = provider_for(fake, http_referer="https://example.org/bot", x_title="Kryten LLM")
    await provider.complete(session, REQUEST, 5.0)
    headers = fake.requests[-1].headers
    assert headers["HTTP-Referer"] == "https://example.org/bot"
    assert headers["X-Title"] == "Kryten LLM"
    assert headers["Authorization"] == f"Bearer {SECRET}"


async def test_openrouter_error_inside_200_is_api_error(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["openrouter"]
    fake.reset()
    fake.always(fp.raw_json({"error": {"code": 502, "message": "upstream down"}}))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 5.0)
    assert info.value.kind == "api_error" and info.value.retryable
    assert "upstream down" in info.value.detail


async def test_ollama_native_wire(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["ollama"]
    fake.reset()
    # The shared default base_url ends in /v1 (the OpenAI shim); the native API is above it.
    provider = build_provider(
        "o",
        fake.settings(base_url=fake.base_url + "/v1", keep_alive="10m", max_tokens=64),
    )
    await provider.complete(session, REQUEST, 5.0)
    sent = fake.requests[-1]
    assert sent.path == "/api/chat"
    assert sent.body["stream"] is False
    assert sent.body["keep_alive"] == "10m"
    assert sent.body["options"] == {"num_predict": 64, "temperature": 0.8}
    assert sent.body["messages"][0]["role"] == "system"
    assert "Authorization" not in sent.headers


async def test_ollama_embedded_error(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["ollama"]
    fake.reset()
    fake.always(fp.status(404, 'model "nope" not found, try pulling it first'))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 5.0)
    assert info.value.kind == "http_404" and not info.value.retryable
    assert "try pulling it" in info.value.detail


async def test_anthropic_wire(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["anthropic"]
    fake.reset()
    await provider_for(fake, temperature=1.7, max_tokens=77).complete(session, REQUEST, 5.0)
    sent = fake.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == SECRET
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent.headers
    assert sent.body["system"] == "You are a test bot."
    assert sent.body["max_tokens"] == 77
    assert sent.body["temperature"] == 1.0  # clamped to Anthropic's range
    assert [m["role"] for m in sent.body["messages"]] == ["user", "assistant", "user"]
    assert sent.body["messages"][0]["content"] == "alice: hi\n\nbob: hello bot"


async def test_anthropic_error_body_message_and_overload(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["anthropic"]
    fake.reset()
    fake.always(fp.status(529, "Overloaded"))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 5.0)
    assert info.value.kind == "http_529" and info.value.retryable
    assert info.value.detail == "overloaded_error: Overloaded"


async def test_gemini_wire(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["gemini"]
    fake.reset()
    await provider_for(fake, max_tokens=55).complete(session, REQUEST, 5.0)
    sent = fake.requests[-1]
    assert sent.path == "/v1beta/models/fake-model:generateContent"
    assert sent.headers["x-goog-api-key"] == SECRET
    assert "key" not in sent.query  # the key never goes in the URL
    assert sent.body["systemInstruction"] == {"parts": [{"text": "You are a test bot."}]}
    assert [c["role"] for c in sent.body["contents"]] == ["user", "model", "user"]
    assert sent.body["generationConfig"] == {"maxOutputTokens": 55, "temperature": 0.8}


async def test_gemini_accepts_models_prefix_and_skips_thoughts(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["gemini"]
    fake.reset()
    body = fp.success_body("gemini", "answer", "fake-model")
    body["candidates"][0]["content"]["parts"].insert(0, {"text": "thinking...", "thought": True})
    fake.always(fp.raw_json(body))
    result = await provider_for(fake, model="models/fake-model").complete(session, REQUEST, 5.0)
    assert result.text == "answer"
    assert fake.requests[-1].path == "/v1beta/models/fake-model:generateContent"


async def test_gemini_blocked_prompt(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["gemini"]
    fake.reset()
    fake.always(fp.raw_json({"promptFeedback": {"blockReason": "SAFETY"}}))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 5.0)
    assert info.value.kind == "blocked" and not info.value.retryable


# --- complete(): every fault becomes a ProviderError with the right kind -------------------------


@pytest.mark.parametrize(
    ("behaviour", "kind", "retryable"),
    [
        (fp.status(500), "http_500", True),
        (fp.status(502), "http_502", True),
        (fp.status(503), "http_503", True),
        (fp.status(408), "http_408", True),
        (fp.status(400, "bad request"), "http_400", False),
        (fp.status(401, "invalid key"), "http_401", False),
        (fp.status(403), "http_403", False),
        (fp.status(404), "http_404", False),
        (fp.malformed(), "bad_json", False),
        (fp.raw_json(["a", "list"]), "bad_json", False),
        (fp.empty(), "empty", False),
        (fp.null_content(), "empty", False),
        (fp.reply("   "), "empty", False),
    ],
)
async def test_complete_faults(
    fake: FakeProvider,
    session: aiohttp.ClientSession,
    behaviour: fp.Behaviour,
    kind: str,
    retryable: bool,
) -> None:
    fake.always(behaviour)
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 5.0)
    assert (info.value.kind, info.value.retryable) == (kind, retryable)
    assert info.value.provider == f"p-{fake.kind}"


async def test_429_carries_retry_after(fake: FakeProvider, session: aiohttp.ClientSession) -> None:
    fake.always(fp.status(429, "slow down", retry_after="7"))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 5.0)
    assert info.value.kind == "http_429" and info.value.retryable
    assert info.value.retry_after_seconds == 7.0
    assert "slow down" in info.value.detail


async def test_hang_times_out(fake: FakeProvider, session: aiohttp.ClientSession) -> None:
    fake.always(fp.hang(30))
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 0.3)
    assert info.value.kind == "timeout" and info.value.retryable
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("kind", KINDS)
async def test_refused_connection(kind: str, session: aiohttp.ClientSession) -> None:
    settings = ProviderSettings(type=kind, base_url=fp.closed_port_url(kind))  # type: ignore[arg-type]
    with pytest.raises(ProviderError) as info:
        await build_provider("down", settings).complete(session, REQUEST, 2.0)
    assert info.value.kind == "connect" and info.value.retryable


async def test_oversized_body_is_refused(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["openai_compatible"]
    fake.reset()
    fake.always(fp.malformed("x" * (4 * 1024 * 1024 + 10)))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 10.0)
    assert info.value.kind == "bad_json"


async def test_hostile_shapes_are_empty_not_crashes(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    hostile = {
        "choices": "x",
        "message": 5,
        "content": {"a": 1},
        "candidates": [7],
        "usage": "lots",
    }
    fake.always(fp.raw_json(hostile))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 5.0)
    assert info.value.kind in ("empty", "bad_json")


async def test_key_never_in_errors(fake: FakeProvider, session: aiohttp.ClientSession) -> None:
    fake.always(fp.status(401, f"Incorrect API key provided: {SECRET}"))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 5.0)
    assert SECRET not in str(info.value) and SECRET not in info.value.detail
    assert "***" in info.value.detail


async def test_key_with_line_break_is_bad_request_without_the_key(
    servers: dict[str, FakeProvider], session: aiohttp.ClientSession
) -> None:
    fake = servers["openai_compatible"]
    fake.reset()
    provider = provider_for(fake, api_key="sk-abc\r\nX-Evil: 1")
    with pytest.raises(ProviderError) as info:
        await provider.complete(session, REQUEST, 5.0)
    assert info.value.kind == "bad_request"
    assert "sk-abc" not in str(info.value)
    assert fake.requests == []


# --- streaming ---------------------------------------------------------------------------------


async def test_stream_yields_deltas_then_usage(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.always(fp.stream(["Hel", "lo ", "there"]))
    deltas, usages = await collect(provider_for(fake).stream(session, REQUEST, 5.0))
    assert deltas == ["Hel", "lo ", "there"]
    assert len(usages) == 1
    assert (usages[0].prompt_tokens, usages[0].completion_tokens) == (42, 7)


async def test_stream_request_wire(fake: FakeProvider, session: aiohttp.ClientSession) -> None:
    await collect(provider_for(fake).stream(session, REQUEST, 5.0))
    sent = fake.requests[-1]
    if fake.kind == "gemini":
        assert sent.path.endswith(":streamGenerateContent") and sent.query == {"alt": "sse"}
    elif fake.kind in ("openai_compatible", "openrouter"):
        assert sent.body["stream"] is True
        assert sent.body["stream_options"] == {"include_usage": True}
    else:
        assert sent.body["stream"] is True


@pytest.mark.slow
async def test_stream_first_delta_arrives_before_generation_ends(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.always(fp.stream(["first ", "second"], pause_after_first_seconds=1.0))
    started = time.monotonic()
    first_at = end_at = 0.0
    async for item in provider_for(fake).stream(session, REQUEST, 5.0):
        if isinstance(item, str) and not first_at:
            first_at = time.monotonic() - started
    end_at = time.monotonic() - started
    assert end_at >= 1.0
    assert first_at < end_at - 0.5


@pytest.mark.parametrize("abort", [True, False])
async def test_stream_cut_midway(
    fake: FakeProvider, session: aiohttp.ClientSession, abort: bool
) -> None:
    fake.always(fp.cut(["part one ", "part two"], abort=abort))
    deltas: list[str] = []
    with pytest.raises(ProviderError) as info:
        async for item in provider_for(fake).stream(session, REQUEST, 5.0):
            if isinstance(item, str):
                deltas.append(item)
    assert info.value.kind == "stream_cut"
    assert deltas == ["part one ", "part two"]


async def test_stream_stall_is_idle_timeout(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.always(fp.cut(["only this"], stall_seconds=30))
    with pytest.raises(ProviderError) as info:
        await collect(provider_for(fake).stream(session, REQUEST, 0.4))
    assert info.value.kind == "timeout"


async def test_stream_error_event(fake: FakeProvider, session: aiohttp.ClientSession) -> None:
    fake.always(fp.stream_error_event(["partial"], "Overloaded"))
    with pytest.raises(ProviderError) as info:
        await collect(provider_for(fake).stream(session, REQUEST, 5.0))
    assert info.value.kind == "api_error" and "Overloaded" in info.value.detail


async def test_stream_http_error_before_body(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.always(fp.status(429, "slow", retry_after="3"))
    with pytest.raises(ProviderError) as info:
        await collect(provider_for(fake).stream(session, REQUEST, 5.0))
    assert info.value.kind == "http_429" and info.value.retry_after_seconds == 3.0


async def test_stream_malformed_chunk(fake: FakeProvider, session: aiohttp.ClientSession) -> None:
    async def garbage(fake_: FakeProvider, request: object, body: object) -> object:
        from aiohttp import web

        response = web.StreamResponse()
        await response.prepare(request)  # type: ignore[arg-type]
        await response.write(b"data: {nope\n\n" if fake_.kind != "ollama" else b"{nope\n")
        await response.write_eof()
        return response

    fake.always(garbage)  # type: ignore[arg-type]
    with pytest.raises(ProviderError) as info:
        await collect(provider_for(fake).stream(session, REQUEST, 5.0))
    assert info.value.kind == "bad_json"


async def test_stream_refused(session: aiohttp.ClientSession) -> None:
    for kind in KINDS:
        settings = ProviderSettings(type=kind, base_url=fp.closed_port_url(kind))
        with pytest.raises(ProviderError) as info:
            await collect(build_provider("down", settings).stream(session, REQUEST, 2.0))
        assert info.value.kind == "connect"


# --- availability ------------------------------------------------------------------------------


async def test_check_availability_ok(fake: FakeProvider, session: aiohttp.ClientSession) -> None:
    ok, detail = await provider_for(fake).check_availability(session, 2.0)
    assert ok, detail
    assert "listed" in detail


async def test_check_availability_model_missing(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    ok, detail = await provider_for(fake, model="other-model").check_availability(session, 2.0)
    assert ok and "not in its models list" in detail


async def test_check_availability_unauthorised(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.models_status = 401
    ok, detail = await provider_for(fake).check_availability(session, 2.0)
    assert not ok and detail.startswith("http_401")
    assert SECRET not in detail


async def test_check_availability_down(session: aiohttp.ClientSession) -> None:
    for kind in KINDS:
        settings = ProviderSettings(type=kind, base_url=fp.closed_port_url(kind))
        ok, detail = await build_provider("down", settings).check_availability(session, 2.0)
        assert not ok and detail.startswith("connect")


# --- redirects: a key never leaves the host it was configured for -----------------------------


@pytest.fixture(scope="module")
async def elsewhere() -> AsyncIterator[dict[str, FakeProvider]]:
    """The same wire formats on another host (127.0.0.2): where a hostile redirect points."""
    started = {kind: await fp.start_fake_provider(kind, host="127.0.0.2") for kind in KINDS}
    yield started  # type: ignore[misc]
    for server in started.values():
        await server.stop()


@pytest.fixture
def other_host(fake: FakeProvider, elsewhere: dict[str, FakeProvider]) -> FakeProvider:
    server = elsewhere[fake.kind]
    server.reset()
    return server


def assert_refused_redirect(error: ProviderError, other_host: FakeProvider) -> None:
    assert error.kind == "redirect"
    assert not error.retryable
    assert f"127.0.0.2:{other_host.port}" in error.detail
    assert SECRET not in str(error)
    assert other_host.requests == [], "the request (and its key) reached the other host"


@pytest.mark.parametrize("code", [302, 307])
async def test_completion_redirect_is_refused_and_names_the_host(
    fake: FakeProvider, other_host: FakeProvider, session: aiohttp.ClientSession, code: int
) -> None:
    fake.then(fp.redirect(other_host.base_url + "/anything", code))
    provider = provider_for(fake, extra_headers={"X-Org-Token": SECRET})
    with pytest.raises(ProviderError) as info:
        await provider.complete(session, REQUEST, 2.0)
    assert_refused_redirect(info.value, other_host)
    assert info.value.status == code
    assert len(fake.requests) == 1


async def test_stream_redirect_is_refused_and_names_the_host(
    fake: FakeProvider, other_host: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.then(fp.redirect(other_host.base_url + "/stream"))
    provider = provider_for(fake, extra_headers={"X-Org-Token": SECRET})
    with pytest.raises(ProviderError) as info:
        await collect(provider.stream(session, REQUEST, 2.0))
    assert_refused_redirect(info.value, other_host)


async def test_model_check_redirect_is_refused_and_names_the_host(
    fake: FakeProvider, other_host: FakeProvider, session: aiohttp.ClientSession
) -> None:
    fake.models_redirect = other_host.base_url + "/models"
    provider = provider_for(fake, extra_headers={"X-Org-Token": SECRET})
    ok, detail = await provider.check_availability(session, 2.0)
    assert not ok
    assert detail.startswith("configuration error") and "redirect" in detail
    assert f"127.0.0.2:{other_host.port}" in detail
    assert SECRET not in detail
    assert other_host.requests == []


async def test_same_host_redirect_is_refused_too(
    fake: FakeProvider, session: aiohttp.ClientSession
) -> None:
    """Even a relative redirect is a misconfigured base_url, not something to follow."""
    fake.then(fp.redirect("/elsewhere"))
    with pytest.raises(ProviderError) as info:
        await provider_for(fake).complete(session, REQUEST, 2.0)
    assert info.value.kind == "redirect"
    assert f"127.0.0.1:{fake.port}" in info.value.detail
    assert len(fake.requests) == 1


# --- helpers -----------------------------------------------------------------------------------


async def _lines(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_sse_framing() -> None:
    events = [
        e
        async for e in sse_events(
            _lines(
                b": keep-alive comment\n",
                b"event: ping\r\n",
                b"data: {}\r\n",
                b"\r\n",
                b"data: line one\n",
                b"data:line two\n",
                b"\n",
                b"data: no trailing blank line",
            )
        )
    ]
    assert events == [
        SSEEvent("ping", "{}"),
        SSEEvent("message", "line one\nline two"),
        SSEEvent("message", "no trailing blank line"),
    ]


async def test_sse_refuses_giant_event() -> None:
    with pytest.raises(ValueError):
        _ = [e async for e in sse_events(_lines(*[b"data: " + b"x" * 60000 + b"\n"] * 30))]


def test_merged_turns_alternate_and_start_with_user() -> None:
    request = LLMRequest(
        system="s",
        messages=(
            ChatMessage("assistant", "a"),
            ChatMessage("user", "u1"),
            ChatMessage("user", "u2"),
        ),
    )
    assert merged_turns(request) == [
        ("user", "(the conversation so far)"),
        ("assistant", "a"),
        ("user", "u1\n\nu2"),
    ]
    assert merged_turns(LLMRequest(system="s", messages=()))[0][0] == "user"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("-1", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date already past: retry at once
        (None, None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2026 07:28:30 GMT",  # IMF-fixdate, as RFC 9110 says to send it
        "Wednesday, 21-Oct-26 07:28:30 GMT",  # obsolete RFC 850 form
        "Wed Oct 21 07:28:30 2026",  # obsolete asctime form
    ],
)
def test_parse_retry_after_http_dates(value: str) -> None:
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=now) == 30.0


def test_build_provider_every_type() -> None:
    for kind in KINDS:
        provider = build_provider("x", ProviderSettings(type=kind))
        assert provider.name == "x"
        assert asyncio.iscoroutinefunction(provider.complete)
