"""What a bucket's storage does, in KV or in memory: bytes under encoded keys, with revisions.

`Bucket` (store.py) holds the typed API and the compare-and-set loop once, over this small
contract, so the in-memory fallback runs the very same code as JetStream KV.
"""

from __future__ import annotations

from typing import Protocol


class StateValueError(ValueError):
    """A value that cannot be stored (too large) or read back (not what the bucket holds).

    Raised, never papered over: a value this version cannot read is not silently replaced.
    """


class StateConflictError(RuntimeError):
    """A revision-checked update kept losing to other writers and gave up (bounded retries)."""


class Conflict(Exception):
    """A revision-checked write lost: the key changed since it was read (retry the update)."""


class Unavailable(Exception):
    """JetStream cannot be used now; `reason` says why in words an operator understands."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Backend(Protocol):
    """Storage of one bucket. `last` is the revision a write expects (0: the key is absent;
    None: write whatever is there)."""

    async def read(self, key: str) -> tuple[bytes | None, int]:
        """The value (None when absent) and the revision to pass as `last` when writing it."""
        ...

    async def write(self, key: str, data: bytes, last: int | None) -> int:
        """Store `data`; the new revision. Raises Conflict when `last` is not the current one."""
        ...

    async def remove(self, key: str, last: int | None) -> None:
        """Delete the key (absent keys are fine). Raises Conflict when `last` is stale."""
        ...

    async def list_keys(self, prefix: str, limit: int) -> list[str]:
        """Up to `limit` keys under `prefix` (`prefix.` + more tokens; all keys for "")."""
        ...
