"""Hostile chat text: linear-time cleaning, bounded lines, and deep JSON as a plain malformed event.

The link markup test keeps the old pattern-based cleaner as an oracle: for every well-formed
shape CyTube produces, the linear scanner must give exactly the text the old cleaner gave.
"""

from __future__ import annotations

import html
import json
import random
import re
import time

import pytest

from kryten_llm.events import (
    CHAT_TEXT_CHARS_DEFAULT,
    CORRELATION_ID_CHARS_MAX,
    CUT_MARK,
    MEDIA_TITLE_CHARS_MAX,
    USERNAME_CHARS_MAX,
    MalformedEvent,
    bound_text,
    clean_chat_text,
    decode_envelope,
    parse_chat,
    parse_media,
)
from tests.support.bridge import cytube_escape, envelope

HOSTILE_BYTES = 200 * 1024  # above the 192 KB that once held the loop for 13 s
CLEAN_BOUND_SECONDS = 2.0  # generous: the linear scanner needs milliseconds

# The cleaner as it was before the scanner: correct on well-formed markup, quadratic on
# unclosed links. Kept only as the oracle for well-formed input.
_OLD_LINK = re.compile(r"<a\s[^>]*?href=\"([^\"]*)\"[^>]*>(.*?)</a>", re.I | re.S)
_OLD_TAG = re.compile(r"<[^>]{0,500}>")


def old_clean_chat_text(raw: str) -> str:
    def link_text(match: re.Match[str]) -> str:
        href, inner = match.group(1), _OLD_TAG.sub("", match.group(2))
        return inner if inner.strip() else href

    text = _OLD_LINK.sub(link_text, raw)
    text = _OLD_TAG.sub("", text)
    return " ".join(html.unescape(text).split())


def cytube_link(url: str, inner: str | None = None) -> str:
    """A link as CyTube's chat filter writes it (URL escaped like the rest of the line)."""
    escaped = cytube_escape(url)
    shown = escaped if inner is None else inner
    return f'<a href="{escaped}" target="_blank" rel="noopener noreferer">{shown}</a>'


URLS = (
    "https://example.com",
    "https://x.io/a?b=1&c=2",
    "http://youtu.be/dQw4w9WgXcQ?t=42",
    "https://en.wikipedia.org/wiki/Lady_Dragon_(film)",
    'https://example.org/it\'s/"quoted"',
    "https://例え.jp/パス",
)
WORDS = ("look", "at", "this", "&", "(wow)", "it's", '"great"', "<3", "lol", "é", "🙂")
MARKUP = (
    '<span class="greentext">&gt;implying</span>',
    "<strong>bold</strong>",
    "<em>it</em>",
    '<span class="spoiler">the end</span>',
    "<code>x = 1</code>",
    '<img src="https://e.example/x.png" class="channel-emote" title=":kick:">',
)


def well_formed_lines(count: int, seed: int) -> list[str]:
    """Random lines of escaped words, CyTube links (with and without inner markup) and tags."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 8)):
            roll = rng.random()
            if roll < 0.3:
                url = rng.choice(URLS)
                inner = rng.choice([None, "", " ", "<strong>link</strong>", cytube_escape("a&b")])
                parts.append(cytube_link(url, inner))
            elif roll < 0.45:
                parts.append(rng.choice(MARKUP))
            else:
                parts.append(cytube_escape(rng.choice(WORDS)))
        lines.append(rng.choice([" ", "", "  "]).join(parts))
    return lines


@pytest.mark.parametrize(
    "raw",
    [
        cytube_link("https://x.io/a?b=1&c=2"),
        "see " + cytube_link("https://x.io") + " and " + cytube_link("https://y.io") + " ok",
        cytube_link("https://y.io", ""),
        cytube_link("https://y.io", "<em>  </em>"),
        cytube_link("https://y.io", "<strong>named</strong> link"),
        '<A HREF="https://x.io" TARGET="_blank">shouting</A>',
        '<a\ttarget="_blank" href="https://x.io">tab</a>',
        '<a target="_blank">no href</a> text',
        '<a href="https://one.io">one <a href="https://two.io">two</a> tail',
        '<span class="greentext">&gt;greentext</span>',
        cytube_escape("what's <up> & (x)"),
    ],
)
def test_link_markup_becomes_the_same_text_as_before(raw: str) -> None:
    assert clean_chat_text(raw) == old_clean_chat_text(raw)


def test_random_well_formed_markup_matches_the_old_cleaner() -> None:
    for raw in well_formed_lines(2000, seed=7):
        assert clean_chat_text(raw) == old_clean_chat_text(raw), raw


def test_links_become_their_text_or_url() -> None:
    raw = "see " + cytube_link("https://x.io/a?b=1&c=2") + " now"
    assert clean_chat_text(raw) == "see https://x.io/a?b=1&c=2 now"
    assert clean_chat_text(cytube_link("https://y.io", "")) == "https://y.io"


def repeated(unit: str) -> str:
    return unit * (HOSTILE_BYTES // len(unit) + 1)


HOSTILE_MARKUP = {
    "unclosed links": repeated('<a href="https://x.io" target="_blank">x'),
    "bare link openings": repeated("<a "),
    "unterminated href": repeated('<a href="'),
    "openings without >": repeated('<a href="x"'),
    "near-miss closers": '<a href="x">' + repeated("y</a"),
    "links closed only at the very end": repeated('<a href="x">y') + "</a>",
    "hrefs in one tag": "<a " + repeated('href="') + ">",
    "angle brackets": repeated("<"),
    "tag openings": repeated("<b"),
    "entities": repeated("&#"),
    "numeric reference digits": "&#" + "1" * HOSTILE_BYTES + ";",
    "hex reference digits": "&#x" + "0" * HOSTILE_BYTES + "41;",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_MARKUP))
def test_hostile_markup_is_cleaned_in_linear_time(name: str) -> None:
    raw = HOSTILE_MARKUP[name]
    assert len(raw.encode()) >= HOSTILE_BYTES
    started = time.perf_counter()
    clean_chat_text(raw)
    elapsed = time.perf_counter() - started
    assert elapsed < CLEAN_BOUND_SECONDS, f"{name}: {elapsed:.2f} s for {len(raw)} characters"


def test_unclosed_links_leave_their_text() -> None:
    assert clean_chat_text('<a href="https://x.io">x <a href="https://y.io">y') == "x y"


def test_absurd_character_references_do_not_raise() -> None:
    # html.unescape turns the digits into an int; Python refuses more than 4300 digits.
    assert clean_chat_text("&#" + "0" * 5000 + "65;") == "A"
    assert clean_chat_text("&#" + "9" * 5000 + ";x") == "\ufffdx"
    assert clean_chat_text("&#x" + "f" * 5000 + ";") == "\ufffd"


def chat(msg: str, **extra: object) -> dict[str, object]:
    payload = {"username": "Alice", "msg": msg, "meta": {}, "time": 1_795_313_438_000}
    payload.update(extra)
    return decode_envelope(envelope("chatMsg", payload, "420Grindhouse", "cytu.be"))


def test_bound_text_marks_the_cut() -> None:
    assert bound_text("abc", 3) == "abc"
    assert bound_text("abcdef", 3) == "abc" + CUT_MARK.format(chars=3)
    assert bound_text("abcdef", 3).endswith("…[cut 3 chars]")


def test_chat_text_is_bounded_where_the_line_is_parsed() -> None:
    long = "word " * 100_000
    line = parse_chat(chat(cytube_escape(long)))
    kept = " ".join(long.split())[:CHAT_TEXT_CHARS_DEFAULT]
    assert line.text == kept + CUT_MARK.format(chars=len(" ".join(long.split())) - len(kept))
    small = parse_chat(chat(cytube_escape(long)), max_text_chars=320)
    assert small.text.startswith("word word") and small.text.endswith(" chars]")
    assert len(small.text) < 320 + 30
    exact = "x" * 320
    assert parse_chat(chat(exact), max_text_chars=320).text == exact


def test_names_ids_and_titles_are_bounded() -> None:
    line = parse_chat(chat("hi", username="A" * 100_000))
    assert line.username == "A" * USERNAME_CHARS_MAX
    env = chat("hi")
    env["correlation_id"] = "c" * 100_000
    assert parse_chat(env).correlation_id == "c" * CORRELATION_ID_CHARS_MAX
    media = parse_media(
        decode_envelope(
            envelope(
                "changeMedia",
                {"title": "T" * 100_000, "type": "yt" * 1000, "id": {"x": 1}, "seconds": 60},
                "420Grindhouse",
                "cytu.be",
            )
        )
    )
    assert media.title.startswith("T" * MEDIA_TITLE_CHARS_MAX) and media.title.endswith("chars]")
    assert len(media.media_type) <= 256 and media.media_id == ""


@pytest.mark.parametrize("seconds", [b"Infinity", b"-Infinity", b"NaN", b"1e999"])
def test_media_with_non_finite_seconds_is_read_not_raised(seconds: bytes) -> None:
    data = (
        b'{"event_name": "changeMedia", "channel": "c", "domain": "d", '
        b'"payload": {"title": "x", "seconds": ' + seconds + b"}}"
    )
    assert parse_media(decode_envelope(data)).duration_seconds == 0


DEPTH = 100_000


@pytest.mark.parametrize(
    "data",
    [
        b"[" * DEPTH + b"]" * DEPTH,
        b"{" + b'"a": {' * DEPTH + b"}" * (DEPTH + 1),
        b'{"event_name": "chatMsg", "channel": "c", "domain": "d", "payload": '
        + b"[" * DEPTH
        + b"]" * DEPTH
        + b"}",
    ],
)
def test_deeply_nested_json_is_a_malformed_event(data: bytes) -> None:
    with pytest.raises(MalformedEvent, match="nested too deeply"):
        decode_envelope(data)


def test_shallow_nesting_is_still_read() -> None:
    payload = json.loads("[" * 50 + "]" * 50)
    data = envelope("userlist", payload, "c", "d")
    assert decode_envelope(data)["payload"] == payload
