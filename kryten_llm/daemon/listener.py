"""Receive the bridge's events from NATS and only enqueue them: never do work in the callback.

nats-py runs one subscription's callbacks one at a time, so anything slow here would stall
every later event of that channel. The callback copies the subject and bytes into a bounded
queue and returns; decoding and decisions happen in the dispatcher. We subscribe through
kryten-py's `subscribe()` to exactly the events we use, which gives raw messages and skips
kryten-py's per-event typed-model dispatch (most chat never concerns the bot).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kryten_llm._throttle import ThrottledCount
from kryten_llm.config import ChannelSettings, ListenerSettings
from kryten_llm.events import chat_subject

log = logging.getLogger(__name__)

EVENTS = ("chatMsg", "changeMedia", "addUser", "userlist", "setUserRank", "userLeave")
DROP_LOG_INTERVAL_SECONDS = 5.0
CONFIRM_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_EVENT_BYTES = ListenerSettings().max_event_bytes


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """An event as received: decoded later, off the subscription callback."""

    subject: str
    data: bytes
    received_monotonic: float
    """When NATS delivered it; carried to the pipeline, so time spent queued counts too."""


class MessageListener:
    """Subscribes to each channel's events and feeds one bounded queue."""

    def __init__(
        self,
        client: Any,
        channels: Iterable[ChannelSettings],
        queue_size: int,
        max_event_bytes: Callable[[], int] = lambda: DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._client = client
        self._channels = list(channels)
        self.queue: asyncio.Queue[InboundEvent] = asyncio.Queue(maxsize=queue_size)
        self._drops = ThrottledCount(DROP_LOG_INTERVAL_SECONDS)
        self._oversized = ThrottledCount(DROP_LOG_INTERVAL_SECONDS)
        self._max_event_bytes = max_event_bytes
        """Read per event (a cheap getter), so a reloaded `listener.max_event_bytes` applies."""
        self._subscriptions: list[Any] = []
        self.accepting = True

    def subjects(self) -> list[str]:
        return [chat_subject(c.channel, event) for c in self._channels for event in EVENTS]

    async def start(self) -> None:
        for subject in dict.fromkeys(self.subjects()):  # two configs may share a subject
            self._subscriptions.append(await self._client.subscribe(subject, self._on_message))
        await self._confirm_subscribed()
        log.info(
            "listening on %d subjects for %d channel(s)",
            len(self._subscriptions),
            len(self._channels),
        )

    async def _confirm_subscribed(self) -> None:
        """Return only once the server has our subscriptions, so no early event is missed.

        A NATS server handles one connection's messages in order, so an answered request to
        ourselves proves every earlier SUB is in place (kryten-py exposes no flush()).
        """
        subject = f"_kryten_llm.ready.{uuid.uuid4().hex}"

        async def pong(request: dict[str, Any]) -> dict[str, Any]:
            return {"ok": True}

        sub = await self._client.subscribe_request_reply(subject, pong)
        try:
            await self._client.nats_request(subject, {}, timeout=CONFIRM_TIMEOUT_SECONDS)
        finally:
            await self._client.unsubscribe(sub)

    async def stop(self) -> None:
        """Stop taking new events (in-flight ones in the queue are still processed)."""
        self.accepting = False
        for sub in self._subscriptions:
            await self._client.unsubscribe(sub)
        self._subscriptions.clear()

    async def _on_message(self, msg: Any) -> None:
        if not self.accepting:
            return
        limit = self._max_event_bytes()
        if len(msg.data) > limit:  # the size rule: see `ListenerSettings`
            self._note_oversized(msg.subject, len(msg.data), limit)
            return
        event = InboundEvent(msg.subject, msg.data, time.monotonic())
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self._note_drop(event)

    @property
    def dropped(self) -> int:
        return self._drops.total

    @property
    def oversized(self) -> int:
        """Events dropped, before decoding, for being larger than `max_event_bytes`."""
        return self._oversized.total

    def _note_oversized(self, subject: str, size: int, limit: int) -> None:
        since = self._oversized.note()
        if since is not None:
            log.warning(
                "dropped %d event(s) larger than listener.max_event_bytes (%d) since the last "
                "report, %d in total; latest: %d bytes on %s",
                since,
                limit,
                self.oversized,
                size,
                subject,
            )

    def _note_drop(self, event: InboundEvent) -> None:
        """Drop the newest event; warn at most every few seconds, with a count, not per event."""
        since = self._drops.note(event.received_monotonic)
        if since is not None:
            log.warning(
                "inbound queue full (%d): dropped %d event(s) since last report, %d in total; "
                "latest on %s",
                self.queue.maxsize,
                since,
                self.dropped,
                event.subject,
            )
