"""The in-memory fallback: a bucket in a dict, bounded, with revisions like JetStream's.

Used while JetStream is unavailable (and when durable state is switched off), so features
keep working: same keys, same revision-checked updates, same size limits. It is this
process's alone and is lost on exit. The number of keys is bounded; the least recently used
key goes first, and that is counted and logged at most once a minute, not per key.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from kryten_llm._throttle import ThrottledCount
from kryten_llm.state._backend import Conflict

log = logging.getLogger(__name__)

EVICTION_REPORT_INTERVAL_SECONDS = 60.0


class MemoryBackend:
    """One bucket's keys in an LRU-ordered dict. Never awaits, so every call is atomic."""

    def __init__(self, name: str, max_keys: int) -> None:
        self.name = name
        self.max_keys = max_keys
        self._entries: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._revision = 0
        self._evictions = ThrottledCount(EVICTION_REPORT_INTERVAL_SECONDS)

    def __len__(self) -> int:
        return len(self._entries)

    async def read(self, key: str) -> tuple[bytes | None, int]:
        entry = self._entries.get(key)
        if entry is None:
            return None, 0
        self._entries.move_to_end(key)
        return entry

    async def write(self, key: str, data: bytes, last: int | None) -> int:
        self._check(key, last)
        self._revision += 1
        self._entries[key] = (data, self._revision)
        self._entries.move_to_end(key)
        self._evict()
        return self._revision

    async def remove(self, key: str, last: int | None) -> None:
        self._check(key, last)
        self._entries.pop(key, None)

    async def list_keys(self, prefix: str, limit: int) -> list[str]:
        start = f"{prefix}." if prefix else ""
        return [key for key in self._entries if key.startswith(start)][:limit]

    def pop_oldest(self) -> tuple[str, bytes] | None:
        """Take out the least recently used key (carrying the fallback over to KV)."""
        if not self._entries:
            return None
        key, (data, _revision) = self._entries.popitem(last=False)
        return key, data

    def restore(self, key: str, data: bytes) -> None:
        """Put a taken key back unless it was written again meanwhile (a failed carry-over)."""
        if key not in self._entries:
            self._revision += 1
            self._entries[key] = (data, self._revision)
            self._entries.move_to_end(key, last=False)
            self._evict()

    def _check(self, key: str, last: int | None) -> None:
        if last is None:
            return
        entry = self._entries.get(key)
        if (entry[1] if entry else 0) != last:
            raise Conflict(key)

    def _evict(self) -> None:
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
            since = self._evictions.note()
            if since is not None:
                log.warning(
                    "state bucket %s in memory is full (%d keys): dropped %d least recently "
                    "used keys",
                    self.name,
                    self.max_keys,
                    since,
                )
