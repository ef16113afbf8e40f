"""Memories chat asked the bot to keep: the record, keyword search, and one room's book of them.

A memory (`Note`) is untrusted chat text with who wrote it, where, when, how important it is
(1-5) and when it was last used. Search is by keywords, not embeddings: the words of a query
(letters and digits, case-folded, three characters or more, common words left out) against
each memory's words, ranked by how many match, then importance, then how recently the memory
was used. Everything here is pure and runs in time linear in its input; `NoteBook` holds one
room's memories in this process (the mirror of what KV holds, see `keeper.py`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from kryten_llm.types import ChannelKey

Category = Literal["fact", "preference", "topic"]
CATEGORIES: tuple[Category, ...] = ("fact", "preference", "topic")
DEFAULT_IMPORTANCE = 3
ID_CHARS = 8
QUERY_MAX_CHARS = 2000
"""Longest text searched for keywords (a chat line is far shorter; this bounds the work)."""
MIN_WORD_CHARS = 3
DAY_SECONDS = 86_400.0

RELEVANCE_WEIGHT = 3.0
IMPORTANCE_WEIGHT = 0.2
RECENCY_WEIGHT = 0.5
"""A match on every word counts most; importance (1-5) next; recent use breaks near ties."""

_WORD = re.compile(r"[^\W_]+")
STOPWORDS = frozenset(
    """the and for are but not you your yours with this that these those from have has had was
    were will would can could should about what when where which who whom why how all any
    each its it's our ours their them they she her his him there here then than too very just
    also into onto over under again once out off only own same some such more most other
    does did doing done being been get got let lets like really say said says""".split()  # noqa: SIM905
)


class Note(BaseModel):
    """One memory as stored in KV (JSON) and kept in the room's book."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    content: str
    category: Category = "fact"
    importance: Annotated[int, Field(ge=1, le=5)] = DEFAULT_IMPORTANCE
    user: str
    """Who asked for it, as they spell their name."""
    domain: str
    channel: str
    created: float
    """Chat time (seconds since the epoch) of the line that stored it."""
    last_accessed: float
    uses: int = 0
    """Times it was recalled or put into a prompt."""

    def by(self, username: str) -> bool:
        return self.user.lower() == username.lower()


def keywords(text: str) -> frozenset[str]:
    """The words a text is searched by (see the module docstring)."""
    words = _WORD.findall(text[:QUERY_MAX_CHARS].casefold())
    return frozenset(w for w in words if len(w) >= MIN_WORD_CHARS and w not in STOPWORDS)


def note_id(room: ChannelKey, username: str, content: str, salt: int = 0) -> str:
    """A short id from what the memory is (room, author, words), not from when: a replay of
    a chat gives the ids the live run gave. The caller salts it when the id is taken."""
    seed = "\0".join([str(room), username.lower(), content, str(salt)])
    digest = hashlib.blake2b(seed.encode("utf-8", "surrogatepass"), digest_size=8)
    return digest.hexdigest()[:ID_CHARS]


def _score(note: Note, matched: int, asked: int, now: float) -> float:
    age_days = max(0.0, now - note.last_accessed) / DAY_SECONDS
    return (
        RELEVANCE_WEIGHT * matched / asked
        + IMPORTANCE_WEIGHT * note.importance
        + RECENCY_WEIGHT / (1.0 + age_days)
    )


class NoteBook:
    """One room's memories: add, find, touch, remove, and evict past a bound."""

    def __init__(self) -> None:
        self._notes: dict[str, Note] = {}
        self._words: dict[str, frozenset[str]] = {}

    def __len__(self) -> int:
        return len(self._notes)

    def __contains__(self, note_id: str) -> bool:
        return note_id in self._notes

    def get(self, note_id: str) -> Note | None:
        return self._notes.get(note_id)

    def all(self) -> list[Note]:
        return list(self._notes.values())

    def put(self, note: Note) -> None:
        self._notes[note.id] = note
        self._words[note.id] = keywords(note.content)

    def remove(self, note_id: str) -> Note | None:
        self._words.pop(note_id, None)
        return self._notes.pop(note_id, None)

    def by_author(self, username: str) -> list[Note]:
        return [note for note in self._notes.values() if note.by(username)]

    def touch(self, note_id: str, at: float) -> Note | None:
        """Count one use now; the updated memory (None if there is no such memory)."""
        note = self._notes.get(note_id)
        if note is None:
            return None
        touched = note.model_copy(
            update={"last_accessed": max(note.last_accessed, at), "uses": note.uses + 1}
        )
        self._notes[note_id] = touched
        return touched

    def evict_over(self, limit: int) -> list[Note]:
        """Remove memories past `limit`: the least important, least recently used first."""
        excess = len(self._notes) - limit
        if excess <= 0:
            return []
        order = sorted(
            self._notes.values(), key=lambda n: (n.importance, n.last_accessed, n.created, n.id)
        )
        return [note for note in order[:excess] if self.remove(note.id) is not None]

    def search(
        self, text: str, limit: int, now: float, skip_authors: Iterable[str] = ()
    ) -> list[Note]:
        """The memories best matching `text`'s keywords; none when nothing matches."""
        asked = keywords(text)
        if not asked or limit <= 0:
            return []
        skipped = {name.lower() for name in skip_authors}
        found: list[tuple[float, Note]] = []
        for note_id, note in self._notes.items():
            matched = len(asked & self._words[note_id])
            if matched and note.user.lower() not in skipped:
                found.append((_score(note, matched, len(asked), now), note))
        found.sort(key=lambda item: (-item[0], -item[1].last_accessed, item[1].id))
        return [note for _, note in found[:limit]]
