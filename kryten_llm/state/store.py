"""The store: buckets by purpose, typed JSON values, compare-and-set, and degradation.

`StateStore` owns the connection to JetStream and whether it is usable; `Bucket[T]` is what a
feature holds. Each call goes to KV while it is available and to the in-memory fallback
otherwise, so a feature never handles an outage itself; it can read `store.status`.

Degradation, as the package doc explains: the first failure turns durable state off with one
warning naming the reason, the call is redone in memory, and one background task reconnects
with doubling waits (jittered, so replicas do not retry in step). A background task rather
than a lazy retry on use: health turns back to ok without waiting for traffic, and no chat
line ever waits on a reconnect attempt. The task is tracked and cancelled by `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nats.aio.client import Client as NatsClient
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from kryten_llm._bus import raw_nats
from kryten_llm.config import StateSettings
from kryten_llm.state._backend import (
    Backend,
    Conflict,
    StateConflictError,
    StateValueError,
    Unavailable,
)
from kryten_llm.state.keys import StateKey
from kryten_llm.state.kv import KvBackend, open_bucket, timed
from kryten_llm.state.memory import MemoryBackend

log = logging.getLogger("kryten_llm.state")

T = TypeVar("T")
R = TypeVar("R")

PURPOSE = re.compile(r"[a-z0-9_]{1,32}")
"""A bucket's purpose, appended to the configured prefix (bucket names allow `A-Za-z0-9_-`)."""

KEYS_LIMIT = 10_000
"""Most keys one `keys()` call returns: a listing is bounded like every other collection."""

CONFLICT_BACKOFF_SECONDS = 0.002
"""Base of the jittered pause after a lost compare-and-set, so writers stop colliding in step."""

RETRY_JITTER_FRACTION = 0.2


@dataclass(frozen=True, slots=True)
class StateStatus:
    """Whether durable state is on, for health: `degraded` means wanted but not available."""

    enabled: bool
    """Configured to use JetStream (false: memory only, by choice)."""
    available: bool
    """JetStream KV is in use right now."""
    reason: str
    """Why it is not (empty while available)."""

    @property
    def degraded(self) -> bool:
        return self.enabled and not self.available


class StateStore:
    """All durable state: one per process, shared by every feature (see the package doc).

    `client` is the service's connected kryten-py client (its nats-py connection is used for
    what kryten-py does not wrap); None runs in memory only, as `enabled=False` does.
    """

    def __init__(self, settings: StateSettings, client: Any | None) -> None:
        self.settings = settings
        self._client = client
        self._purposes: dict[str, str] = {}
        self._memory: dict[str, MemoryBackend] = {}
        self._kv: dict[str, KvBackend] = {}
        self._available = False
        self._reason = "not started"
        self._retry_task: asyncio.Task[None] | None = None
        self._outage = False  # this outage has had its one warning
        self._closed = False
        if not settings.enabled:
            self._reason = "durable state is disabled in the configuration"
        elif client is None:
            self._reason = "no NATS connection was given"

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and self._client is not None

    @property
    def status(self) -> StateStatus:
        return StateStatus(self.enabled, self._available, "" if self._available else self._reason)

    def bucket(self, purpose: str, value_type: type[T]) -> Bucket[T]:
        """The bucket `<prefix><purpose>` holding JSON values of `value_type` (pydantic)."""
        if not PURPOSE.fullmatch(purpose):
            raise ValueError("a bucket purpose is 1-32 of a-z, 0-9 and _")
        name = self.settings.bucket_prefix + purpose
        self._purposes[purpose] = name
        self._memory.setdefault(
            purpose, MemoryBackend(name, max_keys=self.settings.memory_max_keys)
        )
        return Bucket(self, purpose, name, TypeAdapter(value_type))

    async def start(self) -> None:
        """Open every bucket asked for so far; on failure, warn once and retry in the background."""
        if not self.enabled:
            log.info("%s: state is kept in memory only (lost on restart)", self._reason)
            return
        try:
            await self._open_all()
        except Unavailable as exc:
            self._degrade(exc.reason)
            return
        self._available = True
        log.info("durable state on JetStream KV: %s", ", ".join(sorted(self._kv_names())))

    async def close(self) -> None:
        """Stop retrying; in-memory state is dropped with the process."""
        self._closed, self._available, self._reason = True, False, "closed"
        task, self._retry_task = self._retry_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._kv.clear()

    # --- routing ------------------------------------------------------------------------

    async def run(self, purpose: str, op: Callable[[Backend], Awaitable[R]]) -> R:
        """Run `op` on the bucket's KV, or in memory when KV is off or fails during it."""
        if self._available:
            try:
                backend = await self._kv_backend(purpose)
                return await op(backend)
            except Unavailable as exc:
                self._degrade(exc.reason)
        return await op(self._memory[purpose])

    async def _kv_backend(self, purpose: str) -> KvBackend:
        """The bucket's KV, opened on first use (a bucket asked for after start)."""
        nc = self._connection()
        backend = self._kv.get(purpose)
        if backend is None or backend.nc is not nc:
            kv = await open_bucket(nc, self._purposes[purpose], self.settings)
            timeout = self.settings.operation_timeout_seconds
            backend = KvBackend(nc, kv, timeout, self._purposes[purpose])
            self._kv[purpose] = backend
        return backend

    def _connection(self) -> NatsClient:
        nc = raw_nats(self._client)
        if nc is None:
            raise Unavailable("not connected to NATS")
        return nc

    def _kv_names(self) -> list[str]:
        return [self._purposes[purpose] for purpose in self._kv]

    async def _open_all(self) -> None:
        self._kv.clear()
        for purpose in list(self._purposes):
            await self._kv_backend(purpose)
        if not self._purposes:
            # No bucket yet: still find out now whether JetStream answers at all.
            nc = self._connection()
            timeout = self.settings.operation_timeout_seconds
            await timed(nc, nc.jetstream(timeout=timeout).account_info(), timeout)

    # --- degradation and recovery -----------------------------------------------------------

    def _degrade(self, reason: str) -> None:
        """Turn durable state off: one warning per outage, and one retry task."""
        if not self._outage:
            self._outage = True
            log.warning(
                "durable state is off, keeping state in memory (this process only, lost on "
                "restart) until JetStream is back: %s",
                reason,
            )
        self._available = False
        self._reason = reason
        self._kv.clear()
        if self._retry_task is None and not self._closed:
            self._retry_task = asyncio.create_task(self._retry(), name="state-retry")

    async def _retry(self) -> None:
        """Reconnect with doubling, jittered waits until KV works again, then carry over."""
        delay = self.settings.retry_initial_seconds
        try:
            while True:
                jitter = 1 + random.uniform(-RETRY_JITTER_FRACTION, RETRY_JITTER_FRACTION)
                await asyncio.sleep(delay * jitter)
                try:
                    await self._open_all()
                    carried, kept = await self._carry_over()
                except Unavailable as exc:
                    if exc.reason != self._reason:
                        log.debug("durable state still off: %s", exc.reason)
                    self._reason = exc.reason
                    delay = min(delay * 2, self.settings.retry_max_seconds)
                    continue
                self._available, self._outage = True, False
                log.info(
                    "durable state is back on JetStream KV; %d keys written meanwhile carried "
                    "over, %d already there kept as they were",
                    carried,
                    kept,
                )
                return
        finally:
            self._retry_task = None

    async def _carry_over(self) -> tuple[int, int]:
        """Move what was written in memory during the outage to KV, never overwriting KV.

        A key that has a value in KV was written by another replica or an earlier run, which
        is the shared truth, so it wins (a key deleted there is written: the write is newer).
        Keys are taken one by one until memory is empty, so a write landing in memory while
        this runs is carried too; the caller turns KV on with no await after the last one.
        """
        carried = kept = 0
        while pending := [(p, m) for p, m in self._memory.items() if len(m)]:
            for purpose, memory in pending:
                backend = await self._kv_backend(purpose)
                while (item := memory.pop_oldest()) is not None:
                    key, data = item
                    try:
                        there, revision = await backend.read(key)
                        if there is not None:
                            raise Conflict(key)
                        await backend.write(key, data, last=revision)
                        carried += 1
                    except Conflict:
                        kept += 1
                    except Unavailable:
                        memory.restore(key, data)
                        raise
        return carried, kept


class Bucket(Generic[T]):
    """A feature's bucket: typed JSON values under `StateKey`s, in KV or in memory."""

    def __init__(self, store: StateStore, purpose: str, name: str, adapter: TypeAdapter[T]):
        self.store = store
        self.purpose = purpose
        self.name = name
        self._adapter = adapter

    async def get(self, key: StateKey) -> T | None:
        """The value, or None when the key is absent."""
        data, _revision = await self.store.run(self.purpose, lambda b: b.read(key.encoded))
        return None if data is None else self._decode(data)

    async def put(self, key: StateKey, value: T) -> None:
        """Store `value`, whatever is there (last writer wins: use `update` to change a value)."""
        data = self._encode(value)
        await self.store.run(self.purpose, lambda b: b.write(key.encoded, data, None))

    async def delete(self, key: StateKey) -> None:
        """Remove the key (absent is fine)."""
        await self.store.run(self.purpose, lambda b: b.remove(key.encoded, None))

    async def keys(self, prefix: StateKey | None = None, limit: int = KEYS_LIMIT) -> list[StateKey]:
        """Up to `limit` keys under `prefix` (all keys when None); keys not made by
        `StateKey` (written by something else) are left out."""
        start = prefix.encoded if prefix is not None else ""
        found = await self.store.run(self.purpose, lambda b: b.list_keys(start, limit))
        keys = []
        for raw in found:
            try:
                keys.append(StateKey.decode(raw))
            except ValueError:
                continue
        return keys

    async def update(self, key: StateKey, fn: Callable[[T | None], T | None]) -> T | None:
        """Read, apply `fn`, write back only if nobody wrote in between; retry if someone did.

        `fn` gets the current value (None when absent) and returns the new one (None
        deletes). It may run more than once, so it must only compute, never act. Two writers
        never lose an update; after `update_attempts` lost races StateConflictError is raised.
        """
        return await self.store.run(self.purpose, lambda b: self._update(b, key.encoded, fn))

    async def _update(
        self, backend: Backend, key: str, fn: Callable[[T | None], T | None]
    ) -> T | None:
        attempts = self.store.settings.update_attempts
        for attempt in range(1, attempts + 1):
            data, revision = await backend.read(key)
            current = None if data is None else self._decode(data)
            new = fn(current)
            try:
                if new is None:
                    if data is not None:
                        await backend.remove(key, revision)
                else:
                    await backend.write(key, self._encode(new), revision)
                return new
            except Conflict:
                await asyncio.sleep(random.uniform(0, CONFLICT_BACKOFF_SECONDS * attempt))
        raise StateConflictError(
            f"update in {self.name} lost to other writers {attempts} times in a row"
        )

    def _encode(self, value: T) -> bytes:
        try:
            data = self._adapter.dump_json(value)
        except PydanticSerializationError as exc:  # e.g. a lone surrogate: no UTF-8 for it
            raise StateValueError(f"a value for {self.name} has no JSON form: {exc}") from exc
        limit = self.store.settings.max_value_bytes
        if len(data) > limit:
            raise StateValueError(f"value of {len(data)} bytes for {self.name}; limit {limit}")
        return data

    def _decode(self, data: bytes) -> T:
        try:
            return self._adapter.validate_json(data)
        except ValidationError as exc:
            raise StateValueError(
                f"a value in {self.name} is not what the bucket holds ({exc.error_count()} errors)"
            ) from exc
