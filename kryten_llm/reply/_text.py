"""Small text helpers shared by the formatter, the output guard and the validator.

CyTube measures chat lines in UTF-16 code units (it is JavaScript), so every length check in
this package goes through :func:`utf16_len`, and every cut goes through :func:`utf16_cut`,
which works on whole code points and therefore never leaves half a surrogate pair behind.
"""

from __future__ import annotations

import re
import unicodedata

_ASTRAL_START = 0x10000

# Code points that render as nothing (or as blank) but are not whitespace to `str.isspace`.
# Unicode category Cf (format: zero-width space/joiners, bidi marks and isolates, BOM, tags)
# is handled by category; these are the invisible ones from other categories.
_EXTRA_INVISIBLE = frozenset(
    {
        0x034F,  # combining grapheme joiner (Mn)
        0x115F,  # hangul choseong filler
        0x1160,  # hangul jungseong filler
        0x17B4,  # khmer vowel inherent aq
        0x17B5,  # khmer vowel inherent aa
        0x180B,  # mongolian free variation selectors (Mn)
        0x180C,
        0x180D,
        0x180F,
        0x2800,  # braille pattern blank
        0x3164,  # hangul filler
        0xFFA0,  # halfwidth hangul filler
    }
)
ZWJ = "\u200d"
BLACK_FLAG = "\U0001f3f4"
CANCEL_TAG = "\U000e007f"
_TAG_FIRST, _TAG_LAST = 0xE0020, 0xE007E
"""Tag characters: invisible ASCII look-alikes, the spelling of a subdivision flag."""
RGI_SUBDIVISION_FLAGS = frozenset({"gbeng", "gbsct", "gbwls"})
"""The subdivision flags Unicode recommends for general interchange (England, Scotland,
Wales): a black flag, these letters as tag characters, and a cancel tag."""

_WHITESPACE_RUN = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\s*\n\s*")


def utf16_len(text: str) -> int:
    """Length as CyTube counts it: code points above U+FFFF take two UTF-16 code units."""
    return len(text) + sum(1 for ch in text if ord(ch) >= _ASTRAL_START)


def utf16_cut(text: str, limit: int) -> str:
    """The longest prefix of `text` within `limit` UTF-16 units, cut between code points.

    The cut moves back (if it can) so it does not separate a character from the combining
    marks, variation selectors, skin tones or joiners that belong to it.
    """
    if limit <= 0:
        return ""
    used = 0
    for index, ch in enumerate(text):
        used += 2 if ord(ch) >= _ASTRAL_START else 1
        if used > limit:
            return text[: _cluster_start(text, index)]
    return text


def _cluster_start(text: str, index: int) -> int:
    """Move a cut at `index` back to a cluster boundary; keep it if the cluster is too long."""
    position = index
    while position > 0 and (_is_attached(text[position]) or text[position - 1] == ZWJ):
        position -= 1
    return position if position > 0 else index


def _is_attached(ch: str) -> bool:
    """Characters that belong to the one before them."""
    return (
        ch == ZWJ
        or unicodedata.category(ch) in {"Mn", "Me", "Mc"}
        or 0xFE00 <= ord(ch) <= 0xFE0F
        or 0x1F3FB <= ord(ch) <= 0x1F3FF
        or 0xE0020 <= ord(ch) <= 0xE007F
    )


def is_invisible(ch: str) -> bool:
    """True for characters that show nothing: format (Cf) characters and known blank fillers.

    Variation selectors are not included: they belong to the emoji before them.
    """
    return unicodedata.category(ch) == "Cf" or ord(ch) in _EXTRA_INVISIBLE


def is_control(ch: str) -> bool:
    """C0/C1 control characters (CyTube turns ``[\\x00-\\x1f]`` into spaces)."""
    return unicodedata.category(ch) == "Cc"


def remove_invisible(text: str, keep_emoji_zwj: bool = True) -> str:
    """Drop invisible characters; a ZWJ survives only between two non-ASCII symbols.

    Keeping the joiner inside emoji sequences (family, profession emoji) keeps them one glyph;
    anywhere else a ZWJ is only useful for hiding things, so it goes. Tag characters go too
    (they can spell hidden text), except inside the England, Scotland and Wales flags, which
    stay whole; any other black flag followed by tags is removed whole, flag and all, so no
    flag is left half drawn and no hidden spelling rides on one. Linear in the text.
    """
    out: list[str] = []
    index = 0
    while index < len(text):
        ch = text[index]
        if ch == BLACK_FLAG and index + 1 < len(text) and _is_tag(text[index + 1]):
            end = _flag_end(text, index)
            if _is_rgi_subdivision_flag(text[index:end]):
                out.append(text[index:end])
            index = end
            continue
        keep_joiner = ch == ZWJ and keep_emoji_zwj and _joins_symbols(text, index)
        if keep_joiner or not is_invisible(ch):
            out.append(ch)
        index += 1
    return "".join(out)


def _is_tag(ch: str) -> bool:
    return _TAG_FIRST <= ord(ch) <= _TAG_LAST


def _flag_end(text: str, start: int) -> int:
    """Index just past the tag sequence that starts with the black flag at `start` (its tag
    characters, and the cancel tag that closes it, if one does)."""
    end = start + 1
    while end < len(text) and _is_tag(text[end]):
        end += 1
    return end + 1 if end < len(text) and text[end] == CANCEL_TAG else end


def _is_rgi_subdivision_flag(sequence: str) -> bool:
    """A black flag, the tag spelling of a recommended subdivision, and a cancel tag."""
    if len(sequence) < 3 or sequence[-1] != CANCEL_TAG:
        return False
    spelled = "".join(chr(ord(c) - 0xE0000) for c in sequence[1:-1])
    return spelled in RGI_SUBDIVISION_FLAGS


def _joins_symbols(text: str, index: int) -> bool:
    if index == 0 or index + 1 >= len(text):
        return False
    before, after = text[index - 1], text[index + 1]
    return _is_symbolish(before) and _is_symbolish(after)


def _is_symbolish(ch: str) -> bool:
    if ord(ch) < 0x80 or is_invisible(ch):
        return False
    category = unicodedata.category(ch)
    return category in {"So", "Sk", "Mn"} or 0x1F000 <= ord(ch) <= 0x1FAFF


def controls_to_spaces(text: str, keep_newlines: bool = False) -> str:
    """Replace control characters with spaces, as CyTube itself would (newlines optional)."""
    return "".join(
        " " if is_control(ch) and not (keep_newlines and ch == "\n") else ch for ch in text
    )


def collapse_whitespace(text: str, keep_newlines: bool = False) -> str:
    """Single spaces between words; with `keep_newlines`, one newline between non-blank lines."""
    if keep_newlines:
        text = _WHITESPACE_RUN.sub(" ", text)
        return _BLANK_LINES.sub("\n", text).strip()
    return " ".join(text.split())
