"""Shape an LLM reply into CyTube chat lines: clean it up, then split it into short parts.

`clean` removes what chat cannot show or should not show (code fences, markdown headings and
lists, "As an AI, ..." openings, "Sure! Here's ...:" preambles, wrapping quotes, invisible
characters, surplus emoji). `split` cuts the result into at most `max_parts` parts of at most
`max_message_length` UTF-16 units, preferring sentence boundaries, then word boundaries, and
hard-cutting only a single word that cannot fit on a line by itself.

The formatter makes text *pleasant*; it does not make it *safe*. Every part still goes through
:class:`kryten_llm.reply.guard.OutputGuard`, which is the security boundary.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterator

from kryten_llm.config import MessageProcessingSettings, PersonalitySettings
from kryten_llm.redact import redact_text
from kryten_llm.reply._text import (
    collapse_whitespace,
    controls_to_spaces,
    remove_invisible,
    utf16_cut,
    utf16_len,
)

log = logging.getLogger(__name__)

# Work on at most this much model output: ten 1000-unit parts need far less, and it bounds the
# cost of a runaway reply.
MAX_INPUT_CHARS = 20_000
# Openings are stripped repeatedly ("Sure! Here's my reply: As an AI, ..."), but not forever.
MAX_OPENING_PASSES = 5

# Never a sentence end, whatever follows ("Dr. No", "e.g. Bruce Lee").
_TITLE_ABBREVIATIONS = frozenset(
    {"dr", "mr", "mrs", "ms", "prof", "st", "mt", "sgt", "capt", "lt", "col", "gen", "rev"}
    | {"e.g", "i.e", "vs", "cf", "approx", "no", "fig", "vol", "ch", "pt", "ft", "jr", "sr"}
)
# A sentence end only when a capital letter follows ("... and so on, etc. Then").
_SOFT_ABBREVIATIONS = frozenset({"etc", "inc", "ltd", "co", "a.m", "p.m", "u.s", "u.k", "al"})

_WORD_BEFORE = re.compile(r"(\S+?)[.!?…]*$")
# A sentence end: terminal punctuation, then optional closing quotes or brackets.
_TERMINALS = ".!?…"
_CLOSERS = "\"'”’»)]"
_WORD_BEFORE_CHARS = 40
"""How far back `_is_sentence_end` looks for the word before the punctuation."""

_LINK_START = re.compile(r"(?i)(?:(?:https?|ftp)://|www\.)")
# An info string ("```bash") exists only when a newline follows it; "```kick him```" on one line
# is code whose text must be kept, not an info string to drop.
_CODE_FENCE = re.compile(r"```(?:[^\n`]{0,200}\n)?(.*?)(?:```|\Z)", re.DOTALL)
# Every repetition in these patterns is bounded: unbounded ones go quadratic on hostile input
# such as "**a **a **a ..." (a 50,000-character reply then takes seconds, blocking the loop).
_IMAGE = re.compile(r"!\[([^\]\n]{0,200})\]\(([^)\s]{0,1000})\)")
_MD_LINK = re.compile(r"\[([^\]\n]{1,200})\]\(([^)\s]{1,1000})\)")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_BLOCKQUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*[-*+•][ \t]+", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_DOUBLE_STAR = re.compile(r"\*\*(?=\S)([^*\n]{1,200}?)(?<=\S)\*\*")
_DOUBLE_UNDERSCORE = re.compile(r"(?<!\w)__(?=\S)([^_\n]{1,200}?)(?<=\S)__(?!\w)")

_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "「": "」"}


class ResponseFormatter:
    """Turns one raw model reply into the chat lines that will be offered to the guard."""

    def __init__(
        self, processing: MessageProcessingSettings, personality: PersonalitySettings
    ) -> None:
        self._processing = processing
        self._self_reference = _self_reference_pattern(personality)
        self._artifacts = [re.compile(p, re.IGNORECASE) for p in processing.artifact_patterns]

    def format(self, text: str) -> list[str]:
        """Clean, redact, then split. An empty list means nothing worth saying was left.

        Redacting before the split matters: a secret glued inside a word too long for a line
        would be cut in two, and neither half would be recognised afterwards.
        """
        return self.split(redact_text(self.clean(text)))

    def clean(self, text: str) -> str:
        """Cleanup only; keeps single newlines (paragraph breaks) for `split` to use."""
        if len(text) > MAX_INPUT_CHARS:
            log.info("reply of %d chars cut to %d before formatting", len(text), MAX_INPUT_CHARS)
            text = text[:MAX_INPUT_CHARS]
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        # NFKC here too (the guard publishes NFKC text), so lengths measured now still hold.
        text = unicodedata.normalize("NFKC", remove_invisible(text))
        text = remove_invisible(controls_to_spaces(text, keep_newlines=True))
        if self._processing.strip_markdown:
            text = strip_markdown(text)
        text = collapse_whitespace(text, keep_newlines=True)
        text = self._strip_openings(text)
        if self._processing.max_emojis is not None:
            text = limit_emojis(text, self._processing.max_emojis)
        return collapse_whitespace(text, keep_newlines=True)

    def split(self, text: str) -> list[str]:
        """Split only: parts within the length limit, at most `max_parts` of them."""
        return split_text(
            text,
            self._processing.max_message_length,
            self._processing.continuation_indicator,
            self._processing.max_parts,
        )

    def _strip_openings(self, text: str) -> str:
        """Remove self-references, preambles and wrapping quotes until none is left."""
        original = text
        for _ in range(MAX_OPENING_PASSES):
            before = text
            if self._processing.strip_self_references:
                text = self._self_reference.sub("", text, count=1).lstrip()
            for pattern in self._artifacts:
                text = pattern.sub("", text, count=1).lstrip()
            text = strip_wrapping_quotes(text)
            if text == before:
                break
        if text != original and text[:1].islower():
            text = text[0].upper() + text[1:]
        return text


def _self_reference_pattern(personality: PersonalitySettings) -> re.Pattern[str]:
    """Openings in which the bot names itself: 'As Cynthia Rothrock, ', 'As an AI, ', 'Bot: '."""
    names = _name_patterns(personality)
    ai = (
        r"(?:an?\s+|the\s+)?(?:(?:large\s+)?language\s+model|(?:AI|artificial\s+intelligence)"
        r"(?:\s+(?:language\s+model|assistant|chat\s*bot|model))?|chat\s*bot|virtual\s+assistant"
        r"|bot)(?:\s+(?:developed|created|made|trained)\s+by\s+[\w .-]{1,30}?)?"
    )
    me = r"(?:" + "|".join(names) + r")(?:\s+(?:myself|herself|himself|here))?"
    opening = rf"(?:as|being)\s+(?:{ai}|{me})\s*[,:;—–]\s*"
    speaker = rf"(?:{me})\s*:\s*"
    return re.compile(rf"^(?:{opening}|{speaker})", re.IGNORECASE)


def _name_patterns(personality: PersonalitySettings) -> list[str]:
    """The bot's name as it may appear: whole, camel-case split, and its variations joined."""
    forms: set[tuple[str, ...]] = set()
    name = personality.character_name.strip()
    forms.add(tuple(name.split()))
    forms.add(tuple(re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name)) or (name,))
    variations = [v.strip() for v in personality.name_variations if v.strip()]
    forms.update((v,) for v in variations)
    if len(variations) > 1:
        forms.add(tuple(" ".join(variations).split()))
    patterns = {r"\s*".join(re.escape(w) for w in form) for form in forms if form}
    return sorted(patterns, key=len, reverse=True)


def strip_markdown(text: str) -> str:
    """Remove markdown chat cannot render; keep what CyTube's own filters render.

    CyTube's default chat filters render `*bold*`, `_italic_`, `~~strike~~` and backtick code,
    so those stay (doubled markers become single); fences, headings, list bullets, quotes and
    rules are removed, and links become 'text url' so the link policy can see the URL.
    """
    text = _CODE_FENCE.sub(lambda m: "\n" + m.group(1).strip() + "\n", text)
    text = text.replace("```", "")
    text = _IMAGE.sub(lambda m: m.group(1) or m.group(2), text)
    text = _MD_LINK.sub(_link_text, text)
    text = _RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _BLOCKQUOTE.sub("", text)
    text = _BULLET.sub("", text)
    text = _DOUBLE_STAR.sub(r"*\1*", text)
    return _DOUBLE_UNDERSCORE.sub(r"_\1_", text)


def _link_text(match: re.Match[str]) -> str:
    label, url = match.group(1).strip(), match.group(2)
    return url if label == url else f"{label} {url}"


def strip_wrapping_quotes(text: str) -> str:
    """'"Hello there"' -> 'Hello there', only when the quotes wrap the whole reply."""
    text = text.strip()
    if len(text) < 2:
        return text
    closer = _QUOTE_PAIRS.get(text[0])
    if closer is None or text[-1] != closer:
        return text
    inner = text[1:-1]
    if text[0] in inner or closer in inner:
        return text
    return inner.strip()


def limit_emojis(text: str, maximum: int) -> str:
    """Keep the first `maximum` emoji (whole sequences, as the `emoji` package finds them)."""
    import emoji  # only when an emoji limit is set: the package costs memory at start-up

    found = emoji.emoji_list(text)
    if len(found) <= maximum:
        return text
    out: list[str] = []
    position = 0
    for item in found[maximum:]:
        out.append(text[position : item["match_start"]])
        position = item["match_end"]
    out.append(text[position:])
    log.debug("removed %d emoji over the limit of %d", len(found) - maximum, maximum)
    return collapse_whitespace("".join(out), keep_newlines=True)


# --- splitting ---------------------------------------------------------------------------------


def split_text(text: str, limit: int, indicator: str, max_parts: int) -> list[str]:
    """Pack sentences into parts of at most `limit` UTF-16 units, at most `max_parts` of them.

    A sentence longer than a part is split between words, and each part cut mid-sentence ends
    with `indicator` (counted inside the limit). Parts never contain newlines.
    """
    indicator = indicator if utf16_len(indicator) * 2 < limit else ""
    parts: list[str] = []
    current = ""
    room = limit - utf16_len(indicator)
    for sentence in iter_sentences(text[:MAX_INPUT_CHARS]):
        if len(parts) >= max_parts:
            break
        if utf16_len(sentence) > room:
            sentence = _drop_long_links(sentence, room)
            if not sentence:
                continue
        candidate = f"{current} {sentence}" if current else sentence
        if utf16_len(candidate) <= limit:
            current = candidate
            continue
        if current:
            parts.append(current)
        current = sentence
        if utf16_len(sentence) > limit:
            chunks, complete = _split_long(sentence, limit, indicator, max_parts - len(parts))
            if not complete:
                parts.extend(chunks)
                current = ""
                break
            parts.extend(chunks[:-1])
            current = chunks[-1] if chunks else ""
    if current and len(parts) < max_parts:
        parts.append(current)
    kept = [p for p in parts[:max_parts] if p]
    if utf16_len(" ".join(kept)) + 1 < utf16_len(collapse_whitespace(text)):
        log.debug("reply truncated to %d part(s) of at most %d units", max_parts, limit)
    return kept


def iter_sentences(text: str) -> Iterator[str]:
    """Sentences with collapsed whitespace; a newline always ends one.

    Linear in the text (see `SentenceScanner`): a hostile reply such as 20,000 "!" and a
    word cannot make it backtrack.
    """
    scanner = SentenceScanner()
    yield from scanner.feed(text)
    yield from scanner.finish()


def ends_sentence(word: str, following: str) -> bool:
    """Whether `word` ends its sentence when the next word (on its line) starts with `following`.

    `SentenceScanner` asks once per word, as soon as the next word begins. `word` has no
    whitespace. Linear in its length (no regex: a long run of "!!!!" cannot backtrack).
    """
    body = word.rstrip(_CLOSERS)
    run = len(body) - len(body.rstrip(_TERMINALS))
    if run == 0:
        return False
    punct_start = len(body) - run
    start = max(0, punct_start - _WORD_BEFORE_CHARS)
    return _is_sentence_end(f"{word[start:]} {following}", punct_start - start, len(word) - start)


class SentenceScanner:
    """Sentences of a text that may arrive in pieces, looking at each piece only once.

    A sentence ends after a word with terminal punctuation (optionally closed by quotes or
    brackets) unless `ends_sentence` says it is an abbreviation, an initial or a run-on
    ellipsis; the next word's first character decides, so a sentence is complete when that
    word begins, or when its line ends. Until then its words wait here. Nothing is ever
    re-split: the work is linear in the text fed, however long a sentence grows, and feeding
    a text in any pieces gives the same sentences as `iter_sentences(text)`.
    """

    def __init__(self) -> None:
        self._words: list[str] = []
        """Finished words of the sentence in progress."""
        self._word: list[str] = []
        """Pieces of the word being written (joined once, when it ends)."""
        self._gap = False
        """Whitespace arrived after the last piece: the next text starts a new word."""
        self._words_chars = 0
        self._word_chars = 0

    @property
    def chars(self) -> int:
        """Length of the sentence in progress, with single spaces between its words."""
        gap = 1 if self._words_chars and self._word_chars else 0
        return self._words_chars + gap + self._word_chars

    def feed(self, text: str) -> list[str]:
        """Add text; return the sentences it completed."""
        done: list[str] = []
        for index, line in enumerate(text.split("\n")):
            if index:
                self._end_line(done)
            self._add(line, done)
        return done

    def finish(self) -> list[str]:
        """The text ended: the sentence in progress, if any, is complete."""
        done: list[str] = []
        self._end_line(done)
        return done

    def _add(self, text: str, done: list[str]) -> None:
        words = text.split()
        if words:
            continues = bool(self._word) and not (self._gap or text[0].isspace())
            for index, word in enumerate(words):
                if index == 0 and continues:
                    self._word.append(word)
                    self._word_chars += len(word)
                else:
                    self._start_word(word, done)
        if text:
            self._gap = text[-1].isspace()

    def _start_word(self, word: str, done: list[str]) -> None:
        """A new word begins: now we know whether the one before it ended a sentence."""
        if self._word:
            previous = self._close_word()
            if ends_sentence(previous, word[0]):
                done.append(self._take_sentence())
        self._word = [word]
        self._word_chars = len(word)

    def _close_word(self) -> str:
        word = "".join(self._word)
        self._words_chars = self.chars
        self._words.append(word)
        self._word, self._word_chars = [], 0
        return word

    def _take_sentence(self) -> str:
        sentence = " ".join(self._words)
        self._words, self._words_chars = [], 0
        return sentence

    def _end_line(self, done: list[str]) -> None:
        if self._word:
            self._close_word()
        if self._words:
            done.append(self._take_sentence())
        self._gap = False


def _is_sentence_end(line: str, punct_start: int, end: int) -> bool:
    """False for abbreviations, initials, and an ellipsis that runs on in lower case."""
    punctuation = line[punct_start:end]
    following = line[end:].lstrip()[:1]
    next_is_lower = following.islower()
    if punctuation.startswith(("...", "…")) or punctuation.endswith("…"):
        return not next_is_lower
    if not punctuation.startswith("."):
        return True
    word_match = _WORD_BEFORE.search(line[max(0, punct_start - _WORD_BEFORE_CHARS) : punct_start])
    word = word_match.group(1).lower() if word_match else ""
    word = word.lstrip("\"'“‘(«[")
    if word in _TITLE_ABBREVIATIONS:
        return False
    if len(word) == 1 and word.isalpha():
        return False  # an initial: "J. R. R. Tolkien"
    if word in _SOFT_ABBREVIATIONS:
        return not (next_is_lower or not following)
    return True


def _drop_long_links(sentence: str, room: int) -> str:
    """Remove links too long for a line: half a link is useless and cannot be vetted."""
    words = sentence.split(" ")
    kept = [w for w in words if not (_LINK_START.match(w) and utf16_len(w) > room)]
    if len(kept) != len(words):
        log.debug("dropped %d link(s) too long for one chat line", len(words) - len(kept))
    return " ".join(kept)


def _split_long(
    sentence: str, limit: int, indicator: str, max_chunks: int
) -> tuple[list[str], bool]:
    """Split one over-long sentence between words; hard-cut only a word that fits nowhere.

    Returns the chunks (all but a complete last one end with `indicator`) and
    whether the whole sentence fitted: it stops after `max_chunks` chunks, since the rest
    could never be sent.
    """
    room = limit - utf16_len(indicator)
    words = sentence.split(" ")
    chunks: list[str] = []
    current = ""
    index = 0
    while index < len(words) and len(chunks) < max(max_chunks, 1):
        if _rest_fits(current, words, index, limit):
            return [*chunks, " ".join([current, *words[index:]]).strip()], True
        word = words[index]
        candidate = f"{current} {word}" if current else word
        if utf16_len(candidate) <= room:
            current = candidate
            index += 1
        elif current:
            chunks.append(current + indicator)
            current = ""
        else:
            head = utf16_cut(word, room)
            chunks.append(head + indicator)
            words[index] = word[len(head) :]
    if current and len(chunks) < max(max_chunks, 1):
        chunks.append(current)
        return chunks, True
    return chunks, index >= len(words)


def _rest_fits(current: str, words: list[str], index: int, limit: int) -> bool:
    """Whether `current` plus all remaining words fit in one part (stops counting early)."""
    total = utf16_len(current)
    for word in words[index:]:
        total += utf16_len(word) + (1 if total else 0)
        if total > limit:
            return False
    return True
