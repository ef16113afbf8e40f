"""JetStream KV as a `Backend`: bucket opening, revision-checked writes, every call timed.

kryten-py binds buckets (`kryten.kv_store.get_kv_store`, used here). Its other KV helpers
(`kv_get`, `kv_put`, `get_or_create_kv_store`, ...) are not: they turn every error into a
default value or `False`, so an outage would look like an empty store and a lost write like
a success, which is the one thing this layer must see; they carry no revisions, so no
compare-and-set; and bucket creation takes neither history nor replicas. nats-py's
`KeyValue` does all three (`get` returns the revision, `update(last=...)` is checked by the
server), reached through `_bus.raw_nats`.

Every call runs under `asyncio.wait_for` with the configured timeout. Errors split three ways:
a lost compare-and-set is `Conflict` (retry), a missing key is an answer, and everything else
a JetStream call can raise (no responders, timeouts, a closed connection, an API refusal) is
`Unavailable` with a reason in plain words, which turns durable state off until a retry works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

import nats.errors
import nats.js.errors
from kryten.kv_store import get_kv_store
from nats.aio.client import Client as NatsClient
from nats.js import api
from nats.js.kv import KeyValue

from kryten_llm.config import StateSettings
from kryten_llm.state._backend import Conflict, StateValueError, Unavailable

log = logging.getLogger(__name__)

R = TypeVar("R")

WRONG_LAST_SEQUENCE_CODES = frozenset({10071, 10164})
"""JetStream's error codes for "the key changed since you read it" (nats-py maps them for
`update`, not for `delete`)."""

HEADER_ALLOWANCE_BYTES = 1024
"""Room for the message headers (expected revision, delete marker) on top of the largest
value: JetStream counts headers against the bucket's maximum message size."""

WATCHER_STOP_TIMEOUT_SECONDS = 1.0
KV_SUBJECT_PREFIX = "$KV."
KV_STREAM_PREFIX = "KV_"
KV_OPERATION_HEADER = "KV-Operation"
KV_MARKER_HEADER = "Nats-Marker-Reason"
"""JetStream KV's own wire names: a bucket is stream `KV_<bucket>`, its keys are subjects
`$KV.<bucket>.<key>`, and deletes are messages carrying one of these headers."""


def describe(exc: BaseException, timeout_seconds: float) -> str:
    """Why JetStream is unusable, for the one warning and for health."""
    if isinstance(exc, TimeoutError):
        return f"JetStream did not answer within {timeout_seconds:g} s"
    if isinstance(exc, nats.errors.NoRespondersError) or (
        isinstance(exc, nats.js.errors.ServiceUnavailableError) and not exc.description
    ):
        return "JetStream is not enabled on the NATS server (nothing answers its API)"
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return "no JetStream stream took the write (JetStream went away or the bucket was deleted)"
    if isinstance(exc, nats.js.errors.APIError):
        return f"JetStream refused: {exc.description or 'no reason given'} (code {exc.err_code})"
    if isinstance(
        exc,
        nats.errors.ConnectionClosedError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.ConnectionDrainingError
        | nats.errors.StaleConnectionError
        | nats.errors.OutboundBufferLimitError
        | OSError,
    ):
        return f"the NATS connection is down ({type(exc).__name__})"
    return f"JetStream failed: {type(exc).__name__}: {exc}"


async def timed(nc: NatsClient, call: Awaitable[R], timeout_seconds: float) -> R:
    """Run one JetStream call with a timeout; Unavailable for anything but a KV answer."""
    if not nc.is_connected:
        if asyncio.iscoroutine(call):
            call.close()  # never started: no "was never awaited" warning
        raise Unavailable("the NATS connection is down")
    try:
        return await asyncio.wait_for(call, timeout_seconds)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyWrongLastSequenceError):
        raise
    except nats.errors.MaxPayloadError as exc:
        raise StateValueError("value larger than the NATS server accepts") from exc
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise Unavailable(describe(exc, timeout_seconds)) from exc


def bucket_config(name: str, settings: StateSettings) -> api.KeyValueConfig:
    return api.KeyValueConfig(
        bucket=name,
        description="kryten-llm durable state",
        history=settings.history,
        replicas=settings.replicas,
        max_value_size=settings.max_value_bytes + HEADER_ALLOWANCE_BYTES,
    )


async def open_bucket(nc: NatsClient, name: str, settings: StateSettings) -> KeyValue:
    """Bind the bucket (kryten-py), create it when missing, and apply history and replicas.

    An existing bucket whose history, replicas or value size differ from the settings is
    updated to them, so a changed setting takes effect on the next start.
    """
    timeout = settings.operation_timeout_seconds
    js = nc.jetstream(timeout=timeout)
    try:
        kv: KeyValue = await timed(nc, get_kv_store(nc, name), timeout)
    except Unavailable as exc:
        if not isinstance(exc.__cause__, nats.js.errors.BucketNotFoundError):
            raise
        kv = await timed(nc, js.create_key_value(bucket_config(name, settings)), timeout)
        log.info(
            "created state bucket %s (history %d, replicas %d)",
            name,
            settings.history,
            settings.replicas,
        )
        return kv
    status = await timed(nc, kv.status(), timeout)
    config = status.stream_info.config
    wanted = {
        "max_msgs_per_subject": settings.history,
        "num_replicas": settings.replicas,
        "max_msg_size": settings.max_value_bytes + HEADER_ALLOWANCE_BYTES,
    }
    changed = {field: value for field, value in wanted.items() if getattr(config, field) != value}
    if changed:
        await timed(nc, js.update_stream(config.evolve(**changed)), timeout)
        log.info("state bucket %s updated to the configured %s", name, changed)
    return kv


class KvBackend:
    """One bucket in JetStream KV, every call timed (see the module doc)."""

    def __init__(self, nc: NatsClient, kv: KeyValue, timeout_seconds: float, bucket: str) -> None:
        self.nc = nc
        self._kv = kv
        self._timeout = timeout_seconds
        self.bucket = bucket

    async def read(self, key: str) -> tuple[bytes | None, int]:
        try:
            entry = await timed(self.nc, self._kv.get(key), self._timeout)
        except nats.js.errors.KeyNotFoundError as exc:
            # A deleted key still has a revision (its delete marker): a create must expect it.
            marker = exc.entry
            return None, (marker.revision or 0) if marker is not None else 0
        return entry.value or b"", entry.revision or 0

    async def write(self, key: str, data: bytes, last: int | None) -> int:
        if last is None:
            return await timed(self.nc, self._kv.put(key, data), self._timeout)
        try:
            # last=0 expects no message on the key: a create.
            return await timed(self.nc, self._kv.update(key, data, last=last), self._timeout)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Conflict(key) from exc

    async def remove(self, key: str, last: int | None) -> None:
        try:
            await timed(self.nc, self._kv.delete(key, last=last), self._timeout)
        except Unavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, nats.js.errors.APIError) and (
                cause.err_code in WRONG_LAST_SEQUENCE_CODES
            ):
                raise Conflict(key) from cause
            raise

    async def list_keys(self, prefix: str, limit: int) -> list[str]:
        return await timed(self.nc, self._list(prefix, limit), self._timeout)

    async def _list(self, prefix: str, limit: int) -> list[str]:
        """Keys under `prefix`, filtered by the server (`<prefix>.>`), deletes left out.

        Read through an ordered consumer of each key's last message, not nats-py's
        `KeyValue.watch`: that marks the end of the keys when the consumer has nothing pending
        and its callback has received nothing, which is also true while the keys are still on
        their way from the server, so a listing came back empty now and then. Here the end is
        a message's own count of those still pending (0 on the last), and "no keys" is a
        consumer to which the server delivered nothing and holds nothing.
        """
        subject = f"{KV_SUBJECT_PREFIX}{self.bucket}.{prefix + '.>' if prefix else '>'}"
        js = self.nc.jetstream(timeout=self._timeout)
        sub = await js.subscribe(
            subject,
            stream=f"{KV_STREAM_PREFIX}{self.bucket}",
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            headers_only=True,
        )
        keys: list[str] = []
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return keys
            while len(keys) < limit:
                msg = await sub.next_msg(timeout=self._timeout)
                if not _is_delete(msg.headers):
                    keys.append(msg.subject[len(KV_SUBJECT_PREFIX) + len(self.bucket) + 1 :])
                if not msg.metadata.num_pending:
                    break
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), WATCHER_STOP_TIMEOUT_SECONDS)
        return keys


def _is_delete(headers: dict[str, str] | None) -> bool:
    """A delete or purge marker (nats-server 2.11+ also marks expiry and removal this way)."""
    if not headers:
        return False
    if headers.get(KV_OPERATION_HEADER) in ("DEL", "PURGE"):
        return True
    return headers.get(KV_MARKER_HEADER) in ("MaxAge", "Purge", "Remove")
