"""The keeper: what the bot keeps across restarts, mirrored in memory and written behind to KV.

Decisions are synchronous and in event order (the pipeline's rule), and a KV call is neither,
so every durable thing lives twice: a mirror in this process, which `decide()` reads and
changes at once (an opt-out applies to the very next line, a switched persona to the next
reply, and a replay decides exactly as a live run), and the KV copy, which the `StateWriter`
brings up to date in the same order, off the event path. The mirrors are filled from KV once
at start (`start`), before any event is heard.

Buckets (`state/` names them `<prefix><purpose>`), keys by `StateKey`:

- `memory`: `room.<domain>.<channel>.note.<id>` -> `Note` (one key per memory, so two writers
  touching one memory meet in a compare-and-set, not in a whole-room rewrite);
- `personas`: `room.<domain>.<channel>` -> the persona name switched to;
- `privacy`: `user.<domain>.<channel>.<name>` -> `OptOut`, one key per opted-out user;
- `history`: `room.<domain>.<channel>.chat` -> the room's recent chat, and
  `user.<domain>.<channel>.<name>.talk` -> the exchanges with one user, as (said, answered).

History changes with every chat line, so it is written in batches: changed rooms and users
are marked, and every `memory.history_flush_seconds` (and once on a clean stop) their current
state is written. Memory uses (recall, a prompt) are batched the same way and added to KV's
count with a compare-and-set, so replicas never lose each other's counts. Without a store
(replay, tests) the mirrors work alone.

Opted-out users are a privacy promise, so that set is never evicted; it is bounded by
`OPT_OUTS_PER_ROOM_MAX`, past which opting out is refused (and said so), not forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from kryten_llm.config import Settings
from kryten_llm.context import ContextManager, Exchange
from kryten_llm.memory.notes import Category, Note, NoteBook, note_id
from kryten_llm.memory.writer import StateWriter, Write
from kryten_llm.state import Bucket, StateKey, StateStore, StateValueError
from kryten_llm.types import ChannelKey

log = logging.getLogger(__name__)

NOTES_PURPOSE = "memory"
PERSONAS_PURPOSE = "personas"
PRIVACY_PURPOSE = "privacy"
HISTORY_PURPOSE = "history"
NOTE_PART = "note"
CHAT_PART = "chat"
TALK_PART = "talk"
OPT_OUTS_PER_ROOM_MAX = 100_000
CLOSE_TIMEOUT_SECONDS = 5.0
"""How long a stop waits for the last state writes (keep it inside the stop timeout)."""
LOAD_OVERSHOOT = 2
"""Memories read per room at start, as a multiple of the bound (replicas may overshoot it)."""

Pair = tuple[str, str]
T = TypeVar("T")


class OptOut(BaseModel):
    """An opted-out user, as stored: their name as spelled, and since when (chat time)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user: str
    since: float


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `forget_user` removed, for the answer."""

    memories: int
    conversation: bool


class Keeper:
    """Memories, personas, opt-outs and history of every room (see the module docstring)."""

    def __init__(
        self, settings: Settings, context: ContextManager, store: StateStore | None = None
    ) -> None:
        self.settings = settings
        self.context = context
        self.store = store
        self._books: dict[ChannelKey, NoteBook] = {}
        self._opted_out: dict[ChannelKey, set[str]] = {}
        self._personas: dict[ChannelKey, str] = {}
        self._dirty_chat: set[ChannelKey] = set()
        self._dirty_talk: set[tuple[ChannelKey, str]] = set()
        self._uses: dict[tuple[ChannelKey, str], int] = {}
        self._flush_task: asyncio.Task[None] | None = None
        self.writer: StateWriter | None = None
        if store is not None:
            self.writer = StateWriter(settings.memory.write_queue_size)
            self._notes = store.bucket(NOTES_PURPOSE, Note)
            self._persona_bucket = store.bucket(PERSONAS_PURPOSE, str)
            self._privacy = store.bucket(PRIVACY_PURPOSE, OptOut)
            self._history = store.bucket(HISTORY_PURPOSE, list[Pair])
        self._history_on = self.writer is not None and settings.memory.persist_history
        """History is written behind (there is a store, and the settings want it)."""

    def reconfigure(self, settings: Settings) -> None:
        """New bounds apply now: rooms over the memory bound give up their least valued."""
        self.settings = settings
        self._history_on = self.writer is not None and settings.memory.persist_history
        for room, book in self._books.items():
            for note in book.evict_over(settings.memory.max_per_channel):
                self._delete_note(room, note.id)

    # --- start and stop ---------------------------------------------------------------------

    async def start(self, rooms: Iterable[ChannelKey]) -> None:
        """Fill the mirrors from KV (before any event is heard), then start writing behind."""
        if self.store is None or self.writer is None:
            return
        for room in rooms:
            await self._load(room)
        self.writer.start()
        self._flush_task = asyncio.create_task(self._flush_loop(), name="history-flush")
        notes = sum(len(book) for book in self._books.values())
        opted = sum(len(names) for names in self._opted_out.values())
        where = "JetStream KV" if self.store.status.available else "memory only"
        log.info(
            "memory (%s): %d memories, %d opt-out(s), %d persona choice(s) loaded",
            where,
            notes,
            opted,
            len(self._personas),
        )

    async def close(self) -> None:
        """Write what changed since the last flush, and wait (bounded) for every write."""
        task, self._flush_task = self._flush_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.writer is not None:
            self.flush()
            await self.writer.close(CLOSE_TIMEOUT_SECONDS)

    async def _load(self, room: ChannelKey) -> None:
        persona = await self._read(self._persona_bucket, StateKey.for_room(room))
        if persona:
            self._personas[room] = persona
        for key in await self._privacy.keys(StateKey.users_in(room), OPT_OUTS_PER_ROOM_MAX):
            if len(key.parts) == 4:
                self._opted_out.setdefault(room, set()).add(key.parts[3])
        book = self.book(room)
        limit = self.settings.memory.max_per_channel * LOAD_OVERSHOOT
        for key in await self._notes.keys(StateKey.for_room(room, NOTE_PART), limit):
            note = await self._read(self._notes, key)
            if note is not None:
                book.put(note)
        for note in book.evict_over(self.settings.memory.max_per_channel):
            self._delete_note(room, note.id)
        if self.settings.memory.persist_history:
            await self._load_history(room)

    async def _load_history(self, room: ChannelKey) -> None:
        chat = await self._read(self._history, StateKey.for_room(room, CHAT_PART))
        if chat:
            self.context.restore_chat(room, [(user, text) for user, text in chat])
        users = self.settings.context.conversations_per_channel
        for key in await self._history.keys(StateKey.users_in(room), users):
            if len(key.parts) != 5 or key.parts[4] != TALK_PART:
                continue
            pairs = await self._read(self._history, key)
            if pairs and not self.is_opted_out(room, key.parts[3]):
                exchanges = [Exchange(said, answered) for said, answered in pairs]
                self.context.restore_conversation(room, key.parts[3], exchanges)

    @staticmethod
    async def _read(bucket: Bucket[T], key: StateKey) -> T | None:
        """A value, or None for one this version cannot read (logged, left in place)."""
        try:
            return await bucket.get(key)
        except StateValueError as exc:
            log.warning("memory: skipping unreadable %s: %s", key, exc)
            return None

    # --- opt-outs -----------------------------------------------------------------------------

    def is_opted_out(self, room: ChannelKey, username: str) -> bool:
        """Checked for every chat line, so it is one dict and one set lookup."""
        names = self._opted_out.get(room)
        return names is not None and username.lower() in names

    def opted_out(self, room: ChannelKey) -> frozenset[str]:
        return frozenset(self._opted_out.get(room, ()))

    def opt_out(self, room: ChannelKey, username: str, at: float) -> bool:
        """Stop answering and remembering a user; what was kept of their talk goes now.

        False when the room's opt-out list is full (the caller must say so).
        """
        names = self._opted_out.setdefault(room, set())
        name = username.lower()
        if name not in names and len(names) >= OPT_OUTS_PER_ROOM_MAX:
            return False
        names.add(name)
        self.context.forget_user(room, username)
        self._chat_changed(room)
        self._forget_talk(room, name)
        self._submit(
            f"opt-out in {room}",
            lambda: self._privacy.put(
                StateKey.for_user(room, name), OptOut(user=username, since=at)
            ),
        )
        return True

    def opt_in(self, room: ChannelKey, username: str) -> bool:
        """Answer and remember the user again; False if they had not opted out."""
        names = self._opted_out.get(room)
        name = username.lower()
        if names is None or name not in names:
            return False
        names.discard(name)
        self._submit(
            f"opt-in in {room}", lambda: self._privacy.delete(StateKey.for_user(room, name))
        )
        return True

    # --- personas -----------------------------------------------------------------------------

    def persona_of(self, room: ChannelKey) -> str | None:
        """The persona switched to in this room, if any (it may since have left the config)."""
        return self._personas.get(room)

    def set_persona(self, room: ChannelKey, name: str) -> None:
        self._personas[room] = name
        self._submit(
            f"persona of {room}",
            lambda: self._persona_bucket.put(StateKey.for_room(room), name),
        )

    # --- memories -----------------------------------------------------------------------------

    def book(self, room: ChannelKey) -> NoteBook:
        book = self._books.get(room)
        if book is None:
            book = self._books[room] = NoteBook()
        return book

    def remember(
        self,
        room: ChannelKey,
        username: str,
        content: str,
        time_ms: int,
        category: Category = "fact",
        importance: int = 3,
    ) -> Note:
        """Store a memory now (written behind); the room's least valued go past the bound."""
        book = self.book(room)
        salt = 0
        ident = note_id(room, username, content)
        while ident in book:
            salt += 1
            ident = note_id(room, username, content, salt)
        at = time_ms / 1000.0
        note = Note(
            id=ident,
            content=content,
            category=category,
            importance=importance,
            user=username,
            domain=room.domain,
            channel=room.channel,
            created=at,
            last_accessed=at,
        )
        book.put(note)
        key = StateKey.for_room(room, NOTE_PART, ident)
        self._submit(
            f"memory {ident} in {room}",
            lambda: self._notes.update(key, lambda there: there if there is not None else note),
        )
        for evicted in book.evict_over(self.settings.memory.max_per_channel):
            self._delete_note(room, evicted.id)
        return note

    def note(self, room: ChannelKey, ident: str) -> Note | None:
        return self.book(room).get(ident)

    def forget_note(self, room: ChannelKey, ident: str) -> Note | None:
        note = self.book(room).remove(ident)
        if note is not None:
            self._delete_note(room, ident)
        return note

    def recall(self, room: ChannelKey, text: str, limit: int, at: float) -> list[Note]:
        """The best matches for `text`, each counted as used now."""
        found = self.book(room).search(text, limit, at, self._opted_out.get(room, ()))
        return [self._use(room, note.id, at) or note for note in found]

    def relevant(self, room: ChannelKey, text: str, at: float) -> list[Note]:
        """The memories to put into a prompt answering `text`: the best matches within the
        configured count and characters, none written by an opted-out user."""
        memory = self.settings.memory
        book = self._books.get(room)
        if book is None or not len(book) or memory.prompt_max == 0:
            return []
        found = book.search(text, len(book), at, self._opted_out.get(room, ()))
        chosen: list[Note] = []
        room_left = memory.prompt_chars
        for note in found:
            if len(chosen) == memory.prompt_max:
                break
            if len(note.content) > room_left:
                continue  # a shorter, less relevant one may still fit
            room_left -= len(note.content)
            chosen.append(self._use(room, note.id, at) or note)
        return chosen

    def _use(self, room: ChannelKey, ident: str, at: float) -> Note | None:
        touched = self.book(room).touch(ident, at)
        if touched is not None and self.writer is not None:
            self._uses[(room, ident)] = self._uses.get((room, ident), 0) + 1
        return touched

    def _delete_note(self, room: ChannelKey, ident: str) -> None:
        self._uses.pop((room, ident), None)
        key = StateKey.for_room(room, NOTE_PART, ident)
        self._submit(f"forget memory {ident} in {room}", lambda: self._notes.delete(key))

    # --- history ------------------------------------------------------------------------------

    def heard(self, room: ChannelKey) -> None:
        """The room's chat changed (called for every remembered line: a set insert)."""
        if self._history_on:
            self._dirty_chat.add(room)

    def talked(self, room: ChannelKey, username: str) -> None:
        """An exchange with the user was remembered."""
        if self._history_on:
            self._dirty_talk.add((room, username.lower()))

    def forget_conversation(self, room: ChannelKey, username: str) -> bool:
        """`!chat reset`: forget the exchanges with one user; True if there were any."""
        had = self.context.forget_conversation(room, username)
        self._forget_talk(room, username.lower())
        return had

    def forget_room(self, room: ChannelKey) -> None:
        """`!chat reset all`: the room's chat and every conversation in it, here and in KV."""
        self.context.forget_room(room)
        self._dirty_chat.discard(room)
        self._dirty_talk = {(r, user) for r, user in self._dirty_talk if r != room}
        if self.writer is not None:
            self._submit(f"reset of {room}", lambda: self._erase_history(room))

    async def _erase_history(self, room: ChannelKey) -> None:
        await self._history.delete(StateKey.for_room(room, CHAT_PART))
        limit = self.settings.context.conversations_per_channel * LOAD_OVERSHOOT
        for key in await self._history.keys(StateKey.users_in(room), limit):
            await self._history.delete(key)

    def forget_user(self, room: ChannelKey, username: str) -> Forgotten:
        """`!chat forget me`: their chat lines, conversation and the memories they wrote."""
        had = self.context.conversation_of(room, username) != []
        self.context.forget_user(room, username)
        self._chat_changed(room)
        self._forget_talk(room, username.lower())
        notes = self.book(room).by_author(username)
        for note in notes:
            self.forget_note(room, note.id)
        if self.writer is not None:
            self._submit(
                f"forget memories by a user in {room}", lambda: self._erase_notes_by(room, username)
            )
        return Forgotten(len(notes), had)

    async def _erase_notes_by(self, room: ChannelKey, username: str) -> None:
        """Memories by the user that only KV has (written by another replica)."""
        limit = self.settings.memory.max_per_channel * LOAD_OVERSHOOT
        for key in await self._notes.keys(StateKey.for_room(room, NOTE_PART), limit):
            note = await self._read(self._notes, key)
            if note is not None and note.by(username):
                await self._notes.delete(key)

    def _chat_changed(self, room: ChannelKey) -> None:
        if self._history_on:
            self._dirty_chat.add(room)

    def _forget_talk(self, room: ChannelKey, name: str) -> None:
        self._dirty_talk.discard((room, name))
        key = StateKey.for_user(room, name, TALK_PART)
        self._submit(f"forget a conversation in {room}", lambda: self._history.delete(key))

    # --- writing behind -----------------------------------------------------------------------

    def flush(self) -> None:
        """Queue the current state of every room and user whose history or uses changed."""
        if self.writer is None:
            return
        for room in self._dirty_chat:
            lines = self.context.chat_of(room)
            self._submit_pairs(f"chat of {room}", StateKey.for_room(room, CHAT_PART), lines)
        for room, name in self._dirty_talk:
            pairs = [
                (e.user_message, e.bot_reply) for e in self.context.conversation_of(room, name)
            ]
            self._submit_pairs(
                f"a conversation in {room}", StateKey.for_user(room, name, TALK_PART), pairs
            )
        for (room, ident), count in self._uses.items():
            note = self.book(room).get(ident)
            if note is not None:
                self._submit_use(room, note, count)
        self._dirty_chat.clear()
        self._dirty_talk.clear()
        self._uses.clear()

    def _submit_pairs(self, what: str, key: StateKey, pairs: list[Pair]) -> None:
        if pairs:
            self._submit(what, lambda: self._history.put(key, pairs))
        else:
            self._submit(what, lambda: self._history.delete(key))

    def _submit_use(self, room: ChannelKey, note: Note, count: int) -> None:
        """Add this process's uses to KV's count: a compare-and-set, so none is lost."""

        def add(there: Note | None) -> Note | None:
            if there is None:
                return None  # forgotten meanwhile: stays forgotten
            seen = max(there.last_accessed, note.last_accessed)
            return there.model_copy(update={"uses": there.uses + count, "last_accessed": seen})

        key = StateKey.for_room(room, NOTE_PART, note.id)
        self._submit(f"use of memory {note.id}", lambda: self._notes.update(key, add))

    def _submit(self, what: str, write: Write) -> None:
        if self.writer is not None:
            self.writer.submit(what, write)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.memory.history_flush_seconds)
            try:
                self.flush()
            except Exception:  # a bug in one flush must not end the flushing
                log.exception("memory: flushing history failed")
