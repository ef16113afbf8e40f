"""The service when pushed: cut short by SIGTERM, flooded with mentions, out of disk, behind.

Every triggered message still ends in exactly one whole JSONL record, a flood costs one log
line per interval instead of one per message, and the overhead metric counts the time a line
waited in the inbound queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kryten_llm.daemon.service import LLMService
from kryten_llm.response_log import ResponseLog
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer, free_port
from tests.support.service import (
    BOT,
    CHANNEL_A,
    base_config,
    make_settings,
    merge,
    read_records,
    running_service,
)
from tests.test_response_log import FullDisk
from tests.test_service_lifecycle import (
    NotifySocket,
    counter,
    process_log,
    scrape,
    start_process,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow  # real processes, signals and timeouts

IN_FLIGHT = 10
WORKERS = 4
HANG_SECONDS = 8.0
"""Long enough to outlast the test's SIGTERM, short enough not to keep the fake server busy."""
QUEUE_WAIT_SECONDS = 0.5


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


async def test_sigterm_past_the_grace_period_records_every_reply_it_cuts_short(
    nats_server: NatsServer,
    fake_llm: FakeLLM,
    bridge: Bridge,
    tmp_path: Path,
    notify: NotifySocket,
) -> None:
    port = free_port()
    log_path = tmp_path / "r.jsonl"
    config = merge(
        base_config(nats_server.url, fake_llm.base_url),
        {
            "response_log": {"path": str(log_path)},
            "metrics": {"port": port},
            "service": {"shutdown_grace_seconds": 0.5},
            "message_processing": {"workers": WORKERS},
            "llm_providers": {"fake": {"timeout_seconds": 30}},
            "llm_manager": {"max_retries": 0},
        },
    )
    path = tmp_path / "config.json"
    write_config(path, config)
    fake_llm.hang(HANG_SECONDS)
    process = start_process(path, {"NOTIFY_SOCKET": notify.path})
    try:
        await wait_for(lambda: "READY=1" in notify.states(), timeout=20)
        users = [f"User{i}" for i in range(IN_FLIGHT)]
        for user in users:
            await bridge.chat(CHANNEL_A, user, f"{BOT} take your time, please")
        await wait_for(lambda: len(fake_llm.requests) == WORKERS)  # the rest wait for a worker
        triggered = 0.0
        while triggered < IN_FLIGHT:
            _, text = await scrape(port, "/metrics")
            triggered = counter(text, "kryten_llm_triggered_total")
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process_log(path)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    records = [json.loads(line) for line in log_path.read_text("utf-8").splitlines()]
    cancelled = [r for r in records if r["outcome"] == "cancelled"]
    assert sorted(r["username"] for r in cancelled) == sorted(users)
    reasons = [r["reason"] for r in cancelled]
    assert sum("in flight" in r for r in reasons) == WORKERS
    assert sum("before a worker took it" in r for r in reasons) == IN_FLIGHT - WORKERS
    assert f"shutdown cancelled {IN_FLIGHT} reply job(s)" in stderr
    assert bridge.says() == []


async def test_a_flood_of_mentions_on_a_full_reply_queue_is_one_warning_and_all_recorded(
    nats_server: NatsServer,
    fake_llm: FakeLLM,
    bridge: Bridge,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flood = 40
    settings = make_settings(
        nats_server.url,
        fake_llm.base_url,
        message_processing={"workers": 1, "queue_size": 1},
        service={"shutdown_grace_seconds": 0},
    )
    fake_llm.hang(HANG_SECONDS)
    caplog.set_level(logging.WARNING, logger="kryten_llm.daemon.dispatch")
    async with running_service(settings) as service:
        for i in range(flood):
            await bridge.chat(CHANNEL_A, f"Flooder{i}", f"{BOT} answer me now")
        await wait_for(lambda: service.dispatcher.dropped >= flood - 2)
        await asyncio.sleep(0.2)
        dropped = service.dispatcher.dropped
        _, text = await scrape(service.metrics_server.port, "/metrics")  # type: ignore[union-attr]
        assert counter(text, "kryten_llm_held_back_total", reason="dropped") == dropped
    warnings = [r.getMessage() for r in caplog.records if "reply queue full" in r.getMessage()]
    assert len(warnings) == 1, warnings[:3]
    assert "dropped 1 reply job(s) since last report" in warnings[0]
    outcomes = [r["outcome"] for r in read_records(settings)]
    assert len(outcomes) == flood, "every triggered message has its one record"
    assert outcomes.count("dropped") == dropped
    assert outcomes.count("cancelled") == flood - dropped


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


async def test_a_full_disk_shows_in_health_and_metrics_and_logging_resumes(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    settings = make_settings(nats_server.url, fake_llm.base_url)
    disk = FullDisk(free=0)
    service = LLMService(settings, log_level="DEBUG")
    service.response_log = ResponseLog(settings.response_log, os_write=disk)
    fake_llm.reply_with("Noted, and answered.")
    await service.start()
    try:
        assert service.metrics_server is not None and service.metrics_server.port
        port = service.metrics_server.port
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} can you log this?")
        await bridge.wait_for_says(1)
        await wait_for(lambda: service.response_log.lost == 1)
        status, body = await scrape(port, "/health")
        health: dict[str, Any] = json.loads(body)
        assert status == 200 and health["status"] == "degraded"
        assert health["components"]["response_log"]["lost"] == 1
        assert "ENOSPC" in health["components"]["response_log"]["reason"]
        _, text = await scrape(port, "/metrics")
        assert counter(text, "kryten_llm_response_log_lost_records_total") == 1
        disk.free = 10**9  # space is back
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} and this one?")
        await bridge.wait_for_says(2)
        await wait_for(lambda: service.response_log.written == 1)
        _, body = await scrape(port, "/health")
        assert json.loads(body)["components"]["response_log"]["status"] == "ok"
    finally:
        await service.stop()
    assert [r["username"] for r in read_records(settings)] == ["Bob"]
