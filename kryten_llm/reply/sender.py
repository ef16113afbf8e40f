"""Put reply parts into chat: paced per channel, never a command, or only logged in dry run.

kryten-py's own throttle is one lock for the whole process (1 s + jitter between any two
sends), which would make one channel's reply wait for another's. We switch it off and pace
each room (`ChannelKey`: same-named channels on two servers are two rooms) with a token bucket
shaped like CyTube's antiflood instead, and keep the parts of one reply together and in order
with `split_delay_seconds` between them. A reply goes back where its line came from: the
line's own domain and channel, as the bridge sent them.

`Sender` is what the pipeline needs from whatever puts parts into chat: `ChatSender` here for
the service, the replay's recorder for `kryten-llm replay`. Both refuse the same parts
(`unsafe_part`), so a replay predicts exactly what would reach chat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kryten_llm.config import MessageProcessingSettings
from kryten_llm.redact import has_secret
from kryten_llm.reply.guard import is_command_like
from kryten_llm.types import ChannelKey, ChatLine

log = logging.getLogger(__name__)

SendChat = Callable[[str, str, str], Awaitable[object]]
"""(channel, domain, text) -> anything; in production a wrapper around client.send_chat."""


class Sender(Protocol):
    """Puts the parts of one reply into a channel's chat (or only pretends to, in dry run)."""

    @property
    def dry_run(self) -> bool:
        """True when nothing reaches chat, so the bot's lines will not come back as chat."""
        ...

    async def send(self, to: ChatLine, parts: Sequence[str], correlation_id: str = "") -> list[str]:
        """Post `parts` in order in the room `to` came from; return those posted (or would be)."""
        ...


def unsafe_part(part: str, command_prefixes: Sequence[str]) -> bool:
    """True for a part that must never reach chat: blank, one CyTube could run as a command,
    or one holding a configured secret or a key-shaped string.

    The last line of defence, independent of the formatter and guard.
    """
    return not part.strip() or is_command_like(part, command_prefixes) or has_secret(part)


class TokenBucket:
    """`burst` sends at once, refilled at `rate_per_second`; `take()` waits for a token."""

    def __init__(self, burst: int, rate_per_second: float) -> None:
        self.burst = burst
        self.rate = rate_per_second
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self) -> None:
        self._refill()
        while self.tokens < 1.0:
            await asyncio.sleep((1.0 - self.tokens) / self.rate)
            self._refill()
        self.tokens -= 1.0


@dataclass
class _ChannelOutbox:
    lock: asyncio.Lock
    bucket: TokenBucket


class ChatSender:
    """Sends (or, in dry run, logs) the parts of a reply in one channel."""

    def __init__(
        self, send_chat: SendChat, settings: MessageProcessingSettings, dry_run: bool
    ) -> None:
        self._send_chat = send_chat
        self.settings = settings
        self.dry_run = dry_run
        self._outboxes: dict[ChannelKey, _ChannelOutbox] = {}

    def reconfigure(self, settings: MessageProcessingSettings, dry_run: bool) -> None:
        self.settings = settings
        self.dry_run = dry_run
        self._outboxes.clear()  # new pacing applies from the next reply

    def _outbox(self, key: ChannelKey) -> _ChannelOutbox:
        box = self._outboxes.get(key)
        if box is None:
            box = _ChannelOutbox(
                asyncio.Lock(),
                TokenBucket(self.settings.send_burst, self.settings.send_rate_per_second),
            )
            self._outboxes[key] = box
        return box

    async def send(self, to: ChatLine, parts: Sequence[str], correlation_id: str = "") -> list[str]:
        """Publish `parts` in order; return those actually published (or logged, in dry run).

        A part that could run as a CyTube command is never handed to the bus (`unsafe_part`).
        """
        sent: list[str] = []
        channel, domain = to.channel, to.domain
        box = self._outbox(to.key)
        async with box.lock:
            for index, part in enumerate(parts):
                if unsafe_part(part, self.settings.command_prefixes):
                    # The log context already carries the correlation id.
                    log.error("refusing to publish unsafe part %d in %s", index, channel)
                    continue
                if sent and self.settings.split_delay_seconds:
                    await asyncio.sleep(self.settings.split_delay_seconds)
                await box.bucket.take()
                if self.dry_run:
                    log.info("[dry-run] would say in %s/%s: %s", domain, channel, part)
                else:
                    await self._send_chat(channel, domain, part)
                sent.append(part)
        return sent
