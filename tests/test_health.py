"""Health rules: each component's verdict, the overall state, and logging once per change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kryten_llm._bus import really_connected
from kryten_llm.config import ChannelSettings, LLMSettings, ProviderSettings
from kryten_llm.llm.manager import LLMManager, LLMUnavailable
from kryten_llm.ops.health import HealthMonitor, assess, provider_component
from kryten_llm.types import ChatMessage, LLMRequest
from tests.support.fake_llm import FakeLLM


@dataclass
class StaticStatus:
    """A StatusSource made of plain data that each test sets; shared by the other test files."""

    connected: bool = True
    providers: dict[str, Mapping[str, Any]] = field(
        default_factory=lambda: {"main": {"state": "closed"}}
    )
    saturation: float = 0.0
    depth: int = 0
    capacity: int = 100
    channel_list: list[ChannelSettings] = field(
        default_factory=lambda: [ChannelSettings(domain="cytu.be", channel="testchan")]
    )
    paused: set[str] = field(default_factory=set)
    log_status: dict[str, Any] = field(
        default_factory=lambda: {"written": 0, "dropped": 0, "lost": 0, "error": None}
    )
    state: dict[str, Any] = field(
        default_factory=lambda: {"enabled": True, "available": True, "reason": ""}
    )

    def nats_connected(self) -> bool:
        return self.connected

    def provider_states(self) -> Mapping[str, Mapping[str, Any]]:
        return self.providers

    def provider_chains(self) -> Mapping[str, Sequence[str]]:
        """Every channel walks every provider, in name order (chains get their own tests)."""
        return {f"{c.domain}/{c.channel}": sorted(self.providers) for c in self.channel_list}

    def limiter_saturation(self) -> float:
        return self.saturation

    def queue_depth(self) -> int:
        return self.depth

    def queue_capacity(self) -> int:
        return self.capacity

    def channels(self) -> Sequence[ChannelSettings]:
        return self.channel_list

    def paused_channels(self) -> Collection[str]:
        return self.paused

    def response_log_status(self) -> Mapping[str, Any]:
        return self.log_status

    def state_status(self) -> Mapping[str, Any]:
        return self.state


class ManagerStatus(StaticStatus):
    """Provider states straight from a real LLMManager's breakers."""

    def __init__(self, manager: LLMManager) -> None:
        super().__init__()
        self.manager = manager

    def provider_states(self) -> Mapping[str, Mapping[str, Any]]:
        return self.manager.provider_status()

    def provider_chains(self) -> Mapping[str, Sequence[str]]:
        return {f"{c.domain}/{c.channel}": self.manager.order() for c in self.channel_list}


class BrokenStatus(StaticStatus):
    """Getters that raise, as a bug in the service's status code would."""

    def provider_states(self) -> Mapping[str, Mapping[str, Any]]:
        raise RuntimeError("secret-ish detail that must not be shown")

    def queue_depth(self) -> int:
        raise ValueError("boom")


def test_all_ok_is_healthy() -> None:
    report = assess(StaticStatus())
    assert report.status == "healthy"
    assert report.reasons == []
    data = report.to_dict()
    assert data["components"]["nats"] == {"status": "ok", "connected": True}
    assert data["components"]["provider.main"]["status"] == "ok"
    assert data["components"]["channels"]["configured"] == ["cytu.be/testchan"]


def test_nats_down_is_failing() -> None:
    report = assess(StaticStatus(connected=False))
    assert report.status == "failing"
    assert report.reasons == ["nats: not connected to NATS"]


@pytest.mark.parametrize(
    ("state", "expected"),
    [("closed", "ok"), ("half_open", "degraded"), ("open", "degraded"), ("weird", "degraded")],
)
def test_provider_breaker_states(state: str, expected: str) -> None:
    assert provider_component({"state": state}).status == expected


@pytest.mark.parametrize("bad", [None, "open", 42, {"state": 3}, {}])
def test_malformed_provider_state_is_degraded_not_a_crash(bad: Any) -> None:
    component = provider_component(bad)
    assert component.status == "degraded"
    assert "unreadable" in component.reason


def test_provider_timestamps_are_sanitised() -> None:
    component = provider_component(
        {"state": "open", "last_success_at": float("nan"), "last_failure_at": 12.5, "x": 1}
    )
    assert component.detail["last_success_at"] is None
    assert component.detail["last_failure_at"] == 12.5


def test_every_provider_open_is_still_only_degraded() -> None:
    status = StaticStatus(providers={"a": {"state": "open"}, "b": {"state": "open"}})
    assert assess(status).status == "degraded"


def test_no_provider_is_degraded() -> None:
    assert assess(StaticStatus(providers={})).status == "degraded"


@pytest.mark.parametrize(("saturation", "expected"), [(0.5, "healthy"), (0.95, "degraded")])
def test_rate_limiter_saturation(saturation: float, expected: str) -> None:
    assert assess(StaticStatus(saturation=saturation)).status == expected


def test_nan_saturation_is_degraded() -> None:
    assert assess(StaticStatus(saturation=float("nan"))).status == "degraded"


@pytest.mark.parametrize(("depth", "expected"), [(10, "healthy"), (80, "degraded")])
def test_queue_depth(depth: int, expected: str) -> None:
    assert assess(StaticStatus(depth=depth, capacity=100)).status == expected


def test_paused_channels_are_listed_but_not_unhealthy() -> None:
    report = assess(StaticStatus(paused={"testchan"}))
    assert report.status == "healthy"
    assert report.to_dict()["components"]["channels"]["paused"] == ["testchan"]


def test_a_response_log_that_cannot_write_is_degraded_and_its_losses_are_listed() -> None:
    status = StaticStatus(log_status={"written": 7, "dropped": 1, "lost": 3, "error": "ENOSPC"})
    report = assess(status)
    assert report.status == "degraded"
    assert report.to_dict()["components"]["response_log"] == {
        "status": "degraded",
        "written": 7,
        "dropped": 1,
        "lost": 3,
        "reason": "cannot write (ENOSPC); 3 record(s) lost so far",
    }
    status.log_status["error"] = None  # space is back: healthy, the count stays
    report = assess(status)
    assert report.status == "healthy"
    assert report.to_dict()["components"]["response_log"]["lost"] == 3


def test_durable_state_wanted_but_unavailable_is_degraded_with_the_reason() -> None:
    reason = "JetStream is not enabled on the NATS server (nothing answers its API)"
    status = StaticStatus(state={"enabled": True, "available": False, "reason": reason})
    report = assess(status)
    assert report.status == "degraded"
    assert report.reasons == [f"state: durable state off, memory only until it is back: {reason}"]
    status.state = {"enabled": False, "available": False, "reason": "disabled"}
    assert assess(status).status == "healthy"  # memory only by choice is not a fault
    status.state = {"enabled": True, "available": True, "reason": "", "dropped_writes": 2}
    component = assess(status).to_dict()["components"]["state"]
    assert component["status"] == "ok" and component["dropped_writes"] == 2


def test_raising_getters_degrade_without_leaking_text(caplog: pytest.LogCaptureFixture) -> None:
    report = assess(BrokenStatus())
    assert report.status == "degraded"
    text = str(report.to_dict())
    assert "RuntimeError" in text and "ValueError" in text
    assert "secret-ish" not in text
    assert any("reading providers failed" in r.getMessage() for r in caplog.records)


def test_worst_component_wins() -> None:
    status = StaticStatus(connected=False, providers={"a": {"state": "open"}})
    assert assess(status).status == "failing"


def test_monitor_logs_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    status = StaticStatus()
    monitor = HealthMonitor(status)
    caplog.set_level(logging.INFO, logger="kryten_llm.ops.health")

    def changes() -> list[str]:
        return [r.getMessage() for r in caplog.records if "health" in r.getMessage()]

    monitor.check()
    monitor.check()
    assert changes() == ["health: healthy (all components ok)"]
    status.providers = {"main": {"state": "open"}}
    monitor.check()
    monitor.check()
    monitor.check()
    assert changes()[1:] == [
        "health changed: healthy -> degraded (provider.main: circuit breaker open; "
        "llm: no usable provider for cytu.be/testchan (main: circuit breaker open))"
    ]
    status.providers = {"main": {"state": "closed"}}
    monitor.check()
    monitor.check()
    assert len(changes()) == 3
    assert changes()[2] == "health changed: degraded -> healthy (all components ok)"


async def test_degraded_when_only_provider_fails_and_healthy_after_recovery(
    fake_llm: FakeLLM,
) -> None:
    """A real LLMManager against the fake server: its breaker drives the verdict."""
    llm = LLMSettings(
        max_retries=0,
        breaker_min_calls=2,
        breaker_failure_rate=0.5,
        breaker_cooldown_seconds=0,
        reply_deadline_seconds=5,
    )
    providers = {"only": ProviderSettings(base_url=fake_llm.base_url, model="m", timeout_seconds=2)}
    request = LLMRequest("system", (ChatMessage("user", "hi"),))
    async with aiohttp.ClientSession() as session:
        manager = LLMManager(providers, llm, session)
        monitor = HealthMonitor(ManagerStatus(manager))
        assert monitor.check().status == "healthy"
        fake_llm.fail_with(500)
        for _ in range(2):
            with pytest.raises(LLMUnavailable):
                await manager.complete(request)
        report = monitor.check()
        assert report.status == "degraded"
        provider = report.to_dict()["components"]["provider.only"]
        assert provider["breaker"] == "open"
        assert provider["last_failure_at"] is not None
        fake_llm.reply_with("back again")
        result = await manager.complete(request)  # cooldown 0: the half-open probe succeeds
        assert result.text == "back again"
        report = monitor.check()
        assert report.status == "healthy"
        assert report.to_dict()["components"]["provider.only"]["last_success_at"] is not None


async def test_really_connected_reads_the_real_connection(nats_server: Any) -> None:
    from kryten import KrytenClient

    client = KrytenClient(
        {
            "nats": {"servers": [nats_server.url]},
            "channels": [{"domain": "cytu.be", "channel": "testchan"}],
        }
    )
    assert really_connected(client) is False
    await client.connect()
    try:
        assert really_connected(client) is True
    finally:
        await client.disconnect()
    assert really_connected(client) is False


# --- a channel's chain: no usable provider is degraded, and says why ----------------------


def test_a_chain_without_a_usable_provider_is_degraded_and_names_why() -> None:
    status = StaticStatus(
        providers={
            "hosted": {
                "state": "closed",
                "usable": False,
                "unusable": "API key variable OPENROUTER_API_KEY is not set",
                "key": "unset: OPENROUTER_API_KEY",
            },
            "local": {"state": "open", "usable": False, "unusable": "circuit breaker open"},
        }
    )
    report = assess(status)
    assert report.status == "degraded"
    assert report.components["llm"].reason == (
        "no usable provider for cytu.be/testchan (hosted: API key variable "
        "OPENROUTER_API_KEY is not set; local: circuit breaker open)"
    )
    hosted = report.to_dict()["components"]["provider.hosted"]
    assert hosted["status"] == "degraded" and hosted["key"] == "unset: OPENROUTER_API_KEY"
    status.providers["local"] = {"state": "closed", "usable": True}
    report = assess(status)
    assert report.components["llm"].status == "ok"  # one usable provider is enough...
    assert report.status == "degraded"  # ...but the unusable one is still reported


def test_a_disabled_provider_is_ok_and_not_counted_as_usable() -> None:
    status = StaticStatus(
        providers={
            "off": {"state": "closed", "enabled": False, "usable": False, "unusable": "disabled"},
            "main": {"state": "closed", "usable": True},
        }
    )
    report = assess(status)
    assert report.status == "healthy"
    assert report.to_dict()["components"]["provider.off"]["enabled"] is False


async def test_the_manager_knows_an_unset_key_and_a_failed_check_until_a_call_works(
    fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.fake_providers import FakeProvider
    from tests.support.nats_server import free_port

    monkeypatch.delenv("KLLM_HEALTH_KEY", raising=False)
    dead_port = free_port()
    providers = {
        "keyless": ProviderSettings(base_url=fake_llm.base_url, api_key_env="KLLM_HEALTH_KEY"),
        "dead": ProviderSettings(
            base_url=f"http://127.0.0.1:{dead_port}/v1", model="fake-model", priority=200
        ),
        "live": ProviderSettings(base_url=fake_llm.base_url, model="m", priority=300),
    }
    async with aiohttp.ClientSession() as session:
        manager = LLMManager(providers, LLMSettings(health_check_timeout_seconds=2), session)
        await manager.check_all()
        status = manager.provider_status()
        assert status["keyless"]["unusable"] == "API key variable KLLM_HEALTH_KEY is not set"
        assert status["keyless"]["key"] == "unset: KLLM_HEALTH_KEY"
        assert str(status["dead"]["unusable"]).startswith("availability check failed (connect")
        assert status["live"]["usable"] is True and status["live"]["check"] == "ok"
        monkeypatch.setenv("KLLM_HEALTH_KEY", "sk-test-now-it-is-set-0123456789")
        assert manager.provider_status()["keyless"]["usable"] is True
        # The dead provider's server comes back: the first call that works clears the check.
        revived = await FakeProvider(kind="openai_compatible", port=dead_port).start()
        try:
            assert manager.provider_status()["dead"]["usable"] is False
            request = LLMRequest("s", (ChatMessage("user", "hi"),))
            await manager.complete(request, preferred="dead")
            assert manager.provider_status()["dead"]["usable"] is True
        finally:
            await revived.stop()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[Any]:
    from tests.test_service_lifecycle import NotifySocket

    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.mark.slow
async def test_health_and_heartbeat_say_degraded_with_every_provider_down(
    nats_server: Any, tmp_path: Path, notify_socket: Any
) -> None:
    """The real command: one provider's key variable unset, the other's server gone."""
    import json

    import nats

    from tests.support.fake_providers import closed_port_url
    from tests.support.nats_server import free_port
    from tests.support.service import base_config, merge
    from tests.test_service_lifecycle import start_process, wait_for, write_config

    port = free_port()
    config = merge(
        base_config(nats_server.url, closed_port_url("openai_compatible")),
        {
            "response_log": {"path": str(tmp_path / "r.jsonl")},
            "metrics": {"port": port},
            "service": {"heartbeat_interval_seconds": 5},
            "llm_providers": {
                "hosted": {
                    "type": "openrouter",
                    "base_url": "https://openrouter.ai/api/v1",
                    "api_key_env": "KLLM_HEALTH_UNSET_KEY",
                    "priority": 1,
                }
            },
        },
    )
    path = tmp_path / "config.json"
    write_config(path, config)
    path.chmod(0o600)
    beats: list[dict[str, Any]] = []
    nc = await nats.connect(nats_server.url)

    async def on_beat(msg: Any) -> None:
        beats.append(json.loads(msg.data))

    await nc.subscribe("kryten.service.heartbeat", cb=on_beat)
    process = start_process(path, {"NOTIFY_SOCKET": notify_socket.path})
    health: dict[str, Any] = {}
    try:
        await wait_for(lambda: "READY=1" in notify_socket.states(), timeout=30)

        async def fetch() -> None:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/health") as resp,
            ):
                health.update(await resp.json())

        deadline = asyncio.get_running_loop().time() + 20
        while "availability check failed" not in json.dumps(health):
            assert asyncio.get_running_loop().time() < deadline, health
            await fetch()
            await asyncio.sleep(0.2)
        await wait_for(lambda: any(b["status"] == "degraded" for b in beats), timeout=15)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 20)
        await nc.close()
    assert health["status"] == "degraded"
    llm = health["components"]["llm"]
    assert llm["status"] == "degraded"
    assert "no usable provider for cytu.be/420grindhouse, example.net/lounge" in llm["reason"]
    assert "hosted: API key variable KLLM_HEALTH_UNSET_KEY is not set" in llm["reason"]
    assert "fake: availability check failed (connect" in llm["reason"]
    beat = next(b for b in beats if b["status"] == "degraded")
    assert any(r.startswith("llm: no usable provider") for r in beat["reasons"])
