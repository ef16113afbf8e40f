"""Durable memory: the memory record and its search, and the keeper against a real JetStream.

The keeper's KV tests run two keepers on their own connections to the session's real
nats-server, each on a private bucket prefix: what one writes and closes, the next one
started on the same prefix must find, exactly as a restarted service would.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from kryten_llm._bus import Client
from kryten_llm.config import Settings, build_settings
from kryten_llm.context import ContextManager, Exchange
from kryten_llm.memory.keeper import Keeper
from kryten_llm.memory.notes import Note, NoteBook, keywords, note_id
from kryten_llm.state import StateStore
from kryten_llm.types import ChannelKey, ChatLine
from tests.support.nats_server import NatsServer

ROOM = ChannelKey("cytu.be", "lounge")
DAY = 86_400.0
ODD_NAMES = ["a:b", "x.y", "with space", "ünïcødé 日本語 🎬", "*", ">", "=YQ", "z" * 200]
"""Names chat can throw at a key: separators, wildcards, our own escape, unicode, length."""


def note(
    ident: str, content: str, importance: int = 3, used: float = 0.0, user: str = "al"
) -> Note:
    return Note(
        id=ident,
        content=content,
        importance=importance,
        user=user,
        domain=ROOM.domain,
        channel=ROOM.channel,
        created=0.0,
        last_accessed=used,
    )


# --- the record and its search --------------------------------------------------------------


def test_keywords_are_case_folded_words_without_the_common_ones() -> None:
    assert keywords("The Kung-Fu movie, and ALICE's 2nd FAVOURITE!") == {
        "kung",
        "movie",
        "alice",
        "2nd",
        "favourite",
    }
    assert keywords("") == frozenset() and keywords("a an the of") == frozenset()


def test_search_ranks_by_matched_words_then_importance_then_recent_use() -> None:
    book = NoteBook()
    book.put(note("both", "alice likes kung fu movies", importance=1))
    book.put(note("one-hi", "alice is a moderator", importance=5))
    book.put(note("one-lo", "alice hates spoilers", importance=2, used=10 * DAY))
    book.put(note("one-lo-old", "alice owns a cat", importance=2, used=0.0))
    book.put(note("none", "bob likes trains", importance=5))
    found = book.search("what movies does alice like", 10, now=10 * DAY)
    assert [n.id for n in found] == ["both", "one-hi", "one-lo", "one-lo-old"]
    assert book.search("trains", 10, now=0.0, skip_authors=["AL"]) == []
    assert book.search("nothing matches", 10, now=0.0) == []


def test_eviction_takes_the_least_important_then_least_recently_used() -> None:
    book = NoteBook()
    book.put(note("keep-important", "x", importance=5, used=0.0))
    book.put(note("old", "x", importance=2, used=1.0))
    book.put(note("recent", "x", importance=2, used=9.0))
    assert [n.id for n in book.evict_over(2)] == ["old"]
    assert [n.id for n in book.evict_over(1)] == ["recent"]
    assert book.evict_over(1) == [] and len(book) == 1


def test_ids_are_short_the_same_memory_gives_the_same_id_and_a_taken_one_is_salted() -> None:
    first = note_id(ROOM, "Alice", "the sky is blue")
    assert len(first) == 8 and first == note_id(ROOM, "alice", "the sky is blue")
    assert first != note_id(ROOM, "alice", "the sky is blue", salt=1)
    settings = build_settings({}, "t")
    keeper = Keeper(settings, ContextManager(settings.context))
    once = keeper.remember(ROOM, "Alice", "the sky is blue", 1000)
    twice = keeper.remember(ROOM, "Alice", "the sky is blue", 2000)
    assert once.id == first and twice.id == note_id(ROOM, "alice", "the sky is blue", salt=1)


def test_a_room_keeps_its_bound_and_a_search_counts_a_use() -> None:
    settings = build_settings({"memory": {"max_per_channel": 3}}, "t")
    keeper = Keeper(settings, ContextManager(settings.context))
    low = keeper.remember(ROOM, "al", "low value fact", 1000, importance=1)
    for index in range(3):
        keeper.remember(ROOM, "al", f"fact number {index}", 2000 + index)
    assert len(keeper.book(ROOM)) == 3 and keeper.note(ROOM, low.id) is None
    found = keeper.recall(ROOM, "number", 5, at=50.0)
    assert len(found) == 3 and all(n.uses == 1 and n.last_accessed == 50.0 for n in found)


def test_prompt_memories_respect_count_characters_and_opt_outs() -> None:
    settings = build_settings({"memory": {"prompt_max": 2, "prompt_chars": 40}}, "t")
    keeper = Keeper(settings, ContextManager(settings.context))
    keeper.remember(ROOM, "al", "pizza " + "long " * 10, 1000, importance=5)
    keeper.remember(ROOM, "bo", "pizza is round", 1001)
    keeper.remember(ROOM, "cy", "pizza from naples", 1002)
    # The most important is too long for the budget; the next two (newest first) fit.
    assert [n.user for n in keeper.relevant(ROOM, "pizza?", at=2.0)] == ["cy", "bo"]
    keeper.opt_out(ROOM, "BO", at=3.0)
    assert [n.user for n in keeper.relevant(ROOM, "pizza?", at=4.0)] == ["cy"]


# --- the keeper on a real JetStream ------------------------------------------------------------


def settings_with(prefix: str, **overrides: Any) -> Settings:
    config: dict[str, Any] = {
        "cytube": [{"domain": "cytu.be", "channel": "lounge", "username": "bot"}],
        "state": {"bucket_prefix": prefix, "operation_timeout_seconds": 2.0},
        "memory": {"history_flush_seconds": 0.05},
    }
    return build_settings(config | overrides, "t")


async def connect(url: str) -> Client:
    client = Client(
        {
            "nats": {"servers": [url], "connect_timeout": 5},
            "channels": [{"domain": "cytu.be", "channel": "lounge"}],
        },
        logger=logging.getLogger("kryten"),
    )
    await client.connect()
    return client


@asynccontextmanager
async def keeper_on(url: str, settings: Settings, rooms: list[ChannelKey]) -> AsyncIterator[Keeper]:
    """A started keeper as the service runs one: own connection, store, context; closed after."""
    client = await connect(url)
    store = StateStore(settings.state, client)
    await store.start()
    keeper = Keeper(settings, ContextManager(settings.context), store)
    await keeper.start(rooms)
    try:
        yield keeper
    finally:
        await keeper.close()
        await store.close()
        await client.disconnect()


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


async def test_everything_kept_survives_a_restart(nats_server: NatsServer) -> None:
    settings = settings_with(prefix())
    async with keeper_on(nats_server.url, settings, [ROOM]) as keeper:
        assert keeper.store is not None and keeper.store.status.available
        kept = keeper.remember(ROOM, "Alice", "the projector bulb is new", 1000, "topic", 4)
        gone = keeper.remember(ROOM, "Alice", "to be forgotten", 1001)
        keeper.forget_note(ROOM, gone.id)
        keeper.set_persona(ROOM, "concise")
        keeper.opt_out(ROOM, "Mallory", at=2.0)
        keeper.opt_out(ROOM, "Oscar", at=2.0)
        keeper.opt_in(ROOM, "oscar")
        keeper.context.add_chat(ChatLine(ROOM.channel, ROOM.domain, "Bob", "hello room", 5))
        keeper.heard(ROOM)
        keeper.context.add_exchange(ROOM, "Bob", "how are you", "splendid")
        keeper.talked(ROOM, "Bob")
    async with keeper_on(nats_server.url, settings, [ROOM]) as again:
        assert again.note(ROOM, kept.id) == kept
        assert again.note(ROOM, gone.id) is None
        assert again.persona_of(ROOM) == "concise"
        assert again.is_opted_out(ROOM, "mallory") and not again.is_opted_out(ROOM, "oscar")
        assert again.context.chat_of(ROOM) == [("Bob", "hello room")]
        assert again.context.conversation_of(ROOM, "bob") == [Exchange("how are you", "splendid")]


async def test_odd_names_round_trip_as_users_and_rooms(nats_server: NatsServer) -> None:
    rooms = [ChannelKey("cytu.be", name) for name in ODD_NAMES]
    channels = [{"domain": "cytu.be", "channel": name, "username": "bot"} for name in ODD_NAMES]
    settings = settings_with(prefix(), cytube=channels)
    async with keeper_on(nats_server.url, settings, rooms) as keeper:
        for room in rooms:
            keeper.set_persona(room, "creative")
            for name in ODD_NAMES:
                keeper.opt_out(room, name, at=1.0)
            keeper.remember(room, ODD_NAMES[3], f"odd {room.channel}", 1000)
    async with keeper_on(nats_server.url, settings, rooms) as again:
        for room in rooms:
            assert again.persona_of(room) == "creative"
            assert again.opted_out(room) == {name.lower() for name in ODD_NAMES}
            assert [n.content for n in again.book(room).all()] == [f"odd {room.channel}"]


async def test_two_writers_using_one_memory_at_once_lose_no_use(nats_server: NatsServer) -> None:
    """Two replicas count uses of the same memory concurrently: KV's count has all of them."""
    settings = settings_with(prefix())
    async with keeper_on(nats_server.url, settings, [ROOM]) as first:
        shared = first.remember(ROOM, "al", "shared popcorn fact", 1000)
        assert first.writer is not None and await first.writer.drain(5.0)
        async with keeper_on(nats_server.url, settings, [ROOM]) as second:
            assert second.note(ROOM, shared.id) == shared
            rounds = 15
            for index in range(rounds):
                for keeper in (first, second):
                    keeper.recall(ROOM, "popcorn", 1, at=float(index))
                    keeper.flush()  # each use is its own compare-and-set, racing the other's
            assert second.writer is not None
            drained = await asyncio.gather(first.writer.drain(10.0), second.writer.drain(10.0))
            assert drained == [True, True]
            assert first.writer.failed == 0 and second.writer.failed == 0
    async with keeper_on(nats_server.url, settings, [ROOM]) as reader:
        stored = reader.note(ROOM, shared.id)
        assert stored is not None and stored.uses == 2 * rounds


async def test_forget_me_and_reset_all_remove_what_kv_holds(nats_server: NatsServer) -> None:
    settings = settings_with(prefix())
    other = ChannelKey("cytu.be", "other")
    async with keeper_on(nats_server.url, settings, [ROOM]) as keeper:
        keeper.remember(ROOM, "Alice", "alice fact", 1000)
        bob_note = keeper.remember(ROOM, "Bob", "bob fact", 1001)
        for user in ("Alice", "Bob"):
            keeper.context.add_chat(ChatLine(ROOM.channel, ROOM.domain, user, f"{user} here", 5))
            keeper.heard(ROOM)
            keeper.context.add_exchange(ROOM, user, "q", "a")
            keeper.talked(ROOM, user)
        keeper.flush()
        forgotten = keeper.forget_user(ROOM, "ALICE")
        assert forgotten.memories == 1 and forgotten.conversation
    async with keeper_on(nats_server.url, settings, [ROOM]) as again:
        assert [n.id for n in again.book(ROOM).all()] == [bob_note.id]
        assert again.context.chat_of(ROOM) == [("Bob", "Bob here")]
        assert again.context.conversation_of(ROOM, "alice") == []
        assert again.context.conversation_of(ROOM, "bob") == [Exchange("q", "a")]
        again.forget_room(ROOM)
        assert again.context.chat_of(other) == []
    async with keeper_on(nats_server.url, settings, [ROOM]) as after_reset:
        assert after_reset.context.chat_of(ROOM) == []
        assert after_reset.context.conversation_of(ROOM, "bob") == []
        assert after_reset.note(ROOM, bob_note.id) is not None  # memories are not history


@pytest.mark.parametrize("persist", [True, False])
async def test_history_persistence_can_be_switched_off(
    nats_server: NatsServer, persist: bool
) -> None:
    settings = settings_with(prefix(), memory={"persist_history": persist})
    async with keeper_on(nats_server.url, settings, [ROOM]) as keeper:
        keeper.context.add_chat(ChatLine(ROOM.channel, ROOM.domain, "Bob", "hello", 5))
        keeper.heard(ROOM)
    async with keeper_on(nats_server.url, settings, [ROOM]) as again:
        assert again.context.chat_of(ROOM) == ([("Bob", "hello")] if persist else [])
