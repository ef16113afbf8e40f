"""Bus announcements against the real nats-server, with a real KrytenClient."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from kryten import KrytenClient

from kryten_llm.config import MetricsSettings, ServiceSettings
from kryten_llm.ops.discovery import Announcer, lifecycle_service_config
from kryten_llm.ops.health import HealthMonitor
from kryten_llm.tools.simulate import nats_server_binary
from tests.support.nats_server import NatsServer, free_port
from tests.test_health import StaticStatus

VERSION = "0.1.0"
HEARTBEAT_SECONDS = 0.3


@dataclass
class Seen:
    subject: str
    payload: dict[str, Any]
    at: float


@dataclass
class Observer:
    """A plain nats-py client watching the bus, as `nats sub` would."""

    messages: list[Seen] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, msg: Any) -> None:
        self.messages.append(Seen(msg.subject, json.loads(msg.data), time.monotonic()))
        self.changed.set()

    def on(self, subject: str) -> list[Seen]:
        return [m for m in self.messages if m.subject == subject]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def observing(url: str) -> AsyncIterator[tuple[Any, Observer]]:
    observer = Observer()
    nc = await nats.connect(url)
    await nc.subscribe("kryten.lifecycle.>", cb=observer.on_message)
    await nc.subscribe("kryten.service.>", cb=observer.on_message)
    await nc.flush()
    try:
        yield nc, observer
    finally:
        await nc.close()


def client_config(
    url: str, heartbeat_interval: int = 30, reconnect_wait: int = 1
) -> dict[str, Any]:
    return {
        "nats": {"servers": [url], "reconnect_time_wait": reconnect_wait},
        "channels": [{"domain": "cytu.be", "channel": "testchan"}],
        "service": lifecycle_service_config(
            "llm",
            VERSION,
            ServiceSettings(heartbeat_interval_seconds=heartbeat_interval),
            MetricsSettings(port=0),
        ),
    }


def announcer(client: KrytenClient, interval: float = HEARTBEAT_SECONDS) -> Announcer:
    status = StaticStatus()
    return Announcer(
        client,
        status,
        HealthMonitor(status),
        name="llm",
        version=VERSION,
        features=["chat", "metrics", "control"],
        heartbeat_interval_seconds=interval,
        instance_id="test-1",
    )


@pytest.mark.slow
async def test_startup_discovery_heartbeats_and_one_shutdown(nats_server: NatsServer) -> None:
    async with observing(nats_server.url) as (_, seen):
        client = KrytenClient(client_config(nats_server.url))
        await client.connect()
        ann = announcer(client)
        await ann.start()
        await seen.wait_for(lambda: len(seen.on("kryten.service.heartbeat")) >= 3)
        await ann.stop()
        await client.disconnect(reason="shutdown")
        await seen.wait_for(lambda: bool(seen.on("kryten.lifecycle.llm.shutdown")))
        await asyncio.sleep(0.2)  # anything duplicated would arrive by now

    assert len(seen.on("kryten.lifecycle.llm.startup")) == 1
    assert len(seen.on("kryten.lifecycle.llm.shutdown")) == 1
    assert seen.on("kryten.lifecycle.llm.shutdown")[0].payload["reason"] == "shutdown"
    discovery = seen.on("kryten.service.discovery")
    assert len(discovery) == 1
    payload = discovery[0].payload
    assert payload["name"] == "llm"
    assert payload["version"] == VERSION
    assert payload["features"] == ["chat", "metrics", "control"]
    assert payload["channels"] == [{"domain": "cytu.be", "channel": "testchan"}]
    assert payload["instance_id"] == "test-1"
    assert payload["hostname"]
    assert payload["timestamp"].endswith("+00:00")

    beats = seen.on("kryten.service.heartbeat")
    first = beats[0].payload
    assert first["status"] == "healthy"
    assert first["components"]["nats"]["status"] == "ok"
    assert first["components"]["provider.main"]["status"] == "ok"
    assert first["instance_id"] == "test-1" and first["uptime_seconds"] >= 0
    gaps = [b.at - a.at for a, b in itertools.pairwise(beats)]
    assert all(0.1 < gap < 2.0 for gap in gaps), gaps  # generous: a shared, noisy machine
    assert beats[0].at - discovery[0].at > 0.1  # the first beat waits one interval


async def test_heartbeat_reports_degraded_health(nats_server: NatsServer) -> None:
    async with observing(nats_server.url) as (_, seen):
        client = KrytenClient(client_config(nats_server.url))
        await client.connect()
        status = StaticStatus(providers={"main": {"state": "open"}})
        ann = Announcer(
            client,
            status,
            HealthMonitor(status),
            name="llm",
            version=VERSION,
            features=[],
            heartbeat_interval_seconds=HEARTBEAT_SECONDS,
        )
        await ann.start()
        try:
            await seen.wait_for(lambda: bool(seen.on("kryten.service.heartbeat")))
        finally:
            await ann.stop()
            await client.disconnect()
    beat = seen.on("kryten.service.heartbeat")[0].payload
    assert beat["status"] == "degraded"
    assert beat["reasons"] == [
        "provider.main: circuit breaker open",
        "llm: no usable provider for cytu.be/testchan (main: circuit breaker open)",
    ]
    assert beat["instance_id"]  # the default `<hostname>-<pid>`


async def test_robot_startup_and_poll_each_cause_one_reannouncement(
    nats_server: NatsServer,
) -> None:
    async with observing(nats_server.url) as (nc, seen):
        client = KrytenClient(client_config(nats_server.url))
        await client.connect()
        ann = announcer(client, interval=60)
        await ann.start()
        try:
            await seen.wait_for(lambda: len(seen.on("kryten.service.discovery")) == 1)
            await nc.publish("kryten.lifecycle.robot.startup", b'{"service": "robot"}')
            await seen.wait_for(lambda: len(seen.on("kryten.service.discovery")) == 2)
            await seen.wait_for(lambda: len(seen.on("kryten.lifecycle.llm.startup")) == 2)
            await nc.publish("kryten.service.discovery.poll", b"{}")
            await seen.wait_for(lambda: len(seen.on("kryten.service.discovery")) == 3)
            await seen.wait_for(lambda: len(seen.on("kryten.lifecycle.llm.startup")) == 3)
            await nc.publish("kryten.service.discovery.poll", b"not json at all")
            await seen.wait_for(lambda: len(seen.on("kryten.service.discovery")) == 4)
            await asyncio.sleep(0.3)  # a duplicate would have arrived by now
        finally:
            await ann.stop()
            await client.disconnect()
    assert len(seen.on("kryten.service.discovery")) == 4
    assert len(seen.on("kryten.lifecycle.llm.startup")) == 4
    assert seen.on("kryten.service.heartbeat") == []


async def test_stopped_announcer_no_longer_answers(nats_server: NatsServer) -> None:
    async with observing(nats_server.url) as (nc, seen):
        client = KrytenClient(client_config(nats_server.url))
        await client.connect()
        ann = announcer(client)
        await ann.start()
        await seen.wait_for(lambda: len(seen.on("kryten.service.discovery")) == 1)
        await ann.stop()
        await nc.publish("kryten.lifecycle.robot.startup", b"{}")
        await asyncio.sleep(HEARTBEAT_SECONDS * 3)
        await client.disconnect()
    assert len(seen.on("kryten.service.discovery")) == 1
    assert seen.on("kryten.service.heartbeat") == []


@pytest.mark.slow
async def test_kryten_lifecycle_uses_our_heartbeat_interval(nats_server: NatsServer) -> None:
    """kryten-py's own heartbeat follows `service.heartbeat_interval_seconds` (min 5 s)."""
    async with observing(nats_server.url) as (_, seen):
        client = KrytenClient(client_config(nats_server.url, heartbeat_interval=5))
        await client.connect()
        try:
            await seen.wait_for(
                lambda: len(seen.on("kryten.lifecycle.llm.heartbeat")) >= 1, timeout=12
            )
        finally:
            await client.disconnect()
    startup = seen.on("kryten.lifecycle.llm.startup")[0]
    beat = seen.on("kryten.lifecycle.llm.heartbeat")[0]
    assert 4.0 < beat.at - startup.at < 9.0
    assert beat.payload["service"] == "llm" and beat.payload["version"] == VERSION


def test_lifecycle_config_advertises_a_fixed_metrics_port_only() -> None:
    service = ServiceSettings()
    fixed = lifecycle_service_config("llm", VERSION, service, MetricsSettings(port=28290))
    assert fixed["heartbeat_interval"] == 10
    assert fixed["metrics_port"] == 28290 and fixed["health_port"] == 28290
    ephemeral = lifecycle_service_config("llm", VERSION, service, MetricsSettings(port=0))
    assert "metrics_port" not in ephemeral
    off = lifecycle_service_config("llm", VERSION, service, MetricsSettings(enabled=False))
    assert "metrics_port" not in off


def _start_server_on(port: int) -> subprocess.Popen[bytes]:
    binary = nats_server_binary()
    assert binary is not None
    return subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_reannounces_after_a_nats_reconnect() -> None:
    """A server restart: kryten-py reconnects silently; we announce again at the next tick."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    server = _start_server_on(port)
    client: KrytenClient | None = None
    ann: Announcer | None = None
    try:
        await _wait_listening(port)
        # The client waits 2 s before reconnecting, so the observer below is listening first.
        client = KrytenClient(client_config(url, reconnect_wait=2))
        await client.connect()
        ann = announcer(client)
        await ann.start()
        server.terminate()
        await asyncio.to_thread(server.wait, 5)
        server = _start_server_on(port)
        await _wait_listening(port)
        async with observing(url) as (_, seen):
            await seen.wait_for(lambda: bool(seen.on("kryten.service.discovery")), timeout=10)
            await seen.wait_for(lambda: bool(seen.on("kryten.lifecycle.llm.startup")))
            await seen.wait_for(lambda: len(seen.on("kryten.service.heartbeat")) >= 2)
            await asyncio.sleep(HEARTBEAT_SECONDS * 2)
        assert len(seen.on("kryten.service.discovery")) == 1  # once per reconnect, not per beat
    finally:
        if ann is not None:
            await ann.stop()
        if client is not None:
            await client.disconnect()
        server.kill()
        await asyncio.to_thread(server.wait, 5)
