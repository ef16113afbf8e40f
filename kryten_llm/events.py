"""Turn the bridge's JSON envelopes into clean value types, rejecting malformed ones.

The bridge publishes `{"event_name", "payload", "channel", "domain", "timestamp",
"correlation_id"}`. Chat text arrives HTML-escaped and may carry `<a href>` markup; both are
undone here, once, so no later stage (prompt, log, trigger) ever sees entities or tags.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from typing import Any

from kryten_llm.types import ChatLine, MediaChange

# Order matters: the bridge escapes user text, so any literal "<" in `msg` is server markup.
_LINK = re.compile(r"<a\s[^>]*?href=\"([^\"]*)\"[^>]*>(.*?)</a>", re.I | re.S)
_TAG = re.compile(r"<[^>]{0,500}>")
_SUBJECT_STRIP = re.compile(r"[*>!@#$%^&()+=\[\]{|}\\:;\"'<,?/]")


class MalformedEvent(ValueError):
    """An envelope or payload that does not have the shape the bridge publishes."""


def subject_token(name: str) -> str:
    """A channel or event name as the bridge writes it into a subject (docs/PROTOCOL.md §1)."""
    token = name.lower().replace(".", "").replace(" ", "-")
    return _SUBJECT_STRIP.sub("", token)[:100]


def chat_subject(channel: str, event: str) -> str:
    return f"kryten.events.cytube.{subject_token(channel)}.{subject_token(event)}"


def clean_chat_text(raw: str) -> str:
    """CyTube's escaped HTML as the plain text the user typed (links become their URL)."""

    def link_text(match: re.Match[str]) -> str:
        href, inner = match.group(1), _TAG.sub("", match.group(2))
        return inner if inner.strip() else href

    text = _LINK.sub(link_text, raw)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    return " ".join(text.split())


def decode_envelope(data: bytes) -> dict[str, Any]:
    """Parse and shape-check an envelope; raise MalformedEvent with a loggable reason."""
    try:
        envelope = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(envelope, dict):
        raise MalformedEvent("envelope is not a JSON object")
    for key in ("event_name", "channel", "domain"):
        if not isinstance(envelope.get(key), str) or not envelope[key]:
            raise MalformedEvent(f"envelope field {key!r} missing or not a string")
    return envelope


def parse_chat(envelope: dict[str, Any], received_monotonic: float | None = None) -> ChatLine:
    """A chatMsg envelope as a ChatLine; raise MalformedEvent if the payload is unusable."""
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
    correlation = envelope.get("correlation_id")
    return ChatLine(
        channel=envelope["channel"],
        domain=envelope["domain"],
        username=username,
        text=clean_chat_text(msg),
        time_ms=int(stamp),
        shadow=meta.get("shadow") is True,
        add_class=add_class if isinstance(add_class, str) else "",
        correlation_id=correlation if isinstance(correlation, str) else "",
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
    return MediaChange(
        channel=envelope["channel"],
        domain=envelope["domain"],
        title=html.unescape(title),
        media_type=str(payload.get("type") or ""),
        media_id=str(payload.get("id") or ""),
        duration_seconds=int(seconds) if isinstance(seconds, int | float) else 0,
    )
