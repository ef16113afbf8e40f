"""State keys: any text, as a valid NATS KV key, reversibly and without collisions.

A NATS KV key is `.`-separated tokens of `A-Za-z0-9-_/=`, none empty, no leading or trailing
`.`, and it becomes part of a subject (`$KV.<bucket>.<key>`), so `*` and `>` would be
wildcards and a `.` in a user name would split it into two tokens. Names here are untrusted
chat text (`a:b`, `x.y`, spaces, unicode, empty), so each part of a key is encoded, never
hoped to be safe:

- a part made only of `A-Za-z0-9_-` (most CyTube user and channel names) is its own token,
  so keys stay readable in `nats kv ls`;
- anything else is `=` followed by the unpadded base64url of its UTF-8 bytes (`cytu.be` ->
  `=Y3l0dS5iZQ`, the empty string -> `=`). Plain tokens never contain `=`, so the two forms
  cannot meet, and decoding is exact: distinct parts give distinct tokens.

Parts are joined with `.`, so a key's parts are its subject tokens and a key prefix is a
subject prefix (`keys(prefix)` filters on the server with `<prefix>.>`).

Rooms and users are keyed as the bridge compares them: `ChannelKey` already lower-cases the
channel and keeps the domain exact, and CyTube user names are case-insensitive, so
`StateKey.for_user` lower-cases the name (`Alice` and `alice` are one user; keep the spelling
to show in the value). The kind comes first (`room` / `user`), so a room key and a user key
never meet, and the domain is its own part, so the same channel on two servers never does.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from kryten_llm.types import ChannelKey

MAX_KEY_CHARS = 2048
"""Longest encoded key. The subject `$KV.<bucket>.<key>` travels in NATS's control line
(4096 bytes by default) with the reply inbox and sizes, so this keeps well clear of it while
a 200-character name of 4-byte characters (1068 encoded) still fits beside its room."""

ENCODED_MARK = "="
PLAIN_PART = re.compile(r"[A-Za-z0-9_-]+")
ENCODED_PART = re.compile(r"=[A-Za-z0-9_-]*")
ROOM_KIND = "room"
USER_KIND = "user"


def encode_part(text: str) -> str:
    """One key token for any text: itself when plain, else `=` + base64url of its bytes.

    Lone surrogates (JSON may carry them) pass through `surrogatepass`, so every Python
    string has a token and decodes back to itself.
    """
    if PLAIN_PART.fullmatch(text):
        return text
    raw = text.encode("utf-8", "surrogatepass")
    return ENCODED_MARK + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_part(token: str) -> str:
    """The text a token was made from; ValueError for anything `encode_part` never makes."""
    if PLAIN_PART.fullmatch(token):
        return token
    if not ENCODED_PART.fullmatch(token):
        raise ValueError("not a state key token")
    body = token[1:]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return raw.decode("utf-8", "surrogatepass")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("not a state key token") from exc


@dataclass(frozen=True, slots=True)
class StateKey:
    """A key as parts of text; `encoded` is the NATS KV key, `decode` reads one back.

    Build keys with `of`, `for_room` or `for_user`, never by formatting strings: the first
    part is the key's kind, a constant the feature picks, never outside text.
    """

    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("a state key needs at least one part")
        if len(self.encoded) > MAX_KEY_CHARS:
            raise ValueError(f"state key longer than {MAX_KEY_CHARS} characters once encoded")

    @classmethod
    def of(cls, kind: str, *parts: str) -> StateKey:
        """A key of a feature's own: `of("persona", name)`; parts are kept exactly."""
        return cls((kind, *parts))

    @classmethod
    def for_room(cls, room: ChannelKey, *parts: str) -> StateKey:
        """A room's key: `room.<domain>.<channel>.<parts...>` (channel already lower-cased)."""
        return cls((ROOM_KIND, room.domain, room.channel, *parts))

    @classmethod
    def for_user(cls, room: ChannelKey, username: str, *parts: str) -> StateKey:
        """A user's key in a room: the name lower-cased, as CyTube compares user names."""
        return cls((USER_KIND, room.domain, room.channel, username.lower(), *parts))

    @classmethod
    def users_in(cls, room: ChannelKey) -> StateKey:
        """The prefix of every `for_user` key of a room, for `keys(prefix)`."""
        return cls((USER_KIND, room.domain, room.channel))

    @classmethod
    def decode(cls, key: str) -> StateKey:
        """The key an encoded key was made from; ValueError for a key this module never made."""
        return cls(tuple(decode_part(token) for token in key.split(".")))

    @property
    def encoded(self) -> str:
        return ".".join(encode_part(part) for part in self.parts)

    def __str__(self) -> str:
        return self.encoded
