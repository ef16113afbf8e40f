"""The whole service as operators see it: bus presence, control, metrics, health, reload,
pause, signals and systemd, over a real nats-server (and real processes for the signals)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kryten_llm.config import ConfigError
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer
from tests.support.service import (
    BOT,
    CHANNEL_A,
    base_config,
    make_settings,
    merge,
    read_records,
    running_service,
)

pytestmark = pytest.mark.slow  # real processes, signals and timeouts

ROOT = Path(__file__).resolve().parents[1]


class BusRecorder:
    """Everything published under some subjects, with arrival times."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, str, dict[str, Any]]] = []

    async def on_msg(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            data = {"_raw": msg.data.decode(errors="replace")}
        self.messages.append((time.monotonic(), msg.subject, data))

    def on(self, subject: str) -> list[dict[str, Any]]:
        return [d for _, s, d in self.messages if s == subject]

    def times(self, subject: str) -> list[float]:
        return [t for t, s, _ in self.messages if s == subject]


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[tuple[Any, BusRecorder]]:
    nc = await nats.connect(nats_server.url)
    recorder = BusRecorder()
    for subject in ("kryten.lifecycle.>", "kryten.service.>"):
        await nc.subscribe(subject, cb=recorder.on_msg)
    await nc.flush()
    yield nc, recorder
    await nc.close()


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_bus_presence_heartbeats_control_and_one_shutdown(
    nats_server: NatsServer, fake_llm: FakeLLM, bus: tuple[Any, BusRecorder]
) -> None:
    nc, recorder = bus
    settings = make_settings(
        nats_server.url, fake_llm.base_url, service={"heartbeat_interval_seconds": 5}
    )
    async with running_service(settings):
        await wait_for(lambda: recorder.on("kryten.service.discovery"))
        discovery = recorder.on("kryten.service.discovery")[0]
        assert discovery["name"] == "llm" and "streaming" in discovery["features"]
        assert {"domain": "cytu.be", "channel": CHANNEL_A} in discovery["channels"]
        ping = await nc.request("$SRV.PING.kryten-llm", b"", timeout=2)
        assert json.loads(ping.data)["name"] == "kryten-llm"
        await wait_for(lambda: len(recorder.on("kryten.service.heartbeat")) >= 2, timeout=14)
        beat_times = recorder.times("kryten.service.heartbeat")
        assert 3.5 <= beat_times[1] - beat_times[0] <= 7.5
        beat = recorder.on("kryten.service.heartbeat")[0]
        assert beat["status"] in ("healthy", "degraded", "failing")
        assert "components" in beat or "health" in beat
        refused = await nc.request("kryten.llm.control.reload", b"{}", timeout=2)
        assert refused.headers and refused.headers.get("Nats-Service-Error-Code") in ("401", "403")
        await nc.publish("kryten.lifecycle.robot.startup", b'{"service": "robot"}')
        await nc.publish("kryten.service.discovery.poll", b"{}")
        await wait_for(lambda: len(recorder.on("kryten.service.discovery")) >= 3)
    await asyncio.sleep(0.3)
    assert len(recorder.on("kryten.lifecycle.llm.startup")) >= 1
    assert len(recorder.on("kryten.lifecycle.llm.shutdown")) == 1
    assert len(recorder.on("kryten.service.discovery")) == 3


async def scrape(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=5)
        ) as resp,
    ):
        return resp.status, await resp.text()


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_metrics_move_with_traffic_and_health_follows_the_provider(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    settings = make_settings(
        nats_server.url,
        fake_llm.base_url,
        llm_manager={
            "max_retries": 0,
            "breaker_min_calls": 1,
            "breaker_window": 2,
            "breaker_cooldown_seconds": 1.0,
        },
    )
    async with running_service(settings) as service:
        assert service.metrics_server is not None and service.metrics_server.port
        port = service.metrics_server.port
        fake_llm.reply_with("First answer from me.")
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} hello?")
        await bridge.wait_for_says(1)
        status, text = await scrape(port, "/metrics")
        assert status == 200
        assert counter(text, "kryten_llm_messages_seen_total") >= 1
        assert counter(text, "kryten_llm_triggered_total", kind="mention") == 1
        assert counter(text, "kryten_llm_replies_sent_total") == 1
        assert counter(text, "kryten_llm_llm_calls_total", provider="fake", outcome="ok") == 1
        assert counter(text, "kryten_llm_pipeline_overhead_seconds_count") == 1
        status, body = await scrape(port, "/health")
        assert json.loads(body)["status"] == "healthy"

        fake_llm.fail_with(500, "down")
        await bridge.chat(CHANNEL_A, "Bob", f"{BOT} are you broken?")
        await wait_for(lambda: service.monitor.check().status == "degraded")
        status, body = await scrape(port, "/health")
        assert status == 200 and json.loads(body)["status"] == "degraded"
        _, text = await scrape(port, "/metrics")
        assert counter(text, "kryten_llm_held_back_total", reason="llm_failed") == 1

        fake_llm.reply_with("I am back now, friends.")
        await asyncio.sleep(1.2)  # the breaker's cool-down; the next call is the probe
        await bridge.chat(CHANNEL_A, "Carol", f"{BOT} better now?")
        await bridge.wait_for_says(2)
        await wait_for(lambda: service.monitor.check().status == "healthy")


def write_config(path: Path, config: dict[str, Any]) -> None:
    path.write_text(json.dumps(config), encoding="utf-8")


async def test_reload_applies_atomically_keeps_state_and_rejects_bad_files(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, tmp_path: Path
) -> None:
    from kryten_llm.config import load_settings
    from kryten_llm.daemon.service import LLMService

    config = merge(
        base_config(nats_server.url, fake_llm.base_url),
        {"response_log": {"path": str(tmp_path / "r.jsonl")}, "metrics": {"port": 0}},
    )
    path = tmp_path / "config.json"
    write_config(path, config)
    service = LLMService(load_settings(path), "DEBUG", config_path=path)
    fake_llm.echo(prefix="heard: ")
    await service.start()
    try:
        await bridge.chat(CHANNEL_A, "Alice", "robo, are you there?")
        await bridge.quiet_for(0.6)
        assert bridge.says() == []
        assert service.pipeline is not None
        limiter_before = service.pipeline.limiter
        write_config(
            path,
            merge(
                config,
                {
                    "personality": {"name_variations": ["cynthia", "robo"]},
                    "nats": {"url": "nats://127.0.0.1:1"},
                },
            ),
        )
        summary = await service.reload()
        assert "personality" in summary["applied"]
        assert summary["restart_required"] == ["nats"]
        assert service.settings.nats.url == nats_server.url  # not half-applied
        assert service.pipeline.limiter is limiter_before  # limit history carried over
        await bridge.chat(CHANNEL_A, "Alice", "robo, are you there now?")
        assert len(await bridge.wait_for_says(1)) == 1

        path.write_text("{ not json", encoding="utf-8")
        with pytest.raises(ConfigError, match="invalid JSON"):
            await service.reload()
        write_config(path, merge(config, {"triggers": [{"name": "x", "patterns": ["re:("]}]}))
        with pytest.raises(ConfigError, match="invalid regular expression"):
            await service.reload()
        await bridge.chat(CHANNEL_A, "Bob", "robo still listening after bad reloads?")
        assert len(await bridge.wait_for_says(2)) == 2
    finally:
        await service.stop()


async def test_pause_and_resume_a_channel(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge
) -> None:
    settings = make_settings(nats_server.url, fake_llm.base_url)
    fake_llm.echo(prefix="heard: ")
    async with running_service(settings) as service:
        assert service.pause(CHANNEL_A) == [f"cytu.be/{CHANNEL_A.lower()}"]
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} anyone home?")
        await bridge.quiet_for(0.6)
        assert bridge.says() == []
        service.resume(None)
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} and now?")
        assert len(await bridge.wait_for_says(1)) == 1
    outcomes = [r["outcome"] for r in read_records(settings)]
    assert outcomes == ["paused", "sent"]


# --- real processes: signals and systemd ---------------------------------------------------


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.received: list[str] = []
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def states(self) -> list[str]:
        """Every `KEY=value` line received (one datagram may carry several)."""
        return [line for message in self.received for line in message.splitlines()]

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def start_process(config_path: Path, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    """The real command; its log goes to a file beside the config (a pipe could fill up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRYTEN_LLM_")}
    env.update(extra_env)
    log_file = (config_path.parent / "stderr.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "kryten_llm", "--config", str(config_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        text=True,
    )


def process_log(config_path: Path) -> str:
    return (config_path.parent / "stderr.log").read_text(encoding="utf-8")


async def test_sigterm_with_a_reply_in_flight_exits_0_with_one_shutdown_and_systemd_notes(
    nats_server: NatsServer,
    fake_llm: FakeLLM,
    bus: tuple[Any, BusRecorder],
    bridge: Bridge,
    tmp_path: Path,
    notify_socket: NotifySocket,
) -> None:
    _, recorder = bus
    config = merge(
        base_config(nats_server.url, fake_llm.base_url),
        {"response_log": {"path": str(tmp_path / "r.jsonl")}, "metrics": {"port": 0}},
    )
    path = tmp_path / "config.json"
    write_config(path, config)
    fake_llm.reply_with("Worth the wait, this answer.", delay_seconds=1.5)
    process = start_process(path, {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"})
    try:
        await wait_for(lambda: "READY=1" in notify_socket.states(), timeout=20)
        await asyncio.sleep(1.2)
        assert notify_socket.states().count("WATCHDOG=1") >= 2  # every half interval
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} take your time")
        await wait_for(lambda: len(fake_llm.requests) == 1)
        process.send_signal(signal.SIGTERM)  # the LLM is still "thinking"
        returncode = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process_log(path)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "WARNING kryten: Disconnected from NATS" not in stderr  # a clean stop is no warning
    assert [s["args"]["message"] for s in bridge.says()] == ["Worth the wait, this answer."]
    await asyncio.sleep(0.2)
    assert len(recorder.on("kryten.lifecycle.llm.shutdown")) == 1
    assert "STOPPING=1" in notify_socket.states()


async def test_sighup_reloads_and_a_broken_file_keeps_the_old_config(
    nats_server: NatsServer,
    fake_llm: FakeLLM,
    bridge: Bridge,
    tmp_path: Path,
    notify_socket: NotifySocket,
) -> None:
    config = merge(
        base_config(nats_server.url, fake_llm.base_url),
        {"response_log": {"path": str(tmp_path / "r.jsonl")}, "metrics": {"port": 0}},
    )
    path = tmp_path / "config.json"
    write_config(path, config)
    fake_llm.echo(prefix="heard: ")
    process = start_process(path, {"NOTIFY_SOCKET": notify_socket.path})
    try:
        await wait_for(lambda: "READY=1" in notify_socket.states(), timeout=20)
        write_config(path, merge(config, {"personality": {"name_variations": ["robo"]}}))
        process.send_signal(signal.SIGHUP)
        await wait_for(lambda: "RELOADING=1" in notify_socket.states())
        await asyncio.sleep(0.5)
        await bridge.chat(CHANNEL_A, "Alice", "robo, did the reload work?")
        assert len(await bridge.wait_for_says(1)) == 1
        path.write_text('{"rate_limits": {"global_max_per_minute": "lots"}}', encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        await bridge.chat(CHANNEL_A, "Bob", "robo, still the same bot after a bad file?")
        assert len(await bridge.wait_for_says(2)) == 2
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process_log(path)
    assert "reload rejected" in stderr
    assert "rate_limits.global_max_per_minute" in stderr
    assert "Traceback" not in stderr


async def test_only_the_events_it_uses_are_subscribed(
    nats_server: NatsServer, fake_llm: FakeLLM
) -> None:
    """kryten-py's catch-all `...{channel}.>` would double every event's delivery and cost."""
    settings = make_settings(nats_server.url, fake_llm.base_url)
    assert nats_server.monitor_url
    async with (
        running_service(settings),
        aiohttp.ClientSession() as session,
        session.get(
            f"{nats_server.monitor_url}/subsz?subs=1&limit=10000",
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp,
    ):
        subjects = {s["subject"] for s in (await resp.json()).get("subscriptions_list", [])}
    ours = {s for s in subjects if s.startswith("kryten.events.cytube.")}
    assert "kryten.events.cytube.420grindhouse.chatmsg" in ours
    assert "kryten.events.cytube.lounge.changemedia" in ours
    assert not any(s.endswith(".>") for s in ours), ours
    assert {s.rsplit(".", 1)[1] for s in ours} == {
        "chatmsg",
        "changemedia",
        "adduser",
        "userlist",
        "setuserrank",
        "userleave",
    }


async def test_the_service_waits_for_a_nats_server_that_comes_up_later(
    fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    from kryten_llm.daemon.service import LLMService
    from kryten_llm.tools.natsd import start_nats_server
    from tests.support.nats_server import free_port

    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    settings = make_settings(url, fake_llm.base_url)
    service = LLMService(settings, "INFO")
    starting = asyncio.create_task(service.start())
    await asyncio.sleep(1.5)  # refused at least once; the service is waiting, not gone
    assert not starting.done()
    assert "is not reachable (connection refused)" in caplog.text
    late = await asyncio.to_thread(start_nats_server, 10.0, False, port)
    try:
        assert await asyncio.wait_for(starting, 15) is True
        bridge = await Bridge.connect(url)
        try:
            fake_llm.reply_with("Worth the wait.")
            await bridge.chat(CHANNEL_A, "Alice", f"{BOT} finally?")
            assert len(await bridge.wait_for_says(1)) == 1
        finally:
            await bridge.close()
    finally:
        await service.stop()
        await asyncio.to_thread(late.stop)
    assert "Traceback" not in caplog.text


async def test_sigterm_while_waiting_for_nats_exits_0_quietly(
    fake_llm: FakeLLM, tmp_path: Path
) -> None:
    from tests.support.nats_server import free_port

    dead = f"nats://127.0.0.1:{free_port()}"
    config = merge(
        base_config(dead, fake_llm.base_url),
        {"response_log": {"path": str(tmp_path / "r.jsonl")}, "metrics": {"port": 0}},
    )
    path = tmp_path / "config.json"
    write_config(path, config)
    process = start_process(path, {})
    try:
        await wait_for(lambda: "not reachable" in process_log(path), timeout=20)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log_text = process_log(path)
    assert "Traceback" not in log_text
    assert "ERROR" not in log_text
    assert "stopped while waiting for NATS" in log_text
