"""The one place that reaches past kryten-py's public API, and why.

kryten-py 0.17.5 keeps its nats-py connection private (`KrytenClient._nats`) and offers no
accessor. We need the connection itself for three things kryten-py does not wrap: the real
connection state (kryten-py's `is_connected` stays true while the link is down), JetStream
KV reads with proper error types, and `nats.micro`. Everything else goes through kryten-py.

`connect()` also subscribes `kryten.events.cytube.{channel}.>` for kryten-py's typed-event
handlers, which we do not use (the listener subscribes raw to the six events it needs). That
subscription made the server deliver every event twice and kryten-py decode and validate
each one: measured, it was the largest CPU cost per chat line (docs/BENCHMARKS.md). `Client`
leaves it out and is otherwise kryten-py's own client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kryten import KrytenClient
from nats.aio.client import Client as NatsClient


class Client(KrytenClient):  # type: ignore[misc]
    """kryten-py's client without its catch-all event subscriptions (see the module doc)."""

    async def _setup_subscriptions(self) -> None:
        return None


def raw_nats(client: Any) -> NatsClient | None:
    """The nats-py connection under a connected KrytenClient, or None before connect."""
    connection = getattr(client, "_nats", None)
    return connection if isinstance(connection, NatsClient) else None


def really_connected(client: Any) -> bool:
    """True only while the NATS link is actually up (not kryten-py's sticky flag)."""
    connection = raw_nats(client)
    return bool(connection is not None and connection.is_connected)


async def flush_subscriptions(connection: NatsClient, timeout_seconds: int) -> None:
    """Return once the server has every subscription made so far on `connection`.

    nats-py's `flush()` writes its PING straight to the socket while SUBs wait in the
    pending buffer for the flusher task, so one flush can be answered before the server has
    seen them (measured: a request right after start got "no responders" about once in
    fifteen starts). Yielding lets the flusher write the buffer; the second PING then follows
    the SUBs on the wire, and its PONG proves they were processed.
    """
    await asyncio.sleep(0)
    await connection.flush(timeout=timeout_seconds)
    await connection.flush(timeout=timeout_seconds)


async def stop_micro_service(service: Any, owner: str) -> None:
    """Stop a nats micro service at shutdown, quietly: the connection may already be gone."""
    try:
        await service.stop()
    except Exception as exc:
        logging.getLogger(owner).debug("stopping the micro service failed: %s", exc)
