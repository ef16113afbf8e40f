"""ReplyValidator: refusals for empty, out-of-bounds, repetitive and off-topic replies."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from kryten_llm.config import ValidationSettings
from kryten_llm.reply.validator import ReplyValidator, Verdict, content_words
from kryten_llm.types import ChannelKey

CHANNEL = ChannelKey("cytu.be", "420Grindhouse")


def make(**settings: object) -> ReplyValidator:
    return ReplyValidator(ValidationSettings(**settings))


def test_a_normal_reply_passes() -> None:
    assert make().validate(CHANNEL, "Enter the Dragon still rules.") == Verdict(True)


@pytest.mark.parametrize("reply", ["", "   ", "\n\t"])
def test_empty_reply_is_refused(reply: str) -> None:
    assert make().validate(CHANNEL, reply) == Verdict(False, "empty reply")


def test_length_bounds_in_utf16_units() -> None:
    validator = make(min_length=3, max_length=10)
    assert validator.validate(CHANNEL, "ok").reason == "too short (2 < 3)"
    assert validator.validate(CHANNEL, "x" * 11).reason == "too long (11 > 10)"
    assert validator.validate(CHANNEL, "🥋" * 5).ok  # 10 units
    assert validator.validate(CHANNEL, "🥋" * 6).reason == "too long (12 > 10)"


def test_repetitive_reply_is_refused() -> None:
    validator = make()
    validator.remember(CHANNEL, "That kick was legendary, pure Rothrock style!")
    verdict = validator.validate(CHANNEL, "That kick was LEGENDARY... pure Rothrock style")
    assert not verdict.ok
    assert verdict.reason.startswith("too similar to a recent reply")


def test_near_repeat_is_refused_and_different_reply_passes() -> None:
    validator = make(similarity_threshold=0.8)
    validator.remember(CHANNEL, "I love this movie so much, the fights are amazing.")
    assert not validator.validate(CHANNEL, "I love this movie so much, the fights are great.").ok
    assert validator.validate(CHANNEL, "The soundtrack is a synth masterpiece.").ok


def test_history_is_per_channel_and_case_insensitive() -> None:
    validator = make()
    validator.remember(CHANNEL, "Same reply.")
    assert not validator.validate(ChannelKey("cytu.be", "420GRINDHOUSE"), "Same reply.").ok
    assert validator.validate(ChannelKey("cytu.be", "other"), "Same reply.").ok
    assert validator.validate(ChannelKey("other.example", "420Grindhouse"), "Same reply.").ok


def test_threshold_one_refuses_exact_repeats_only() -> None:
    validator = make(similarity_threshold=1.0)
    validator.remember(CHANNEL, "Nice kick!")
    assert not validator.validate(CHANNEL, "nice   KICK").ok
    assert validator.validate(CHANNEL, "Nice kicks!").ok


def test_history_is_bounded_per_channel() -> None:
    validator = make(history_size=2)
    for reply in ["first reply here", "second thing said", "third one now"]:
        validator.remember(CHANNEL, reply)
    assert validator.history_size(CHANNEL) == 2
    assert validator.validate(CHANNEL, "first reply here").ok  # forgotten
    assert not validator.validate(CHANNEL, "third one now").ok


def test_channel_count_is_bounded() -> None:
    validator = make(max_channels=3)
    for index in range(10):
        validator.remember(ChannelKey("cytu.be", f"chan{index}"), "hello")
    assert validator.channel_count == 3
    assert validator.history_size(ChannelKey("cytu.be", "chan9")) == 1
    assert validator.history_size(ChannelKey("cytu.be", "chan0")) == 0


def test_history_size_zero_disables_the_repetition_check() -> None:
    validator = make(history_size=0)
    validator.remember(CHANNEL, "Same.")
    assert validator.validate(CHANNEL, "Same.").ok


def test_remembering_junk_is_harmless() -> None:
    validator = make()
    validator.remember(CHANNEL, "")
    validator.remember(CHANNEL, "!!! ...")
    assert validator.history_size(CHANNEL) == 0


def test_relevance_check_is_off_by_default() -> None:
    assert make().validate(CHANNEL, "Bananas are yellow.", "what about kung fu movies?").ok


def test_relevance_check_when_enabled() -> None:
    validator = make(relevance_check=True, min_relevance=0.2)
    question = "what do you think of Police Story?"
    assert validator.validate(CHANNEL, "Police Story has the best stunts ever.", question).ok
    verdict = validator.validate(CHANNEL, "Bananas are yellow.", question)
    assert not verdict.ok and verdict.reason.startswith("off-topic")
    assert validator.validate(CHANNEL, "Bananas are yellow.", "hey you!").ok  # nothing to match


def test_content_words() -> None:
    assert content_words("What do YOU think of Police Story?") == {"think", "police", "story"}


def test_inappropriate_content_blocklist() -> None:
    validator = make(blocked_words=["darn"], blocked_patterns=[r"buy\s+now"])
    assert validator.validate(CHANNEL, "Well DARN.").reason == "inappropriate content"
    assert validator.validate(CHANNEL, "Buy   now!").reason == "inappropriate content"
    assert validator.validate(CHANNEL, "Darned good.").ok  # whole words only


def test_disabled_validation_accepts_anything() -> None:
    assert make(enabled=False).validate(CHANNEL, "").ok


def test_refusals_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kryten_llm.reply.validator"):
        make().validate(CHANNEL, "")
    assert "reply refused in cytu.be/420grindhouse: empty reply" in caplog.text


@pytest.mark.parametrize(
    ("on_refusal", "fallback", "regenerated", "expected"),
    [
        ("regenerate", "", False, "regenerate"),
        ("regenerate", "", True, "silent"),
        ("regenerate", "Hmm.", True, "fallback"),
        ("fallback", "Hmm.", False, "fallback"),
        ("fallback", "Hmm.", True, "fallback"),
        ("silent", "", False, "silent"),
    ],
)
def test_refusal_action(on_refusal: str, fallback: str, regenerated: bool, expected: str) -> None:
    validator = make(on_refusal=on_refusal, fallback_response=fallback)
    assert validator.refusal_action(regenerated=regenerated) == expected
    assert validator.fallback_response == fallback


@pytest.mark.parametrize(
    "settings",
    [
        {"on_refusal": "fallback"},
        {"on_refusal": "fallback", "fallback_response": "  "},
        {"on_refusal": "shout"},
        {"min_length": 10, "max_length": 5},
        {"similarity_threshold": 1.5},
        {"blocked_patterns": ["(bad"]},
        {"unknown": 1},
    ],
)
def test_bad_validation_config_is_rejected(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ValidationSettings(**settings)


def test_similarity_on_long_replies_stays_cheap() -> None:
    validator = make(max_length=20_000)
    for index in range(10):
        validator.remember(CHANNEL, f"{index} " + "lorem ipsum dolor " * 500)
    assert not validator.validate(CHANNEL, "9 " + "lorem ipsum dolor " * 500).ok
