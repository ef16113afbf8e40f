"""Property-based tests of the formatter and the output guard together.

For *any* text: every published part is non-empty, within the limit, not command-like, and
the guard is idempotent (its output passes it unchanged).

For *prose* (words joined by sentence punctuation, decorated with hostile prefixes such as
`/`, look-alike slashes, zero-width and control characters): the words survive, in order.
Decorations are not words, so they may vanish; the opening-stripping rules cannot fire because
no generated text starts with "as"/"being" or contains a colon (artifact removal is covered by
its own property below). With a budget the parts can hold, every word survives; without one,
what survives is a prefix of the input (truncation only ever drops the end).
"""

from __future__ import annotations

import re
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kryten_llm.config import MessageProcessingSettings, PersonalitySettings, SafetySettings
from kryten_llm.reply._text import utf16_len
from kryten_llm.reply.formatter import ResponseFormatter
from kryten_llm.reply.guard import GuardResult, OutputGuard, command_prefixes, is_command_like

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

HOSTILE = "/!.／∕⁄⧸᜵ǃ！﹗\u200b\u200c\u200d\u2060\ufeff\u200e\u200f\u202e\u2066\u3164\u2800\u0338"
CONTROLS = "\x00\x01\x07\x1b\x1f\x7f\x85\t\r\n\u2028\u00a0\u3000"

# Letters that NFKC keeps as letters; one of them is astral (two UTF-16 units).
WORD_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789éñßøçλжあ中𠀀"
SEPARATORS = [" ", " ", " ", ", ", ". ", "! ", "? ", "... ", "\n", ".\n", " - "]
DECORATIONS = [
    "/",
    "//",
    "!",
    ".",
    "／",
    "∕",
    "⁄",
    "⧸",
    "\u200b/",
    "\u202e",
    "\u200d",
    "🥋",
    "\x07",
]
OPENING_WORDS = {"as", "being"}


@st.composite
def configs(draw: st.DrawFn) -> MessageProcessingSettings:
    return MessageProcessingSettings(
        max_message_length=draw(st.integers(min_value=20, max_value=400)),
        max_parts=draw(st.integers(min_value=1, max_value=6)),
        continuation_indicator=draw(st.sampled_from(["...", "", " →", "(more)"])),
    )


any_text = st.one_of(
    st.text(max_size=2000),
    st.text(alphabet=st.sampled_from(list(HOSTILE + CONTROLS + "ab c🥋👨\u200d👩")), max_size=600),
    st.lists(
        st.sampled_from(["/me", "/clear", " ", "\n", "\u200b", "／kick", "a" * 50, "Dr.", ". "]),
        max_size=60,
    ).map("".join),
)

words = st.text(alphabet=WORD_ALPHABET, min_size=1, max_size=30).filter(
    lambda w: w.casefold() not in OPENING_WORDS
)


@st.composite
def prose(draw: st.DrawFn, max_words: int = 80) -> tuple[str, list[str]]:
    """Decorated prose and the words it is made of."""
    chosen = draw(st.lists(words, min_size=1, max_size=max_words))
    pieces: list[str] = []
    for index, word in enumerate(chosen):
        if index:
            pieces.append(draw(st.sampled_from(SEPARATORS)))
        if draw(st.booleans()):
            pieces.append(draw(st.sampled_from(DECORATIONS)))
        pieces.append(word)
    pieces.append(draw(st.sampled_from(["", ".", "!", "?", "..."])))
    return "".join(pieces), chosen


def tokens(text: str) -> list[str]:
    """Words as the property compares them: NFKC, case-folded, letters and digits only."""
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold())


def publish(text: str, processing: MessageProcessingSettings) -> GuardResult:
    formatter = ResponseFormatter(processing, PersonalitySettings())
    return OutputGuard(processing, SafetySettings()).check(formatter.format(text))


def assert_invariants(result: GuardResult, processing: MessageProcessingSettings) -> None:
    if result.blocked:
        assert result.parts == []
        return
    assert 1 <= len(result.parts) <= processing.max_parts
    for part in result.parts:
        assert part.strip()
        assert part == part.strip()
        assert utf16_len(part) <= processing.max_message_length
        assert not is_command_like(part, command_prefixes(processing))
        assert "\n" not in part
        part.encode("utf-16-le")


@PROPERTY_SETTINGS
@given(text=any_text, processing=configs())
@example(text="/me /clear", processing=MessageProcessingSettings())
@example(text="\u200b\n ／kick x", processing=MessageProcessingSettings(max_message_length=20))
def test_any_text_publishes_only_safe_parts(
    text: str, processing: MessageProcessingSettings
) -> None:
    assert_invariants(publish(text, processing), processing)


@PROPERTY_SETTINGS
@given(text=any_text, processing=configs())
def test_guard_alone_is_safe_on_unformatted_text(
    text: str, processing: MessageProcessingSettings
) -> None:
    assert_invariants(OutputGuard(processing, SafetySettings()).check([text]), processing)


@PROPERTY_SETTINGS
@given(text=any_text, processing=configs())
def test_guard_is_idempotent(text: str, processing: MessageProcessingSettings) -> None:
    guard = OutputGuard(processing, SafetySettings())
    first = publish(text, processing)
    if first.blocked:
        return
    again = guard.check(first.parts)
    assert again.parts == first.parts
    assert again.decisions == []


@PROPERTY_SETTINGS
@given(sample=prose(), processing=configs())
def test_words_survive_in_order(
    sample: tuple[str, list[str]], processing: MessageProcessingSettings
) -> None:
    text, chosen = sample
    result = publish(text, processing)
    assert_invariants(result, processing)
    expected = tokens(" ".join(chosen))
    published = tokens(
        " ".join(p.removesuffix(processing.continuation_indicator) for p in result.parts)
    )
    # Hard cuts may split a word in two, so compare the letters; truncation drops only the end.
    assert "".join(expected).startswith("".join(published))
    budget = (processing.max_parts // 2) * (processing.max_message_length - 12)
    if utf16_len(text) <= budget:
        assert "".join(published) == "".join(expected)
    room = processing.max_message_length - utf16_len(processing.continuation_indicator)
    # A decoration is glued to its word until the guard removes it, after the formatter has
    # measured the word: only a word that fits with the longest one is never hard-cut.
    glued = max(utf16_len(d) for d in DECORATIONS)
    if all(utf16_len(w) + glued < room for w in chosen):  # no hard cuts: whole words, in order
        assert published == expected[: len(published)]


@PROPERTY_SETTINGS
@given(
    sample=prose(max_words=20),
    opening=st.sampled_from(
        [
            "As Cynthia Rothrock, ",
            "As CynthiaRothbot, ",
            "As an AI, ",
            "As an AI language model, ",
            "Sure! Here's my response: ",
            "CynthiaRothbot: ",
            '"',
        ]
    ),
)
def test_artifacts_are_removed_and_the_rest_survives(
    sample: tuple[str, list[str]], opening: str
) -> None:
    text, chosen = sample
    processing = MessageProcessingSettings(max_parts=10)
    raw = opening + text + ('"' if opening == '"' else "")
    published = tokens(" ".join(p.removesuffix("...") for p in publish(raw, processing).parts))
    assert published == tokens(" ".join(chosen))


@PROPERTY_SETTINGS
@given(text=any_text, processing=configs())
def test_formatter_split_alone_respects_the_limits(
    text: str, processing: MessageProcessingSettings
) -> None:
    formatter = ResponseFormatter(processing, PersonalitySettings())
    parts = formatter.format(text)
    assert len(parts) <= processing.max_parts
    for part in parts:
        assert part and "\n" not in part
        assert utf16_len(part) <= processing.max_message_length
