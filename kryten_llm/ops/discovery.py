"""Announce the service on the Kryten bus and keep saying it is alive.

kryten-py already publishes `kryten.lifecycle.llm.{startup,heartbeat,shutdown}` (from the
`service` block of its config) and re-publishes `startup` on `kryten.service.discovery.poll`.
This module adds what the plan asks for on top of that:

- `kryten.service.discovery` at start: name, version, features, channels, instance id,
  hostname, timestamp, so a dashboard can list who serves which channel.
- `kryten.service.heartbeat` every `heartbeat_interval_seconds`, carrying the health verdict
  and each component's status (see `kryten_llm.ops.health`).
- Re-announcement (one discovery message) on `kryten.service.discovery.poll` and on
  `kryten.lifecycle.robot.startup`. On a bridge restart the lifecycle `startup` is re-published
  too: the bridge registers services only from startup events, and kryten-py does not answer a
  robot startup by itself (it does answer polls, so a poll gets no second lifecycle startup).
- After a NATS reconnect (seen at the next heartbeat) both are re-published: while we were
  away the bridge may have restarted and forgotten us.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kryten_llm._bus import raw_nats
from kryten_llm.config import MetricsSettings, ServiceSettings
from kryten_llm.ops.health import HealthMonitor, StatusSource
from kryten_llm.redact import redact_value

log = logging.getLogger(__name__)

DISCOVERY_SUBJECT = "kryten.service.discovery"
DISCOVERY_POLL_SUBJECT = "kryten.service.discovery.poll"
HEARTBEAT_SUBJECT = "kryten.service.heartbeat"
ROBOT_STARTUP_SUBJECT = "kryten.lifecycle.robot.startup"


def lifecycle_service_config(
    name: str, version: str, service: ServiceSettings, metrics: MetricsSettings
) -> dict[str, Any]:
    """The `service` block of kryten-py's config: its lifecycle events use our interval.

    When the metrics endpoint is on a fixed port, the startup and heartbeat events also
    advertise it (`metadata.endpoints`), so the bridge's service list shows where to scrape.
    """
    config: dict[str, Any] = {
        "name": name,
        "version": version,
        "heartbeat_interval": service.heartbeat_interval_seconds,
    }
    if metrics.enabled and metrics.port:
        config["health_port"] = metrics.port
        config["metrics_port"] = metrics.port
    return config


def default_instance_id() -> str:
    """`<hostname>-<pid>`: readable, and different after every restart."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Announcer:
    """Owns the discovery subscriptions and the heartbeat task for one `KrytenClient`."""

    def __init__(
        self,
        client: Any,
        status: StatusSource,
        monitor: HealthMonitor,
        *,
        name: str,
        version: str,
        features: Sequence[str],
        heartbeat_interval_seconds: float,
        instance_id: str | None = None,
    ) -> None:
        self._client = client
        self._status = status
        self._monitor = monitor
        self._name = name
        self._version = version
        self._features = list(features)
        self._interval = heartbeat_interval_seconds
        self.instance_id = instance_id or default_instance_id()
        self._hostname = socket.gethostname()
        self._started_monotonic = time.monotonic()
        self._subscriptions: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._reconnects_seen = 0

    def _identity(self) -> dict[str, Any]:
        return {
            "name": self._name,
            "version": self._version,
            "instance_id": self.instance_id,
            "hostname": self._hostname,
            "timestamp": _now_iso(),
        }

    def discovery_payload(self) -> dict[str, Any]:
        channels = [{"domain": c.domain, "channel": c.channel} for c in self._status.channels()]
        return {**self._identity(), "features": list(self._features), "channels": channels}

    def heartbeat_payload(self) -> dict[str, Any]:
        report = self._monitor.check().to_dict()
        return {
            **self._identity(),
            "uptime_seconds": round(time.monotonic() - self._started_monotonic, 1),
            **report,
        }

    async def start(self) -> None:
        """Subscribe first (so a poll right after our announcement is heard), then announce."""
        self._reconnects_seen = self._reconnects()
        for subject, handler in (
            (DISCOVERY_POLL_SUBJECT, self._on_poll),
            (ROBOT_STARTUP_SUBJECT, self._on_robot_startup),
        ):
            self._subscriptions.append(await self._client.subscribe(subject, handler))
        await self.announce()
        self._task = asyncio.create_task(self._heartbeat_loop(), name="service-heartbeat")

    async def stop(self) -> None:
        """Cancel the heartbeat and unsubscribe; call before the client disconnects."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for sub in self._subscriptions:
            await self._client.unsubscribe(sub)
        self._subscriptions.clear()

    async def announce(self) -> None:
        await self._publish(DISCOVERY_SUBJECT, self.discovery_payload())

    async def heartbeat(self) -> None:
        await self._publish(HEARTBEAT_SUBJECT, self.heartbeat_payload())

    async def _publish(self, subject: str, payload: dict[str, Any]) -> None:
        """Publish, never raise: a lost announcement must not take a callback or loop down.

        The payload is redacted: it carries config (channels, instance id) and health text.
        """
        try:
            await self._client.publish(subject, redact_value(payload))
        except Exception as exc:
            log.warning("could not publish %s: %s", subject, exc.__class__.__name__)

    async def _republish_lifecycle_startup(self) -> None:
        lifecycle = self._client.lifecycle
        if lifecycle is not None:
            await lifecycle.publish_startup()

    async def _on_poll(self, msg: Any) -> None:
        log.debug("discovery poll received: re-announcing")
        await self.announce()

    async def _on_robot_startup(self, msg: Any) -> None:
        log.info("Kryten bridge (re)started: re-announcing")
        await self._republish_lifecycle_startup()
        await self.announce()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._reannounce_after_reconnect()
                await self.heartbeat()
            except Exception:  # a bug in one heartbeat must not end all later ones
                log.exception("heartbeat failed")

    def _reconnects(self) -> int:
        connection = raw_nats(self._client)
        return int(connection.stats.get("reconnects", 0)) if connection is not None else 0

    async def _reannounce_after_reconnect(self) -> None:
        reconnects = self._reconnects()
        if reconnects == self._reconnects_seen:
            return
        self._reconnects_seen = reconnects
        log.info("NATS reconnected: re-announcing")
        await self._republish_lifecycle_startup()
        await self.announce()
