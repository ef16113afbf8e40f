"""What the bot remembers of each room: the video playing, recent chat, its talks with users.

Everything is keyed by room (`ChannelKey`: domain and channel) so two channels never mix, not
even two of the same name on different servers, and every collection is bounded:
chat history is a fixed-size deque, and per-user conversations are capped in count (LRU) and
in length, so memory does not grow with the number of users ever seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client as NatsClient

from kryten_llm.config import ChannelSettings, ContextSettings
from kryten_llm.events import MalformedEvent, parse_media
from kryten_llm.types import ChannelKey, ChatLine, MediaChange

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One question to the bot and its answer."""

    user_message: str
    bot_reply: str


@dataclass
class ChannelContext:
    """The remembered state of one channel."""

    video: MediaChange | None = None
    chat: deque[tuple[str, str]] = field(default_factory=deque)
    conversations: OrderedDict[str, deque[Exchange]] = field(default_factory=OrderedDict)


@dataclass(frozen=True, slots=True)
class ContextSnapshot:
    """An immutable view handed to the prompt builder (later chat cannot change it)."""

    video: MediaChange | None
    chat: tuple[tuple[str, str], ...]
    conversation: tuple[Exchange, ...]


class ContextManager:
    """Per-channel memory, fed by the dispatcher and read by the prompt builder."""

    def __init__(self, settings: ContextSettings) -> None:
        self.settings = settings
        self._channels: dict[ChannelKey, ChannelContext] = {}

    def reconfigure(self, settings: ContextSettings) -> None:
        """Apply new sizes while keeping what is remembered (trimmed if the new size is less)."""
        self.settings = settings
        for ctx in self._channels.values():
            ctx.chat = deque(ctx.chat, maxlen=settings.chat_history_size)
            for user, history in list(ctx.conversations.items()):
                ctx.conversations[user] = deque(history, maxlen=settings.conversation_exchanges)
            self._trim_conversations(ctx.conversations)

    def _channel(self, channel: ChannelKey) -> ChannelContext:
        ctx = self._channels.get(channel)
        if ctx is None:
            ctx = ChannelContext(chat=deque(maxlen=self.settings.chat_history_size))
            self._channels[channel] = ctx
        return ctx

    def add_chat(self, line: ChatLine) -> None:
        self._channel(line.key).chat.append((line.username, line.text))

    def add_bot_line(self, channel: ChannelKey, bot_name: str, text: str) -> None:
        self._channel(channel).chat.append((bot_name, text))

    def set_video(self, media: MediaChange) -> None:
        self._channel(media.key).video = media

    def video(self, channel: ChannelKey) -> MediaChange | None:
        return self._channel(channel).video

    def add_exchange(
        self, channel: ChannelKey, username: str, user_message: str, reply: str
    ) -> None:
        conversations = self._channel(channel).conversations
        key = username.lower()
        history = conversations.pop(key, None)
        if history is None:
            history = deque(maxlen=self.settings.conversation_exchanges)
        history.append(Exchange(user_message, reply))
        conversations[key] = history
        self._trim_conversations(conversations)

    def _trim_conversations(self, conversations: OrderedDict[str, deque[Exchange]]) -> None:
        while len(conversations) > self.settings.conversations_per_channel:
            conversations.popitem(last=False)

    # --- what durable history reads and restores, and what privacy commands forget ----------

    def chat_of(self, channel: ChannelKey) -> list[tuple[str, str]]:
        """The room's remembered chat, oldest first (a copy)."""
        ctx = self._channels.get(channel)
        return list(ctx.chat) if ctx is not None else []

    def conversation_of(self, channel: ChannelKey, username: str) -> list[Exchange]:
        """The remembered exchanges with one user, oldest first (a copy)."""
        ctx = self._channels.get(channel)
        if ctx is None:
            return []
        return list(ctx.conversations.get(username.lower(), ()))

    def restore_chat(self, channel: ChannelKey, lines: list[tuple[str, str]]) -> None:
        """Put remembered chat back (at start, from durable state), before anything new."""
        ctx = self._channel(channel)
        ctx.chat = deque([*lines, *ctx.chat], maxlen=self.settings.chat_history_size)

    def restore_conversation(
        self, channel: ChannelKey, username: str, exchanges: list[Exchange]
    ) -> None:
        """Put one user's remembered exchanges back (at start), within the configured bounds."""
        if not exchanges:
            return
        conversations = self._channel(channel).conversations
        key = username.lower()
        fresh = conversations.pop(key, ())
        conversations[key] = deque(
            [*exchanges, *fresh], maxlen=self.settings.conversation_exchanges
        )
        self._trim_conversations(conversations)

    def forget_conversation(self, channel: ChannelKey, username: str) -> bool:
        """Forget the exchanges with one user (`!chat reset`); True if there were any."""
        ctx = self._channels.get(channel)
        return ctx is not None and ctx.conversations.pop(username.lower(), None) is not None

    def forget_user(self, channel: ChannelKey, username: str) -> None:
        """Forget a user entirely: their exchanges and every chat line they wrote."""
        self.forget_conversation(channel, username)
        ctx = self._channels.get(channel)
        if ctx is None:
            return
        name = username.lower()
        kept = [(user, text) for user, text in ctx.chat if user.lower() != name]
        ctx.chat = deque(kept, maxlen=self.settings.chat_history_size)

    def forget_room(self, channel: ChannelKey) -> list[str]:
        """Forget the room's chat and every conversation (`!chat reset all`); the video stays.

        Returns the users whose conversations were forgotten, for durable state to follow.
        """
        ctx = self._channels.get(channel)
        if ctx is None:
            return []
        users = list(ctx.conversations)
        ctx.chat.clear()
        ctx.conversations.clear()
        return users

    def snapshot(self, channel: ChannelKey, username: str) -> ContextSnapshot:
        """The context for a reply to `username`, taken before its message joins the history.

        Taken at decision time so a slow reply is not written against chat that came later,
        and so the message being answered (carried separately) does not appear twice.
        """
        ctx = self._channel(channel)
        conversation = tuple(ctx.conversations.get(username.lower(), ()))
        return ContextSnapshot(video=ctx.video, chat=tuple(ctx.chat), conversation=conversation)


def playlist_bucket(channel: str) -> str:
    """The bridge's KV bucket for a channel's playlist (raw channel case, no domain)."""
    return f"kryten_{channel}_playlist"


async def load_current_media(
    connection: NatsClient, channel: ChannelSettings, timeout_seconds: float
) -> MediaChange | None:
    """The video playing now, from the bridge's `kryten_{channel}_playlist` KV key `current`.

    None when there is none yet or it cannot be read: changeMedia events fill it in later.
    """
    bucket = playlist_bucket(channel.channel)
    try:
        async with asyncio.timeout(timeout_seconds):
            kv = await connection.jetstream().key_value(bucket)
            entry = await kv.get("current")
    except (TimeoutError, nats.errors.Error) as exc:
        log.info("no current video from %s (%s)", bucket, type(exc).__name__)
        return None
    try:
        payload = json.loads(entry.value or b"null")
        envelope = {"channel": channel.channel, "domain": channel.domain, "payload": payload}
        return parse_media(envelope)
    except (ValueError, RecursionError, MalformedEvent) as exc:  # RecursionError: deep JSON
        log.warning("ignoring unreadable current video in %s: %s", bucket, type(exc).__name__)
        return None
