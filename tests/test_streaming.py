"""Streaming replies: sentence chunking, and the first line reaching NATS before the model ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from kryten_llm.reply.responder import FLUSH_AFTER_SECONDS, SentenceChunker
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer, free_port
from tests.support.service import BOT, CHANNEL_A, make_settings, read_records, running_service

SENTENCE = "The hero kicks the villain through a very convenient stack of boxes. "


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_short_answers_stay_one_line() -> None:
    chunker = SentenceChunker(240, clock=FakeClock())
    ready = [
        c
        for word in ["Hi", "there.", "How", "are", "you?", "Fine."]
        for c in chunker.feed(word + " ")
    ]
    assert ready == []
    assert chunker.finish() == ["Hi there. How are you? Fine."]


def test_a_full_line_is_sent_while_the_model_is_still_writing() -> None:
    chunker = SentenceChunker(100, clock=FakeClock())
    ready: list[str] = []
    for word in (SENTENCE * 4).split(" "):
        ready += chunker.feed(word + " ")
    assert ready, "a line's worth of complete sentences must be released before the end"
    assert all(c.endswith(".") for c in ready)
    rest = chunker.finish()
    assert " ".join(ready + rest).split() == (SENTENCE * 4).split()


def test_a_waiting_sentence_is_released_for_a_slow_model() -> None:
    clock = FakeClock()
    chunker = SentenceChunker(240, clock=clock)
    assert chunker.feed("First sentence. Sec") == []
    clock.now += FLUSH_AFTER_SECONDS + 0.1
    assert chunker.feed("ond") == ["First sentence."]
    assert chunker.finish() == ["Second"]


def test_abbreviations_are_not_cut_while_streaming() -> None:
    chunker = SentenceChunker(20, clock=FakeClock())
    out = chunker.feed("Ask Dr. ") + chunker.feed("Who about e.g. ") + chunker.feed("time.")
    out += chunker.finish()
    assert "Dr. Who" in " ".join(out)


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


@asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A one-route OpenAI-compatible server on loopback; yields its base URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def sse(text: str) -> bytes:
    chunk = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


@pytest.mark.slow
async def test_first_streamed_line_reaches_nats_before_the_provider_finishes(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    finished_at: list[float] = []
    pause_seconds = 2.0

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        fake_llm.requests.append(body)
        assert body.get("stream") is True
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in (SENTENCE * 4).split(" "):
            await response.write(sse(word + " "))
        await asyncio.sleep(pause_seconds)  # the model "thinks" in the middle of its answer
        for word in ["And", "that", "is", "the", "end", "of", "the", "story."]:
            await response.write(sse(word + " "))
        await response.write(b"data: [DONE]\n\n")
        finished_at.append(asyncio.get_running_loop().time())
        await response.write_eof()
        return response

    async with serve(handler) as base_url:
        settings = make_settings(nats_server.url, base_url, message_processing={"max_parts": 5})
        async with running_service(settings):
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT} tell me a story")
            says = await bridge.wait_for_says(1, timeout=10)
            first_at = bridge.command_times[0]
            await bridge.wait_for_says(2, timeout=10)
            await asyncio.sleep(0.5)
    assert says and finished_at
    assert finished_at[0] - first_at > pause_seconds * 0.75, "first line was not early"
    texts = [s["args"]["message"] for s in bridge.says()]
    assert texts[-1].endswith("end of the story.")
    records = read_records(settings)
    assert [r["outcome"] for r in records] == ["sent"]
    assert records[0]["parts"] == texts


@pytest.mark.slow
async def test_a_stream_cut_midway_keeps_what_was_sent_and_logs_why(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in (SENTENCE * 4).split(" "):
            await response.write(sse(word + " "))
        await response.write(sse("And then the conn"))
        assert request.transport is not None
        request.transport.close()  # the connection drops mid-answer
        return response

    async with serve(cut) as base_url:
        settings = make_settings(nats_server.url, base_url, message_processing={"max_parts": 5})
        async with running_service(settings):
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT} tell me a story")
            await bridge.wait_for_says(1, timeout=10)
            await asyncio.sleep(1.0)
    texts = [s["args"]["message"] for s in bridge.says()]
    assert texts and all("conn" not in t or t.endswith("conn") for t in texts)
    records = read_records(settings)
    assert len(records) == 1
    assert records[0]["outcome"] == "sent"
    assert "interrupted" in records[0]["reason"]
    assert records[0]["parts"] == texts
