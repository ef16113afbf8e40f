"""The service when pushed: the overhead metric counts the time a line waited in the inbound
queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer
from tests.support.service import BOT, CHANNEL_A, make_settings, running_service
from tests.test_service_lifecycle import counter, scrape, wait_for

QUEUE_WAIT_SECONDS = 0.5


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


async def test_the_overhead_metric_includes_the_wait_in_the_inbound_queue(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    settings = make_settings(nats_server.url, fake_llm.base_url)
    fake_llm.reply_with("Here I am, a little late.")
    async with running_service(settings) as service:
        await service.dispatcher.stop()  # the dispatcher is held up (a burst, a slow decision)
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} are you there?")
        await wait_for(lambda: service.listener.queue.qsize() == 1)
        await asyncio.sleep(QUEUE_WAIT_SECONDS)
        service.dispatcher.start()
        assert len(await bridge.wait_for_says(1)) == 1
        _, text = await scrape(service.metrics_server.port, "/metrics")  # type: ignore[union-attr]
    assert counter(text, "kryten_llm_pipeline_overhead_seconds_count") == 1
    assert counter(text, "kryten_llm_pipeline_overhead_seconds_sum") >= QUEUE_WAIT_SECONDS
