"""Move events from the listener queue through decisions into a bounded pool of reply workers.

One dispatcher task takes events in arrival order and calls the pipeline's cheap, synchronous
`decide()`; jobs that need an LLM go onto a bounded reply queue served by N workers, so a
slow LLM answer for one user never delays another user's reply or another channel's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kryten_llm._throttle import ThrottledCount
from kryten_llm.daemon.listener import InboundEvent
from kryten_llm.events import MalformedEvent, MalformedEvents, correlation_of, decode_envelope
from kryten_llm.logsetup import correlation_id
from kryten_llm.pipeline import Job

log = logging.getLogger(__name__)

DROP_LOG_INTERVAL_SECONDS = 5.0
"""At most one "reply queue full" warning per this interval; every drop is still counted."""

Decide = Callable[[str, dict[str, object], float], Job | None]
"""`Pipeline.decide(event name, envelope, when NATS delivered it)`."""
Reply = Callable[[Job], Awaitable[object]]
OnDropped = Callable[[Job], None]


def event_name_of(subject: str) -> str:
    """The event token at the end of `kryten.events.cytube.{channel}.{event}`."""
    return subject.rsplit(".", 1)[-1]


class Dispatcher:
    """Owns the dispatcher task and the reply workers; every task it starts, it cancels."""

    def __init__(
        self,
        inbound: asyncio.Queue[InboundEvent],
        decide: Decide,
        reply: Reply,
        *,
        workers: int,
        reply_queue_size: int,
        on_dropped: OnDropped | None = None,
        malformed: MalformedEvents | None = None,
    ) -> None:
        self._inbound = inbound
        self._decide = decide
        self._reply = reply
        self._on_dropped = on_dropped
        self.malformed = malformed or MalformedEvents()
        """Shared with the pipeline, so envelope and payload problems are counted together."""
        self._worker_count = workers
        self.replies: asyncio.Queue[Job] = asyncio.Queue(maxsize=reply_queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._drops = ThrottledCount(DROP_LOG_INTERVAL_SECONDS)
        self.busy_workers = 0

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="dispatcher"))
        for index in range(self._worker_count):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"reply-worker-{index}"))

    def dispatch_one(self, event: InboundEvent) -> None:
        """Decode and decide one event; enqueue its reply job if there is one."""
        try:
            envelope = decode_envelope(event.data)
        except MalformedEvent as exc:
            self.malformed.note(f"event on {event.subject}", str(exc))
            return
        token = correlation_id.set(correlation_of(envelope))
        try:
            job = self._decide(event_name_of(event.subject), envelope, event.received_monotonic)
        finally:
            correlation_id.reset(token)
        if job is None:
            return
        try:
            self.replies.put_nowait(job)
        except asyncio.QueueFull:
            self._note_drop(job)
            if self._on_dropped is not None:
                self._on_dropped(job)

    @property
    def dropped(self) -> int:
        """Reply jobs dropped because the reply queue was full, since start."""
        return self._drops.total

    def _note_drop(self, job: Job) -> None:
        """A flood of mentions must not become a flood of log lines: count each, warn rarely."""
        since = self._drops.note()
        if since is not None:
            log.warning(
                "reply queue full (%d): dropped %d reply job(s) since last report, %d in total; "
                "latest to %s in %s [%s]",
                self.replies.maxsize,
                since,
                self.dropped,
                job.line.username,
                job.line.channel,
                job.correlation_id,
            )

    async def _dispatch_loop(self) -> None:
        while True:
            event = await self._inbound.get()
            try:
                self.dispatch_one(event)
            except Exception:  # a bug in one decision must not stop the bot hearing chat
                log.exception("error while deciding on an event from %s", event.subject)
            finally:
                self._inbound.task_done()

    async def _worker(self) -> None:
        while True:
            job = await self.replies.get()
            self.busy_workers += 1
            token = correlation_id.set(job.correlation_id)
            try:
                await self._reply(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "error while replying to %s in %s [%s]",
                    job.line.username,
                    job.line.channel,
                    job.correlation_id,
                )
            finally:
                correlation_id.reset(token)
                self.busy_workers -= 1
                self.replies.task_done()

    async def drain(self, grace_seconds: float) -> bool:
        """Let queued events and in-flight replies finish, up to `grace_seconds`."""

        async def _both() -> None:
            await self._inbound.join()
            await self.replies.join()

        try:
            await asyncio.wait_for(_both(), timeout=grace_seconds)
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
