"""The one task that writes durable state, in the order the changes were decided.

Decisions change the in-process mirrors at once (so the next line already sees them) and hand
the KV write to this writer: `submit` only puts it on a bounded queue, so no chat line and no
reply ever waits for JetStream. One task, not one per write, because order matters: an opt-out
followed by an opt-in must not land the other way round. A write that fails (a value over the
size limit, a compare-and-set that kept losing) is logged, counted and dropped; an outage is
not a failure here, as the state layer keeps working in memory meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kryten_llm._throttle import ThrottledCount
from kryten_llm.state import StateConflictError, StateValueError

log = logging.getLogger(__name__)

Write = Callable[[], Awaitable[object]]
REPORT_INTERVAL_SECONDS = 60.0
"""At most one warning per interval for dropped writes, and one for failed ones."""


class StateWriter:
    """A bounded queue of writes and the task that runs them one by one."""

    def __init__(self, queue_size: int) -> None:
        self._queue: asyncio.Queue[tuple[str, Write]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._dropped = ThrottledCount(REPORT_INTERVAL_SECONDS)
        self._failed = ThrottledCount(REPORT_INTERVAL_SECONDS)
        self.written = 0

    def submit(self, what: str, write: Write) -> bool:
        """Queue a write (never waits); False when the queue is full and it was dropped."""
        try:
            self._queue.put_nowait((what, write))
            return True
        except asyncio.QueueFull:
            since = self._dropped.note()
            if since is not None:
                log.warning(
                    "state writes queue full (%d): dropped %d write(s) (latest: %s); durable "
                    "state lags this process until they are made again",
                    self._queue.maxsize,
                    since,
                    what,
                )
            return False

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def dropped(self) -> int:
        return self._dropped.total

    @property
    def failed(self) -> int:
        return self._failed.total

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="state-writer")

    async def drain(self, timeout_seconds: float) -> bool:
        """Wait until every queued write is done, up to the timeout; True if all were."""
        if self._task is None:
            return self._queue.empty()
        try:
            await asyncio.wait_for(self._queue.join(), timeout_seconds)
            return True
        except TimeoutError:
            return False

    async def close(self, timeout_seconds: float) -> None:
        """Finish the queued writes within the timeout, then stop; say what was left."""
        done = await self.drain(timeout_seconds)
        if not done:
            log.warning(
                "%d state write(s) not done within %gs of shutdown; they are lost",
                self.pending,
                timeout_seconds,
            )
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            what, write = await self._queue.get()
            try:
                await write()
                self.written += 1
            except (StateValueError, StateConflictError) as exc:
                self._report_failure(what, exc)
            except Exception:  # a bug in one write must not stop the others
                log.exception("state write %s failed", what)
                self._failed.note()
            finally:
                self._queue.task_done()

    def _report_failure(self, what: str, exc: Exception) -> None:
        since = self._failed.note()
        if since is not None:
            log.warning(
                "state write %s failed: %s (%d failure(s) since last report)", what, exc, since
            )
