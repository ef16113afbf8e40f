"""Decide whether a chat line asks for the bot: a direct mention, or a configured trigger word.

Mentions always win. Among trigger words the highest `priority` wins, then its `probability`
is rolled with an injectable random source so tests (and `replay`) are reproducible. Patterns
are compiled once per configuration; a plain pattern matches as a whole word, case-insensitively
("toddy" does not fire on "toddyfoo"), and a pattern starting with `re:` is a regular expression.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from kryten_llm.config import TriggerSettings
from kryten_llm.types import Trigger

REGEX_PREFIX = "re:"


def word_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex matching any of `words` as a whole word (longest first)."""
    alternatives = sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True)
    if not alternatives:
        return None
    body = "|".join(re.escape(w) for w in alternatives)
    # \w-boundaries that also work for names starting or ending in non-word characters.
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)


def compile_patterns(patterns: Iterable[str]) -> re.Pattern[str]:
    """A trigger's patterns as one regex; raise ValueError naming a bad `re:` pattern."""
    words: list[str] = []
    regexes: list[str] = []
    for pattern in patterns:
        if pattern.startswith(REGEX_PREFIX):
            source = pattern[len(REGEX_PREFIX) :]
            try:
                re.compile(source)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {source!r}: {exc}") from None
            regexes.append(f"(?:{source})")
        else:
            words.append(pattern)
    word_re = word_pattern(words)
    parts = ([word_re.pattern] if word_re else []) + regexes
    if not parts:
        raise ValueError("a trigger needs at least one non-empty pattern")
    return re.compile("|".join(parts), re.IGNORECASE)


class MentionDetector:
    """Finds the bot's own names as whole words and removes them from the text for the LLM."""

    def __init__(self, names: Iterable[str]) -> None:
        pattern = word_pattern(names)
        if pattern is None:
            raise ValueError("the bot needs at least one name to be mentioned by")
        self._pattern = pattern
        # A name plus the punctuation that usually glues it to the message ("bot, hi", "@bot:").
        self._strip = re.compile(rf"@?(?:{pattern.pattern})[,:;!?.]*", re.IGNORECASE)

    def mentions(self, text: str) -> bool:
        return self._pattern.search(text) is not None

    def remove_names(self, text: str) -> str:
        """The message without the bot's name; the original if nothing else would remain."""
        stripped = " ".join(self._strip.sub(" ", text).split()).strip(" ,:;")
        return stripped or text


@dataclass(frozen=True)
class _CompiledTrigger:
    settings: TriggerSettings
    regex: re.Pattern[str]


class TriggerEngine:
    """Mention first, then the highest-priority matching trigger word, then its dice roll."""

    def __init__(
        self,
        bot_names: Iterable[str],
        triggers: Iterable[TriggerSettings],
        rng: random.Random | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.mentions = MentionDetector(bot_names)
        compiled = [
            _CompiledTrigger(t, compile_patterns(t.patterns)) for t in triggers if t.enabled
        ]
        # Stable sort: equal priorities keep their configured order.
        self._triggers = sorted(compiled, key=lambda c: -c.settings.priority)

    def evaluate(self, text: str) -> Trigger | None:
        """The trigger this text fires, or None (no match, or the probability roll said no)."""
        if self.mentions.mentions(text):
            return Trigger(kind="mention", name="mention", message=self.mentions.remove_names(text))
        for compiled in self._triggers:
            if not compiled.regex.search(text):
                continue
            trigger = compiled.settings
            # Only the best match rolls: a lower-priority trigger is not a second chance.
            if self.rng.random() >= trigger.probability:
                return None
            return Trigger(
                kind="trigger_word",
                name=trigger.name,
                message=text,
                context=trigger.context,
                response_style=trigger.response_style,
                provider=trigger.provider,
                priority=trigger.priority,
            )
        return None

    def settings_for(self, name: str) -> TriggerSettings | None:
        for compiled in self._triggers:
            if compiled.settings.name == name:
                return compiled.settings
        return None
