"""Turn the bridge's JSON envelopes into clean value types, rejecting malformed ones.

The bridge publishes `{"event_name", "payload", "channel", "domain", "timestamp",
"correlation_id"}`. Chat text arrives HTML-escaped and may carry `<a href>` markup; both are
undone here, once, so no later stage (prompt, log, trigger) ever sees entities or tags.

Everything here reads text a stranger wrote, so every pass is linear in its input: the
patterns below cannot rescan (no pattern may run past a `<` it did not start at), links are
found by a scanner that gives up once no closing tag is left, and the chat text is cut to
`listener.max_chat_chars` here, where the line is parsed, so the prompt, the room's history
and the JSONL record all see the same bounded text.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import time
from typing import Any

from kryten_llm._throttle import ThrottledCount
from kryten_llm.types import ChatLine, MediaChange

log = logging.getLogger(__name__)

# The bridge escapes user text, so any literal "<" in `msg` is server markup. No server tag
# contains a "<", so none of these may cross one: that is what keeps each of them linear (a
# failed attempt at one "<" never scans past the next).
_LINK_OPEN = re.compile(r"<a\s[^<>]*>", re.I)
_LINK_HREF = re.compile(r'href="([^"]*)"', re.I)
_LINK_CLOSE = re.compile(r"</a>", re.I)
_TAG = re.compile(r"<[^<>]*>")
_CHARREF = re.compile(r"&#(?:([xX])([0-9a-fA-F]+)|([0-9]+))")
CHARREF_DIGITS_MAX = 8
"""More significant digits than this is past U+10FFFF: `html.unescape` makes it U+FFFD."""
_SUBJECT_STRIP = re.compile(r"[*>!@#$%^&()+=\[\]{|}\\:;\"'<,?/]")

CHAT_TEXT_CHARS_DEFAULT = 4000
"""`listener.max_chat_chars` unless configured: far above any line CyTube lets through."""
CUT_MARK = "…[cut {chars} chars]"
"""Appended where chat text was cut, with how many characters were left out."""
USERNAME_CHARS_MAX = 64
"""CyTube names are at most 20 characters; anything longer is cut to this (no mark: a name
is a key, not prose)."""
MEDIA_TITLE_CHARS_MAX = 1000
"""Video titles longer than this are cut (with the mark) before they are remembered."""
MEDIA_FIELD_CHARS_MAX = 256
"""A video's type and id are short codes; anything longer is cut to this."""
CORRELATION_ID_CHARS_MAX = 128
"""The bridge sends a UUID; a longer id is cut before it is put on log lines and records."""


MALFORMED_LOG_INTERVAL_SECONDS = 5.0
"""At most one warning about malformed events per this many seconds."""


class MalformedEvent(ValueError):
    """An envelope or payload that does not have the shape the bridge publishes."""


class MalformedEvents:
    """Every malformed event dropped, counted in one place, warned about at most every 5 s.

    Whether the envelope is not JSON, is nested 100,000 deep, or its payload lacks a field,
    the event gets the same treatment: dropped, counted, and reported with the latest reason
    and how many since the last warning, so a flood of garbage is not a flood of log lines.
    """

    def __init__(self, interval_seconds: float = MALFORMED_LOG_INTERVAL_SECONDS) -> None:
        self._count = ThrottledCount(interval_seconds)

    @property
    def total(self) -> int:
        return self._count.total

    def note(self, where: str, reason: str) -> None:
        since = self._count.note()
        if since is not None:
            log.warning(
                "malformed %s ignored: %s (%d malformed event(s) since the last report, "
                "%d in total)",
                where,
                reason,
                since,
                self.total,
            )


def subject_token(name: str) -> str:
    """A channel or event name as the bridge writes it into a subject (docs/PROTOCOL.md §1)."""
    token = name.lower().replace(".", "").replace(" ", "-")
    return _SUBJECT_STRIP.sub("", token)[:100]


def chat_subject(channel: str, event: str) -> str:
    return f"kryten.events.cytube.{subject_token(channel)}.{subject_token(event)}"


def _replace_links(raw: str) -> str:
    """Each `<a href="URL">inner</a>` as its inner text, or its URL when the inner is blank.

    A scanner, not one pattern: a pattern that looks for the `</a>` of every unclosed `<a>`
    rescans the rest of the line each time (192 KB of them once held the loop for 13 s).
    Here each character is read a bounded number of times: the search for `</a>` starts
    where the last link ended, and once none is left no later `<a>` can be a link, so the
    scan stops. Tags without an `href` are left for `_TAG` to remove.
    """
    parts: list[str] = []
    pos = 0
    while True:
        opening = _LINK_OPEN.search(raw, pos)
        if opening is None:
            break
        href = _LINK_HREF.search(opening.group(0))
        if href is None:
            parts.append(raw[pos : opening.end()])
            pos = opening.end()
            continue
        closing = _LINK_CLOSE.search(raw, opening.end())
        if closing is None:
            break
        inner = _TAG.sub("", raw[opening.end() : closing.start()])
        parts += [raw[pos : opening.start()], inner if inner.strip() else href.group(1)]
        pos = closing.end()
    parts.append(raw[pos:])
    return "".join(parts)


def _short_charref(match: re.Match[str]) -> str:
    """A numeric character reference with its leading zeros dropped, or U+FFFD if too large.

    `html.unescape` turns the digits into an int, and Python refuses (ValueError) to convert
    more than 4300 digits: `&#` and 5,000 digits would otherwise crash the parse.
    """
    x, digits = match.group(1) or "", (match.group(2) or match.group(3)).lstrip("0") or "0"
    return f"&#{x}{digits}" if len(digits) <= CHARREF_DIGITS_MAX else "&#65533"


def unescape(text: str) -> str:
    """`html.unescape` that cannot be made to raise by an absurdly long character reference."""
    return html.unescape(_CHARREF.sub(_short_charref, text))


def clean_chat_text(raw: str) -> str:
    """CyTube's escaped HTML as the plain text the user typed (links become their URL).

    Most lines carry neither markup nor entities: each pass runs only when its character is
    there, which keeps the per-line cost of ordinary chat at a string scan.
    """
    text = _TAG.sub("", _replace_links(raw)) if "<" in raw else raw
    if "&" in text:
        text = unescape(text)
    return " ".join(text.split())


def bound_text(text: str, max_chars: int) -> str:
    """`text`, or its first `max_chars` characters with a visible mark saying how much went.

    The mark is what a reader of the prompt, the history or the JSONL record sees instead of
    the rest, so a cut line is never mistaken for the whole of what was said.
    """
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}{CUT_MARK.format(chars=len(text) - max_chars)}"


def decode_envelope(data: bytes) -> dict[str, Any]:
    """Parse and shape-check an envelope; raise MalformedEvent with a loggable reason."""
    try:
        envelope = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON ({exc.__class__.__name__})") from None
    except RecursionError:
        # `[[[[...` a hundred thousand deep: the decoder gives up on the nesting, and that is
        # one more malformed event, not a traceback.
        raise MalformedEvent("JSON nested too deeply") from None
    if not isinstance(envelope, dict):
        raise MalformedEvent("envelope is not a JSON object")
    for key in ("event_name", "channel", "domain"):
        if not isinstance(envelope.get(key), str) or not envelope[key]:
            raise MalformedEvent(f"envelope field {key!r} missing or not a string")
    return envelope


def correlation_of(envelope: dict[str, Any]) -> str:
    """The envelope's correlation id as a bounded string ("" when it has none)."""
    correlation = envelope.get("correlation_id")
    return correlation[:CORRELATION_ID_CHARS_MAX] if isinstance(correlation, str) else ""


def parse_chat(
    envelope: dict[str, Any],
    received_monotonic: float | None = None,
    *,
    max_text_chars: int = CHAT_TEXT_CHARS_DEFAULT,
) -> ChatLine:
    """A chatMsg envelope as a ChatLine; raise MalformedEvent if the payload is unusable.

    The text is cut to `max_text_chars` (with `CUT_MARK`) here, once, so every consumer of
    the line (triggers, the prompt, the room's history, the JSONL record) sees the same
    bounded text.
    """
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        raise MalformedEvent("chatMsg payload is not an object")
    username, msg, stamp = payload.get("username"), payload.get("msg"), payload.get("time")
    if not isinstance(username, str) or not isinstance(msg, str):
        raise MalformedEvent("chatMsg payload lacks a string username or msg")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise MalformedEvent("chatMsg payload lacks a finite numeric time")
    raw_meta = payload.get("meta")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    add_class = meta.get("addClass")
    return ChatLine(
        channel=envelope["channel"],
        domain=envelope["domain"],
        username=username[:USERNAME_CHARS_MAX],
        text=bound_text(clean_chat_text(msg), max_text_chars),
        time_ms=int(stamp),
        shadow=meta.get("shadow") is True,
        add_class=add_class if isinstance(add_class, str) else "",
        correlation_id=correlation_of(envelope),
        received_monotonic=time.monotonic() if received_monotonic is None else received_monotonic,
    )


def parse_media(envelope: dict[str, Any]) -> MediaChange:
    """A changeMedia envelope (or the playlist KV's `current` value wrapped as one)."""
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        raise MalformedEvent("changeMedia payload is not an object")
    title = payload.get("title")
    if not isinstance(title, str):
        raise MalformedEvent("changeMedia payload lacks a string title")
    seconds = payload.get("seconds")
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):  # int(inf) raises
        seconds = 0
    return MediaChange(
        channel=envelope["channel"],
        domain=envelope["domain"],
        title=bound_text(unescape(title), MEDIA_TITLE_CHARS_MAX),
        media_type=_short_field(payload.get("type")),
        media_id=_short_field(payload.get("id")),
        duration_seconds=int(seconds),
    )


def _short_field(value: Any) -> str:
    """A code such as a video type or id as a bounded string ("" for none or non-scalars)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        return ""
    return str(value)[:MEDIA_FIELD_CHARS_MAX]
