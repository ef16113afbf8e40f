"""A model that streams without end must not freeze the bot for everyone else.

Over a real nats-server, with the service in-process and an OpenAI-compatible server on
loopback: user A's mention gets a stream of 300 KB that never ends a sentence (before the fix
the chunker re-split its whole buffer on every delta, blocking the event loop for many
seconds, and buffered all of it); user B's mention, sent right after in another channel, must
be answered in normal time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from kryten_llm.tools.offline import write_event_stream
from tests.support.bridge import Bridge
from tests.support.fake_llm import last_user_message
from tests.support.nats_server import NatsServer, free_port
from tests.support.service import (
    BOT,
    CHANNEL_A,
    CHANNEL_B,
    DOMAIN_B,
    make_settings,
    read_records,
    running_service,
)

ENDLESS_CHARS = 300_000
DELTA = "la " * 7  # a model's delta: words, never a sentence end
PACED_BURST_FRAMES = 20
PACED_PAUSE_SECONDS = 0.002
B_ANSWER = "Sure, the lounge is open."
B_ANSWERED_WITHIN_SECONDS = 5.0


@dataclass
class EndlessStream:
    """300 KB without a sentence end at once, then more, paced, until the client hangs up.

    The first 300 KB arrive as fast as the connection takes them (a fast model, or one the
    bot fell behind on); the rest tells whether the client went on reading.
    """

    blast_frames: int = ENDLESS_CHARS // len(DELTA) + 1
    paced_frames: int = ENDLESS_CHARS // len(DELTA) + 1
    frames_written: int = 0
    finished: bool = False
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def frames_total(self) -> int:
        return self.blast_frames + self.paced_frames

    async def respond(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        frame = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": DELTA}}]}
        data = f"data: {json.dumps(frame)}\n\n".encode()
        try:
            for index in range(self.frames_total):
                await response.write(data)
                self.frames_written += 1
                if index >= self.blast_frames and index % PACED_BURST_FRAMES == 0:
                    await asyncio.sleep(PACED_PAUSE_SECONDS)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.finished = True
        except ConnectionError:
            self.closed_by_client.set()
        return response


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


@asynccontextmanager
async def serve(
    route: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A one-route OpenAI-compatible server on loopback; yields its base URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", route)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_an_endless_stream_is_stopped_and_others_are_answered_meanwhile(
    nats_server: NatsServer, bridge: Bridge
) -> None:
    endless = EndlessStream()

    async def route(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if "ramble" in last_user_message(body):
            return await endless.respond(request)
        return await write_event_stream(request, "fake-model", B_ANSWER)

    loop = asyncio.get_running_loop()
    async with serve(route) as base_url:
        settings = make_settings(nats_server.url, base_url)
        async with running_service(settings):
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT} ramble on forever")
            await asyncio.sleep(0.5)
            asked_at = loop.time()
            await bridge.chat(CHANNEL_B, "Bob", f"{BOT} is the lounge open?", domain=DOMAIN_B)
            says_b = await bridge.wait_for_says(1, timeout=30, channel=CHANNEL_B)
            answered_after = loop.time() - asked_at
            await asyncio.wait_for(endless.closed_by_client.wait(), timeout=30)
            max_parts = settings.message_processing.max_parts
            await bridge.wait_for_says(max_parts, timeout=10, channel=CHANNEL_A)
            await asyncio.sleep(0.3)

    assert [s["args"]["message"] for s in says_b] == [B_ANSWER]
    assert answered_after < B_ANSWERED_WITHIN_SECONDS, f"B waited {answered_after:.1f}s"
    # The server saw the connection closed: it was not read to the end.
    assert endless.closed_by_client.is_set() and not endless.finished
    assert endless.frames_written < endless.frames_total
    says_a = [s["args"]["message"] for s in bridge.says(CHANNEL_A)]
    assert len(says_a) == max_parts
    assert all(s.startswith("la la") for s in says_a)
    records = {r["channel"]: r for r in read_records(settings)}
    record_a = records[CHANNEL_A]
    assert record_a["outcome"] == "sent"
    assert record_a["reason"].startswith("stream stopped:")
    assert "more than the reply can post" in record_a["reason"]
    assert record_a["parts"] == says_a
    assert record_a["provider"] == "fake"
    assert [a["outcome"] for a in record_a["attempts"]] == ["stopped"]
    assert records[CHANNEL_B]["outcome"] == "sent"
