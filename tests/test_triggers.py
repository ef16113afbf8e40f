"""Mentions and trigger words: whole words, priorities, seeded probability."""

from __future__ import annotations

import random

import pytest

from kryten_llm.config import TriggerSettings
from kryten_llm.decide.triggers import MentionDetector, TriggerEngine, compile_patterns


def trig(name: str, patterns: list[str], **kw: object) -> TriggerSettings:
    return TriggerSettings(name=name, patterns=patterns, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("hey bot", True),
        ("BOT?", True),
        ("@bot: hi", True),
        ("bot's turn", True),
        ("outbotting", False),
        ("robots", False),
        ("bottle", False),
        ("", False),
    ],
)
def test_mentions_are_whole_words(text: str, hit: bool) -> None:
    assert MentionDetector(["bot"]).mentions(text) is hit


def test_mention_strip_keeps_the_message() -> None:
    detector = MentionDetector(["CynthiaRothbot", "cynthia"])
    assert detector.remove_names("hey CynthiaRothbot, what's up?") == "hey what's up?"
    assert detector.remove_names("@cynthia: tell me a joke") == "tell me a joke"
    assert detector.remove_names("Cynthia") == "Cynthia"  # nothing else left: keep it as it was


def test_names_with_symbols_are_matched_literally() -> None:
    detector = MentionDetector(["c3po.bot", "[AI]"])
    assert detector.mentions("hi c3po.bot!") and detector.mentions("yo [AI]")
    assert not detector.mentions("c3poXbot")


def test_trigger_word_boundaries_and_regex() -> None:
    regex = compile_patterns(["toddy", "re:kung\\s*fu"])
    assert regex.search("I love TODDY")
    assert not regex.search("toddyfoo")
    assert regex.search("kungfu master") and regex.search("Kung  Fu")
    with pytest.raises(ValueError, match="invalid regular expression"):
        compile_patterns(["re:(unclosed"])


def test_mention_beats_trigger_words_and_priority_orders_triggers() -> None:
    engine = TriggerEngine(
        ["bot"],
        [
            trig("low", ["movie"], priority=1, context="low ctx"),
            trig(
                "high",
                ["movie night"],
                priority=9,
                context="high ctx",
                response_style="hype",
                provider="cheap",
            ),
        ],
        rng=random.Random(1),
    )
    mention = engine.evaluate("bot, movie night?")
    assert mention is not None and mention.kind == "mention"
    fired = engine.evaluate("is it movie night?")
    assert fired is not None
    assert (fired.name, fired.context, fired.response_style, fired.provider) == (
        "high",
        "high ctx",
        "hype",
        "cheap",
    )
    low = engine.evaluate("what movie")
    assert low is not None and low.name == "low"
    assert engine.evaluate("nothing here") is None


def test_disabled_triggers_never_fire() -> None:
    engine = TriggerEngine(["bot"], [trig("off", ["pizza"], enabled=False)])
    assert engine.evaluate("pizza time") is None


def test_probability_is_seeded_and_roughly_right() -> None:
    def fired(seed: int) -> int:
        engine = TriggerEngine(
            ["bot"], [trig("t", ["pizza"], probability=0.1)], rng=random.Random(seed)
        )
        return sum(engine.evaluate("pizza!") is not None for _ in range(2000))

    assert fired(7) == fired(7)
    assert 140 <= fired(7) <= 260
    always = TriggerEngine(["bot"], [trig("t", ["pizza"], probability=1.0)])
    assert all(always.evaluate("pizza") for _ in range(100))
    never = TriggerEngine(["bot"], [trig("t", ["pizza"], probability=0.0)])
    assert not any(never.evaluate("pizza") for _ in range(100))
