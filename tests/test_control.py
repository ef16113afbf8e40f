"""The NATS micro control service, asked with a raw nats-py client as the `nats` CLI would."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from kryten import KrytenClient

from kryten_llm.config import ConfigError
from kryten_llm.ops.control import (
    CONTROL_SUBJECT_PREFIX,
    MICRO_SERVICE_NAME,
    ControlService,
    UnknownChannel,
    micro_version,
)
from kryten_llm.ops.health import HealthMonitor
from tests.support.nats_server import NatsServer
from tests.test_health import StaticStatus

TOKEN = "s3cret-control-token"
TIMEOUT_SECONDS = 5.0
BURST_REQUESTS = 50


@dataclass
class Callbacks:
    """The service side: records calls and keeps the paused set like the service would."""

    status: StaticStatus
    reloads: int = 0
    calls: list[tuple[str, str | None]] = field(default_factory=list)
    reload_error: Exception | None = None

    async def on_reload(self) -> Mapping[str, Any]:
        self.reloads += 1
        if self.reload_error is not None:
            raise self.reload_error
        return {"changed": ["personality"]}

    def _known(self, channel: str | None) -> list[str]:
        names = [c.channel for c in self.status.channels()]
        if channel is None:
            return names
        if channel not in names:
            raise UnknownChannel(channel)
        return [channel]

    def on_pause(self, channel: str | None) -> Collection[str]:
        self.calls.append(("pause", channel))
        self.status.paused.update(self._known(channel))
        return self.status.paused

    async def on_resume(self, channel: str | None) -> Collection[str]:
        self.calls.append(("resume", channel))
        self.status.paused.difference_update(self._known(channel))
        return self.status.paused


@dataclass
class Rig:
    nc: Any
    control: ControlService
    callbacks: Callbacks

    async def ask(
        self, endpoint: str, body: Any = b"", headers: dict[str, str] | None = None
    ) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """(JSON answer or None, headers): a micro error comes back as headers, no body."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        msg = await self.nc.request(
            f"{CONTROL_SUBJECT_PREFIX}.{endpoint}", data, timeout=TIMEOUT_SECONDS, headers=headers
        )
        answer = json.loads(msg.data) if msg.data else None
        return answer, dict(msg.headers or {})


def error_code(headers: Mapping[str, str]) -> str | None:
    return headers.get("Nats-Service-Error-Code")


@asynccontextmanager
async def control_rig(nats_server: NatsServer, token: str | None = TOKEN) -> AsyncIterator[Rig]:
    client = KrytenClient(
        {
            "nats": {"servers": [nats_server.url]},
            "channels": [{"domain": "cytu.be", "channel": "testchan"}],
        }
    )
    await client.connect()
    status = StaticStatus()
    status.channel_list = [*status.channel_list, *StaticStatus().channel_list]
    status.channel_list[1] = status.channel_list[1].model_copy(update={"channel": "other"})
    callbacks = Callbacks(status)
    control = ControlService(
        client,
        status,
        HealthMonitor(status),
        version="0.1.0",
        instance_id="test-1",
        token=token,
        on_reload=callbacks.on_reload,
        on_pause=callbacks.on_pause,
        on_resume=callbacks.on_resume,
        status_extra=lambda: {"counters": {"messages_seen": 3}},
    )
    await control.start()
    nc = await nats.connect(nats_server.url)
    try:
        yield Rig(nc, control, callbacks)
    finally:
        await nc.close()
        await control.stop()
        await client.disconnect()


async def test_srv_ping_info_stats_are_answered(nats_server: NatsServer) -> None:
    async with control_rig(nats_server) as rig:
        ping = json.loads((await rig.nc.request("$SRV.PING", b"", timeout=5)).data)
        assert ping["type"] == "io.nats.micro.v1.ping_response"
        assert ping["name"] == MICRO_SERVICE_NAME and ping["id"] == rig.control.service_id
        assert ping["metadata"] == {"instance_id": "test-1"}
        info_subject = f"$SRV.INFO.{MICRO_SERVICE_NAME}.{rig.control.service_id}"
        info = json.loads((await rig.nc.request(info_subject, b"", timeout=5)).data)
        assert info["version"] == "0.1.0"
        subjects = {e["name"]: e["subject"] for e in info["endpoints"]}
        assert subjects == {
            name: f"{CONTROL_SUBJECT_PREFIX}.{name}"
            for name in ("status", "health", "reload", "pause", "resume")
        }
        await rig.ask("health")
        stats_subject = f"$SRV.STATS.{MICRO_SERVICE_NAME}"
        stats = json.loads((await rig.nc.request(stats_subject, b"", timeout=5)).data)
        requests = {e["name"]: e["num_requests"] for e in stats["endpoints"]}
        assert requests["health"] == 1


async def test_stopped_service_leaves_srv(nats_server: NatsServer) -> None:
    async with control_rig(nats_server) as rig:
        await rig.control.stop()
        with pytest.raises(nats.errors.NoRespondersError):
            await rig.nc.request(f"$SRV.PING.{MICRO_SERVICE_NAME}", b"", timeout=2)


async def test_status_and_health_need_no_token(nats_server: NatsServer) -> None:
    async with control_rig(nats_server) as rig:
        health, headers = await rig.ask("health")
        assert error_code(headers) is None
        assert health is not None and health["status"] == "healthy"
        rig.callbacks.status.providers = {"main": {"state": "open"}}
        status, _ = await rig.ask("status")
        assert status is not None
        assert status["status"] == "degraded"
        assert status["reasons"] == [
            "provider.main: circuit breaker open",
            "llm: no usable provider for cytu.be/testchan, cytu.be/other "
            "(main: circuit breaker open)",
        ]
        assert status["instance_id"] == "test-1"
        assert status["channels"] == [
            {"domain": "cytu.be", "channel": "testchan"},
            {"domain": "cytu.be", "channel": "other"},
        ]
        assert status["paused"] == []
        assert status["counters"] == {"messages_seen": 3}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (None, b""),
        ({"Authorization": "Bearer wrong"}, b""),
        ({"Authorization": f"Basic {TOKEN}"}, b""),
        ({"Authorization": "Bearer "}, b""),
        (None, {"token": "wrong"}),
        (None, {"token": 12345}),
        (None, {"token": TOKEN[:-1]}),
    ],
)
async def test_unauthorised_reload_is_refused(
    nats_server: NatsServer, headers: dict[str, str] | None, body: Any
) -> None:
    async with control_rig(nats_server) as rig:
        answer, reply_headers = await rig.ask("reload", body, headers)
        assert answer is None
        assert error_code(reply_headers) == "401"
        assert TOKEN not in json.dumps(reply_headers)
        assert rig.callbacks.reloads == 0


async def test_a_burst_of_bad_tokens_is_one_warning_and_every_refusal_counted(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kryten_llm.ops.control")
    async with control_rig(nats_server) as rig:
        for attempt in range(BURST_REQUESTS):
            _, headers = await rig.ask("reload", {"token": f"guess-{attempt}"})
            assert error_code(headers) == "401"
        _, headers = await rig.ask("pause", {"token": TOKEN, "channel": "nowhere"})
        assert error_code(headers) == "404"
        assert rig.control.refused == {401: BURST_REQUESTS, 404: 1}
        assert rig.callbacks.reloads == 0
    refusals = [r.getMessage() for r in caplog.records if "refused (401)" in r.getMessage()]
    assert len(refusals) == 1, "one line per interval, not one per attempt"
    assert "1 such refusal(s) since the last report, 1 in total" in refusals[0]
    assert sum("refused (404)" in r.getMessage() for r in caplog.records) == 1
    assert "guess-" not in caplog.text


async def test_no_configured_token_refuses_every_mutation(nats_server: NatsServer) -> None:
    async with control_rig(nats_server, token=None) as rig:
        for endpoint in ("reload", "pause", "resume"):
            _, headers = await rig.ask(endpoint, {"token": ""}, {"Authorization": "Bearer x"})
            assert error_code(headers) == "403"
            assert "no control token configured" in headers["Nats-Service-Error"]
        assert rig.callbacks.reloads == 0 and rig.callbacks.calls == []


async def test_authorised_reload_calls_the_callback(nats_server: NatsServer) -> None:
    async with control_rig(nats_server) as rig:
        answer, headers = await rig.ask("reload", b"", {"Authorization": f"Bearer {TOKEN}"})
        assert error_code(headers) is None
        assert answer == {"ok": True, "changed": ["personality"]}
        answer, _ = await rig.ask("reload", {"token": TOKEN})
        assert answer is not None and answer["ok"] is True
        assert rig.callbacks.reloads == 2


async def test_reload_failures_are_reported_safely(nats_server: NatsServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with control_rig(nats_server) as rig:
        rig.callbacks.reload_error = ConfigError("config.json", ["nats.url: must be a URL"])
        _, headers = await rig.ask("reload", b"", auth)
        assert error_code(headers) == "400"
        assert "nats.url: must be a URL" in headers["Nats-Service-Error"]
        rig.callbacks.reload_error = RuntimeError("key sk-live-SECRET in a message")
        _, headers = await rig.ask("reload", b"", auth)
        assert error_code(headers) == "500"
        assert headers["Nats-Service-Error"] == "reload failed (RuntimeError)"


async def test_pause_and_resume_per_channel_and_all(nats_server: NatsServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with control_rig(nats_server) as rig:
        answer, _ = await rig.ask("pause", {"channel": "testchan"}, auth)
        assert answer == {"ok": True, "paused": ["testchan"]}
        status, _ = await rig.ask("status")
        assert status is not None and status["paused"] == ["testchan"]
        answer, _ = await rig.ask("pause", b"", auth)
        assert answer == {"ok": True, "paused": ["other", "testchan"]}
        answer, _ = await rig.ask("resume", {"channel": "other", "token": TOKEN})
        assert answer == {"ok": True, "paused": ["testchan"]}
        answer, _ = await rig.ask("resume", {"channel": None}, auth)
        assert answer == {"ok": True, "paused": []}
        assert rig.callbacks.calls == [
            ("pause", "testchan"),
            ("pause", None),
            ("resume", "other"),
            ("resume", None),
        ]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "400"),
        (b"[1, 2]", "400"),
        (b"\xff\xfe", "400"),
        ({"channel": 5}, "400"),
        ({"channel": "  "}, "400"),
        ({"channel": "x" * 300}, "400"),
        (b"{" + b" " * 5000 + b"}", "400"),
        ({"channel": "nosuchchannel"}, "404"),
    ],
)
async def test_bad_pause_requests_are_refused(
    nats_server: NatsServer, body: Any, code: str
) -> None:
    async with control_rig(nats_server) as rig:
        answer, headers = await rig.ask("pause", body, {"Authorization": f"Bearer {TOKEN}"})
        assert answer is None
        assert error_code(headers) == code
        assert rig.callbacks.status.paused == set()


async def test_start_without_a_connection_is_a_clear_error() -> None:
    client = KrytenClient(
        {
            "nats": {"servers": ["nats://127.0.0.1:1"]},
            "channels": [{"domain": "cytu.be", "channel": "testchan"}],
        }
    )
    status = StaticStatus()
    control = ControlService(
        client,
        status,
        HealthMonitor(status),
        version="0.1.0",
        instance_id="x",
        token=None,
        on_reload=dict,
        on_pause=lambda channel: [],
        on_resume=lambda channel: [],
    )
    with pytest.raises(RuntimeError, match="not connected"):
        await control.start()
    await control.stop()  # harmless when never started


@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.1.0", "0.1.0"), ("1.2.3-rc.1", "1.2.3-rc.1"), ("0.1.0.dev3", "0.0.0"), ("", "0.0.0")],
)
def test_micro_version(version: str, expected: str) -> None:
    assert micro_version(version) == expected
