"""Sentence splitting and the streaming chunker: linear, bounded, and the same output as before.

`previous_iter_sentences` and `PreviousChunker` are the sentence splitter and the chunker as
they were before they became incremental (a regex that backtracks on long runs of "!!!!", and
a chunker that re-split its whole buffer on every delta: quadratic, and unbounded). They are
kept here only as the references the new ones must match.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from kryten_llm.config import MessageProcessingSettings, PersonalitySettings
from kryten_llm.reply._text import collapse_whitespace
from kryten_llm.reply.formatter import (
    MAX_INPUT_CHARS,
    ResponseFormatter,
    SentenceScanner,
    _is_sentence_end,
    ends_sentence,
    iter_sentences,
)
from kryten_llm.reply.responder import FLUSH_AFTER_SECONDS, SentenceChunker

STREAM_CHARS = 300_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_PREVIOUS_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s)")


def previous_iter_sentences(text: str) -> Iterator[str]:
    """The regex sentence splitter as it was (quadratic on a long run of "!")."""
    for line in text.split("\n"):
        line = collapse_whitespace(line)
        start = 0
        for match in _PREVIOUS_SENTENCE_END.finditer(line):
            end = match.end()
            if _is_sentence_end(line, match.start(), end):
                sentence = line[start:end].strip()
                if sentence:
                    yield sentence
                start = end
        rest = line[start:].strip()
        if rest:
            yield rest


class PreviousChunker:
    """The old algorithm, verbatim: every delta re-splits the whole buffer."""

    def __init__(self, line_limit: int, clock: Callable[[], float]) -> None:
        self._limit = line_limit
        self._clock = clock
        self._buffer = ""
        self._pending: list[str] = []
        self._pending_since = 0.0

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        sentences = list(previous_iter_sentences(self._buffer))
        complete: list[str] = []
        if self._buffer.endswith("\n") and sentences:
            complete, self._buffer = sentences, ""
        elif len(sentences) > 1:
            complete = sentences[:-1]
            tail = " " if self._buffer[-1:].isspace() else ""
            self._buffer = sentences[-1] + tail
        if complete and not self._pending:
            self._pending_since = self._clock()
        self._pending += complete
        return self._flush() if self._ready() else []

    def finish(self) -> list[str]:
        self._pending += list(previous_iter_sentences(self._buffer))
        self._buffer = ""
        return self._flush()

    def _ready(self) -> bool:
        if not self._pending:
            return False
        line = sum(len(s) + 1 for s in self._pending) + len(self._buffer.strip())
        waited = self._clock() - self._pending_since
        return line > self._limit or waited >= FLUSH_AFTER_SECONDS

    def _flush(self) -> list[str]:
        if not self._pending:
            return []
        text = " ".join(self._pending)
        self._pending = []
        return [text]


def run(
    chunker: SentenceChunker | PreviousChunker,
    clock: FakeClock,
    deltas: list[str],
    pauses: list[float],
) -> list[tuple[int, str]]:
    """(index of the delta that released it, chunk) for every chunk, then the finish."""
    out: list[tuple[int, str]] = []
    for index, delta in enumerate(deltas):
        clock.now += pauses[index % len(pauses)]
        out += [(index, chunk) for chunk in chunker.feed(delta)]
    out += [(len(deltas), chunk) for chunk in chunker.finish()]
    return out


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


# Ordinary model text: words, abbreviations, initials, numbers, ellipses, quotes, brackets.
WORDS = st.sampled_from(
    [
        "the", "hero", "Kicks", "villain", "boxes.", "Really?", "Yes!", "no...", "Wait...",
        "Dr.", "Mr.", "e.g.", "i.e.", "etc.", "Inc.", "J.", "R.", "Tolkien.", "U.S.", "vs.",
        '"Run!"', "(again).", "it's", "3.5", "end.”", "‘quoted.’", "wow!!", "what?!", "…",
        "ok…", "[sic].", "»done.«", "a.m.", "time.", "Then", "and", "so", "on.", "Fin.",
    ]
)  # fmt: skip
SEPARATORS = st.sampled_from([" ", " ", " ", " ", "\n", "\n\n"])


@st.composite
def ordinary_text(draw: st.DrawFn) -> str:
    words = draw(st.lists(WORDS, min_size=1, max_size=60))
    text = words[0]
    for word in words[1:]:
        text += draw(SEPARATORS) + word
    return text + draw(st.sampled_from(["", " ", "\n"]))


@settings(max_examples=400, deadline=None)
@given(
    text=ordinary_text(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    limit=st.sampled_from([20, 40, 80, 240]),
    pauses=st.lists(st.sampled_from([0.0, 0.1, 0.7, FLUSH_AFTER_SECONDS]), min_size=1),
)
def test_same_chunks_as_the_previous_algorithm(
    text: str, cuts: list[int], limit: int, pauses: list[float]
) -> None:
    deltas = split_at(text, cuts)
    old_clock, new_clock = FakeClock(), FakeClock()
    expected = run(PreviousChunker(limit, old_clock), old_clock, deltas, pauses)
    assert run(SentenceChunker(limit, new_clock), new_clock, deltas, pauses) == expected


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab AJDr.!?…\"')]»“( \t\r\x0b\xa0\u2028\n"), max_size=80),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=20),
)
def test_scanner_finds_the_sentences_the_previous_splitter_found(
    text: str, cuts: list[int]
) -> None:
    """Any text, cut anywhere: the same sentences as the regex splitter on the whole text."""
    expected = list(previous_iter_sentences(text))
    assert list(iter_sentences(text)) == expected
    scanner = SentenceScanner()
    found: list[str] = []
    for delta in split_at(text, cuts):
        found += scanner.feed(delta)
    assert found + scanner.finish() == expected


def test_a_hostile_reply_cannot_make_sentence_splitting_backtrack() -> None:
    """20,000 "!" then a word took the regex splitter about five seconds (blocking the loop)."""
    processing = MessageProcessingSettings(max_parts=10, max_message_length=1000)
    formatter = ResponseFormatter(processing, PersonalitySettings())
    for text in ("!" * (MAX_INPUT_CHARS - 10) + "a b", ("!" * 50 + "a ") * 380):
        started = time.perf_counter()
        sentences = list(iter_sentences(text))
        parts = formatter.format(text)
        assert time.perf_counter() - started < 1.0
        assert " ".join(sentences) == collapse_whitespace(text)
        assert parts


def test_table_of_ordinary_answers() -> None:
    """A few answers streamed word by word, as a model sends them: chunks as before."""
    answers = [
        "Hi there. How are you? Fine.",
        "Ask Dr. Who about e.g. time travel. He knows, etc. and so on. Then we go.",
        "J. R. R. Tolkien wrote it... and then some. Wait... Really?! Yes.\n\nNew paragraph.",
        '"Run!" she said. (Twice.) The end.”',
        "The hero kicks the villain through a very convenient stack of boxes. " * 6,
    ]
    for answer in answers:
        words = answer.split(" ")
        deltas = [w + " " for w in words[:-1]] + [words[-1]]
        for limit in (20, 100, 240):
            old_clock, new_clock = FakeClock(), FakeClock()
            expected = run(PreviousChunker(limit, old_clock), old_clock, deltas, [0.2])
            assert run(SentenceChunker(limit, new_clock), new_clock, deltas, [0.2]) == expected


def test_a_stream_without_a_sentence_end_is_linear_and_bounded() -> None:
    """300 KB in small deltas, never a sentence end: fast, and the buffer stays bounded.

    The previous chunker re-split its whole buffer on every delta: this took tens of seconds
    (blocking the event loop for everyone) and buffered all 300 KB.
    """
    chunker = SentenceChunker(240, clock=FakeClock(), max_held_chars=1440)
    delta = "na " * 2  # words, but never a sentence end
    started = time.perf_counter()
    held: list[int] = []
    for _ in range(STREAM_CHARS // len(delta)):
        assert chunker.feed(delta) == []
        held.append(chunker.held_chars)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"{elapsed:.1f}s for {STREAM_CHARS} chars"
    assert chunker.full
    assert max(held) <= 1440
    (chunk,) = chunker.finish()
    assert chunk.startswith("na na") and len(chunk) <= 1440


def test_one_endless_word_is_linear_too() -> None:
    """No whitespace at all (one 300 KB "word"), with the default bound."""
    chunker = SentenceChunker(240, clock=FakeClock())
    started = time.perf_counter()
    for _ in range(STREAM_CHARS // 3):
        chunker.feed("!!a")
    assert time.perf_counter() - started < 2.0
    assert chunker.full and chunker.held_chars <= MAX_INPUT_CHARS
    assert MAX_INPUT_CHARS - 2 <= len(chunker.finish()[0]) <= MAX_INPUT_CHARS


def test_the_scanner_alone_is_linear_in_a_long_sentence() -> None:
    scanner = SentenceScanner()
    started = time.perf_counter()
    for _ in range(STREAM_CHARS // 4):
        assert scanner.feed("Dr. ") == []  # never a sentence end
    assert time.perf_counter() - started < 2.0
    assert scanner.chars == STREAM_CHARS - 1
    (sentence,) = scanner.finish()
    assert len(sentence) == STREAM_CHARS - 1


def test_ordinary_streams_never_fill_the_chunker() -> None:
    chunker = SentenceChunker(100, clock=FakeClock(), max_held_chars=600)
    sentence = "The hero kicks the villain through a very convenient stack of boxes. "
    chunks: list[str] = []
    for word in (sentence * 200).split(" "):
        chunks += chunker.feed(word + " ")
    chunks += chunker.finish()
    assert not chunker.full
    assert " ".join(chunks).split() == (sentence * 200).split()


def test_full_keeps_what_fits_and_ignores_the_rest() -> None:
    chunker = SentenceChunker(40, clock=FakeClock(), max_held_chars=50)
    assert chunker.feed("One. Two. " + "x" * 100) == ["One. Two."]
    assert chunker.full
    assert chunker.feed("Three. Four. Five. ") == []
    assert chunker.finish() == ["x" * 39]  # 50 held at most, less a space for a gap


def test_ends_sentence_reads_one_word() -> None:
    assert ends_sentence("boxes.", "T")
    assert not ends_sentence("Dr.", "W")
    assert not ends_sentence("etc.", "a") and ends_sentence("etc.", "T")
    assert not ends_sentence("Wait...", "s") and ends_sentence("Wait...", "S")
    assert ends_sentence('"Run!"', "s")
    assert not ends_sentence("J.", "R")
    assert not ends_sentence("3.5", "x") and not ends_sentence("word", "x")
    assert ends_sentence("x" * 100 + ".", "Y")
    started = time.perf_counter()
    assert ends_sentence("!" * STREAM_CHARS + '"', "a")
    assert not ends_sentence("!" * STREAM_CHARS + "a", "a")
    assert time.perf_counter() - started < 1.0
