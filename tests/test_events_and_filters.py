"""Parsing the bridge's envelopes and the rules for lines the bot never answers."""

from __future__ import annotations

import json

import pytest

from kryten_llm.decide.filters import SEEN_LINES_MAX, MessageFilter
from kryten_llm.events import (
    MalformedEvent,
    chat_subject,
    clean_chat_text,
    decode_envelope,
    parse_chat,
    parse_media,
    subject_token,
)
from kryten_llm.types import ChatLine
from tests.support.bridge import cytube_escape, envelope

START_MS = 1_795_313_438_000


def chat_envelope(**payload: object) -> dict[str, object]:
    base = {"username": "Alice", "msg": "hi", "meta": {}, "time": START_MS + 5}
    base.update(payload)
    return decode_envelope(envelope("chatMsg", base, "420Grindhouse", "cytu.be"))


def line(
    username: str = "Alice", text: str = "hello", time_ms: int = START_MS + 1, **kw: object
) -> ChatLine:
    return ChatLine("420Grindhouse", "cytu.be", username, text, time_ms, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("420Grindhouse", "420grindhouse"),
        ("my.channel", "mychannel"),
        ("Movie Night!", "movie-night"),
        ("a:b*c>d", "abcd"),
        ("chatMsg", "chatmsg"),
    ],
)
def test_subject_tokens_match_the_bridge(name: str, token: str) -> None:
    assert subject_token(name) == token


def test_chat_subject() -> None:
    assert chat_subject("420Grindhouse", "chatMsg") == "kryten.events.cytube.420grindhouse.chatmsg"


def test_clean_chat_text_unescapes_and_strips_links() -> None:
    assert clean_chat_text(cytube_escape("what's <up> & (x)")) == "what's <up> & (x)"
    raw = (
        'see <a href="https://x.io/a?b=1&amp;c=2" target="_blank">https://x.io/a?b=1&amp;c=2'
        "</a> now"
    )
    assert clean_chat_text(raw) == "see https://x.io/a?b=1&c=2 now"
    assert clean_chat_text('<a href="https://y.io"></a>') == "https://y.io"
    assert clean_chat_text('<span class="quote">&gt;greentext</span>') == ">greentext"
    assert clean_chat_text("  lots   of\n space ") == "lots of space"


def test_decode_envelope_accepts_bridge_and_kryten_py_json() -> None:
    bridge_bytes = envelope("chatMsg", {"username": "A", "msg": "\u00e9", "time": 1}, "c", "d")
    assert b"\\u00e9" in bridge_bytes and b'", "' in bridge_bytes
    assert decode_envelope(bridge_bytes)["payload"]["msg"] == "\u00e9"
    compact = json.dumps(
        {
            "event_name": "chatMsg",
            "payload": {},
            "channel": "c",
            "domain": "d",
            "timestamp": "2026-11-22T02:10:38.071Z",
        },
        separators=(",", ":"),
    )
    assert decode_envelope(compact.encode())["channel"] == "c"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"nope",
        b"[]",
        b"42",
        b'{"event_name": "chatMsg"}',
        b'{"event_name": "chatMsg", "channel": 3, "domain": "d", "payload": {}}',
        b"\xff\xfe",
    ],
)
def test_decode_envelope_rejects_malformed(data: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode_envelope(data)


def test_parse_chat_reads_the_payload() -> None:
    parsed = parse_chat(
        chat_envelope(msg="hey &amp; ho", meta={"shadow": True, "addClass": "action"})
    )
    assert (parsed.username, parsed.text, parsed.time_ms) == ("Alice", "hey & ho", START_MS + 5)
    assert parsed.shadow and parsed.add_class == "action"
    assert parsed.channel == "420Grindhouse" and parsed.domain == "cytu.be"


@pytest.mark.parametrize(
    "payload",
    [{"username": None}, {"msg": 5}, {"time": "yesterday"}, {"time": True}, {"time": None}],
)
def test_parse_chat_rejects_bad_payloads(payload: dict[str, object]) -> None:
    with pytest.raises(MalformedEvent):
        parse_chat(chat_envelope(**payload))


@pytest.mark.parametrize("stamp", [b"Infinity", b"-Infinity", b"NaN"])
def test_parse_chat_rejects_non_finite_times(stamp: bytes) -> None:
    # json.loads accepts these non-standard literals, so they can arrive off the bus.
    data = (
        b'{"event_name": "chatMsg", "channel": "c", "domain": "d", "payload": '
        b'{"username": "a", "msg": "hi", "time": ' + stamp + b"}}"
    )
    with pytest.raises(MalformedEvent, match="finite"):
        parse_chat(decode_envelope(data))


def test_parse_chat_tolerates_odd_meta() -> None:
    parsed = parse_chat(chat_envelope(meta="weird"))
    assert parsed.shadow is False and parsed.add_class == ""
    assert parse_chat(chat_envelope(meta={"shadow": "yes"})).shadow is False


def test_parse_media() -> None:
    env = decode_envelope(
        envelope(
            "changeMedia",
            {"id": "x", "title": "Tom &amp; Jerry", "seconds": 90, "type": "yt"},
            "c",
            "d",
        )
    )
    media = parse_media(env)
    assert media.title == "Tom & Jerry" and media.duration_seconds == 90
    with pytest.raises(MalformedEvent):
        parse_media(decode_envelope(envelope("changeMedia", {"id": "x"}, "c", "d")))
    with pytest.raises(MalformedEvent):
        parse_media(decode_envelope(envelope("changeMedia", "uid", "c", "d")))


def make_filter() -> MessageFilter:
    return MessageFilter(["CynthiaRothbot"], ["SpamBot"], START_MS)


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (line("cynthiarothbot"), "own message"),
        (line("CYNTHIAROTHBOT"), "own message"),
        (line("[server]"), "server notice"),
        (line(shadow=True), "shadow-muted sender"),
        (line("spambot"), "ignored user"),
        (line(text="   "), "blank message"),
        (line(text="!roll d20"), "command for another bot"),
        (line(time_ms=START_MS - 1), "history replayed from before start"),
    ],
)
def test_filter_reasons(candidate: ChatLine, reason: str) -> None:
    assert make_filter().reason_to_ignore(candidate) == reason


def test_filter_passes_ordinary_lines_and_catches_replays() -> None:
    f = make_filter()
    assert f.reason_to_ignore(line(time_ms=START_MS)) is None
    assert f.reason_to_ignore(line(time_ms=START_MS)) == "duplicate (replayed after reconnect)"
    assert f.reason_to_ignore(line(text="different", time_ms=START_MS)) is None


def test_filter_memory_is_bounded() -> None:
    f = make_filter()
    for i in range(SEEN_LINES_MAX * 3):
        f.reason_to_ignore(line(text=f"m{i}", time_ms=START_MS + i))
    assert len(f._seen) == SEEN_LINES_MAX
