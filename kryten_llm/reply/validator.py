"""Reply validation: refuse replies that are empty, out of bounds, repetitive or off-topic.

The validator only decides; the caller acts on `refusal_action` (regenerate once, send the
configured fallback, or stay silent). It remembers the bot's recent replies per room
(`ChannelKey`), in a bounded history (at most `history_size` replies for at most
`max_channels` rooms).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Literal

from kryten_llm.config import ValidationSettings
from kryten_llm.reply._text import utf16_len
from kryten_llm.types import ChannelKey

log = logging.getLogger(__name__)

RefusalAction = Literal["regenerate", "fallback", "silent"]

# Similarity is measured on words, over at most this many: enough to tell replies apart, and it
# keeps the O(n*m) comparison cheap for long replies.
MAX_COMPARED_WORDS = 200

_WORD = re.compile(r"\w+")
# Words that carry no topic: ignored by the relevance check.
_STOPWORD_TEXT = """
a an and are as at be but by do does for from had has have he her his how i if in is it its me
my no not of on or our she so that the their them then there they this to too us was we were
what when where which who why will with you your yours can could would should just about any
some all get got like really very hey hi hello ok okay yes yeah lol
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


@dataclass(frozen=True)
class Verdict:
    """`ok` False means refuse the reply; `reason` says why (for the log)."""

    ok: bool
    reason: str = ""


def normalise_for_comparison(text: str) -> str:
    """Case, width, punctuation and spacing do not make a reply new (first words only)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_WORD.findall(folded)[:MAX_COMPARED_WORDS])


def content_words(text: str) -> set[str]:
    """The words of `text` that say what it is about."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    return {w for w in words if len(w) > 2 and w not in _STOPWORDS}


class ReplyValidator:
    """Decides whether one reply may be sent, and remembers what was sent."""

    def __init__(self, settings: ValidationSettings) -> None:
        self._settings = settings
        self._history: OrderedDict[ChannelKey, deque[str]] = OrderedDict()
        words = [w.strip() for w in settings.blocked_words if w.strip()]
        self._blocked_words = (
            re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)", re.I)
            if words
            else None
        )
        self._blocked_patterns = [re.compile(p, re.IGNORECASE) for p in settings.blocked_patterns]

    def validate(self, channel: ChannelKey, reply: str, user_message: str = "") -> Verdict:
        """Check, in order: empty, length, blocklist, repetition, relevance."""
        if not self._settings.enabled:
            return Verdict(True)
        verdict = self._check(channel, reply.strip(), user_message)
        if not verdict.ok:
            log.info("reply refused in %s: %s", channel, verdict.reason)
        return verdict

    def remember(self, channel: ChannelKey, reply: str) -> None:
        """Record a reply that was sent, for the repetition check (bounded per channel)."""
        size = self._settings.history_size
        normalised = normalise_for_comparison(reply)
        if size == 0 or not normalised:
            return
        history = self._history.get(channel)
        if history is None:
            history = self._history[channel] = deque(maxlen=size)
            while len(self._history) > self._settings.max_channels:
                self._history.popitem(last=False)
        self._history.move_to_end(channel)
        history.append(normalised)

    def refusal_action(self, regenerated: bool = False) -> RefusalAction:
        """What to do about a refused reply.

        `regenerate` is tried once; if the regenerated reply is refused too, the fallback is sent
        when one is configured, otherwise the bot stays silent.
        """
        action = self._settings.on_refusal
        if action == "regenerate" and regenerated:
            return "fallback" if self._settings.fallback_response.strip() else "silent"
        return action

    @property
    def fallback_response(self) -> str:
        """The configured fallback text (it must still go through the formatter and guard)."""
        return self._settings.fallback_response

    def history_size(self, channel: ChannelKey) -> int:
        """How many replies are remembered for `channel` (for tests and diagnostics)."""
        return len(self._history.get(channel, ()))

    @property
    def channel_count(self) -> int:
        return len(self._history)

    # --- checks -----------------------------------------------------------------------------------

    def _check(self, channel: ChannelKey, reply: str, user_message: str) -> Verdict:
        settings = self._settings
        if not reply:
            return Verdict(False, "empty reply")
        length = utf16_len(reply)
        if length < settings.min_length:
            return Verdict(False, f"too short ({length} < {settings.min_length})")
        if length > settings.max_length:
            return Verdict(False, f"too long ({length} > {settings.max_length})")
        if self._is_inappropriate(reply):
            return Verdict(False, "inappropriate content")
        similar = self._most_similar(channel, reply)
        if similar is not None:
            return Verdict(False, f"too similar to a recent reply ({similar:.2f})")
        if settings.relevance_check:
            return self._relevance(reply, user_message)
        return Verdict(True)

    def _is_inappropriate(self, reply: str) -> bool:
        folded = unicodedata.normalize("NFKC", reply)
        if self._blocked_words is not None and self._blocked_words.search(folded):
            return True
        return any(p.search(folded) for p in self._blocked_patterns)

    def _most_similar(self, channel: ChannelKey, reply: str) -> float | None:
        """The word-level similarity to the first recent reply at or over the threshold."""
        history = self._history.get(channel)
        if not history:
            return None
        normalised = normalise_for_comparison(reply)
        words = normalised.split()
        threshold = self._settings.similarity_threshold
        for previous in history:
            if previous == normalised:
                return 1.0
            matcher = SequenceMatcher(None, previous.split(), words, autojunk=False)
            if matcher.real_quick_ratio() < threshold or matcher.quick_ratio() < threshold:
                continue
            ratio = matcher.ratio()
            if ratio >= threshold:
                return ratio
        return None

    def _relevance(self, reply: str, user_message: str) -> Verdict:
        """Share of the user's content words echoed in the reply; no content words passes."""
        wanted = content_words(user_message)
        if not wanted:
            return Verdict(True)
        overlap = len(wanted & content_words(reply)) / len(wanted)
        if overlap < self._settings.min_relevance:
            return Verdict(False, f"off-topic (word overlap {overlap:.2f})")
        return Verdict(True)
