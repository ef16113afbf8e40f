"""OutputGuard: command neutralisation, Unicode look-alikes, blocklist and link policy."""

from __future__ import annotations

import logging
import time

import pytest
from pydantic import ValidationError

from kryten_llm.config import (
    MessageProcessingSettings,
    PersonalitySettings,
    SafetySettings,
    Settings,
)
from kryten_llm.reply._text import utf16_len
from kryten_llm.reply.formatter import ResponseFormatter
from kryten_llm.reply.guard import (
    GuardDecision,
    GuardResult,
    OutputGuard,
    command_prefixes,
    fold,
    is_command_like,
    link_host,
)
from tests.adversarial_outputs import (
    ADVERSARIAL_OUTPUTS,
    ENGLAND,
    GUARD_CASE_SAFETY,
    GUARD_CASES,
    SCOTLAND,
    WALES,
)

PREFIXES = ["/", "!", "."]


def guard(processing: MessageProcessingSettings | None = None, **safety: object) -> OutputGuard:
    return OutputGuard(processing or MessageProcessingSettings(), SafetySettings(**safety))


def assert_publishable(result: GuardResult, processing: MessageProcessingSettings) -> None:
    """The invariants every published part must satisfy."""
    if result.blocked:
        assert result.parts == []
        return
    assert 1 <= len(result.parts) <= processing.max_parts
    for part in result.parts:
        assert part.strip(), part
        assert utf16_len(part) <= processing.max_message_length
        assert not is_command_like(part, command_prefixes(processing)), part
        assert "\n" not in part
        part.encode("utf-16-le")  # no lone surrogates


# --- is_command_like ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "/clear",
        " /clear",
        "\n/clear",
        "\x00/clear",
        "\u200b/clear",
        "\u202e/clear",
        "／clear",
        "∕clear",
        "⁄clear",
        "⧸clear",
        "᜵clear",
        "!skip",
        "！skip",
        "ǃskip",
        ".help",
        "\u3164/clear",
        "\u0301/clear",
    ],
)
def test_command_like(text: str) -> None:
    assert is_command_like(text, PREFIXES)


@pytest.mark.parametrize(
    "text",
    ["hello /clear", "me /clear", "a/b", "", "   ", "&#47;clear", "ok!", "1.5 stars"],
)
def test_not_command_like(text: str) -> None:
    assert not is_command_like(text, PREFIXES)


def test_command_like_respects_configured_prefixes() -> None:
    assert not is_command_like("!skip", ["/"])
    assert is_command_like("/clear", [])  # CyTube's own prefix is always checked
    assert is_command_like("$points", ["/", "$"])
    assert is_command_like("!!points", ["!!"])
    assert not is_command_like("!points", ["!!"])


def test_slash_is_neutralised_even_if_not_configured() -> None:
    processing = MessageProcessingSettings(command_prefixes=["!"])
    assert command_prefixes(processing) == ["/", "!"]
    assert guard(processing).check(["/clear now", "!skip"]).parts == ["clear now", "skip"]
    assert command_prefixes(MessageProcessingSettings(command_prefixes=[])) == ["/"]


def test_non_text_part_is_dropped_not_crashed_on() -> None:
    result = guard().check([None, 42, "ok then"])  # type: ignore[list-item]
    assert result.parts == ["ok then"]
    assert [d.action for d in result.decisions] == ["dropped", "dropped"]


def test_safety_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRYTEN_LLM_SAFETY_LINK_POLICY", "allow")
    monkeypatch.setenv("KRYTEN_LLM_SAFETY_BLOCKED_WORDS", '["darn"]')
    monkeypatch.setenv("KRYTEN_LLM_VALIDATION_ON_REFUSAL", "silent")
    settings = Settings()
    assert settings.safety.link_policy == "allow"
    assert settings.safety.blocked_words == ["darn"]
    assert settings.validation.on_refusal == "silent"


def test_fold_maps_lookalikes_nfkc_leaves_alone() -> None:
    assert fold("∕⁄⧸᜵／") == "/////"


# --- neutralisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/clear", None),
        ("/kick Alice", "kick Alice"),
        ("/me /clear", "me /clear"),
        ("/sp /kick x", "sp /kick x"),
        ("//clear now", "clear now"),
        ("\u200b ／kick bob", "kick bob"),
        ("!skip this one", "skip this one"),
        ("...and then", "and then"),
        (" ! . / clear it", "clear it"),
        ("∕clear it", "clear it"),
    ],
)
def test_leading_command_characters_are_dropped(raw: str, expected: str | None) -> None:
    result = guard().check([raw])
    if expected is None:  # "/clear" -> "clear": still readable, never executable
        assert result.parts == ["clear"]
    else:
        assert result.parts == [expected]
    assert any(d.action == "neutralised" for d in result.decisions)


def test_neutralised_part_that_becomes_empty_is_dropped() -> None:
    result = guard().check(["/ / /", "Real text."])
    assert result.parts == ["Real text."]
    assert any(d.action == "dropped" for d in result.decisions)


def test_nothing_left_is_blocked() -> None:
    result = guard().check(["/ / /", "\u200b", ""])
    assert result.blocked and result.parts == []
    assert result.decisions[-1].action == "blocked"
    assert guard().check([]).blocked


def test_safe_text_passes_unchanged_with_no_decisions() -> None:
    result = guard().check(["Nice kick!", "Dr. No is 3.5 stars."])
    assert result == GuardResult(["Nice kick!", "Dr. No is 3.5 stars."], [], False)


def test_guard_publishes_the_normalised_text() -> None:
    result = guard().check(["Ｆｕｌｌｗｉｄｔｈ\x07 text\u200b here"])
    assert result.parts == ["Fullwidth text here"]


# --- last line of defence: unformatted and over-long input ------------------------------------


def test_over_long_unformatted_part_is_resplit_and_each_piece_checked() -> None:
    processing = MessageProcessingSettings()
    text = "x" * 237 + " /clear and more words follow here."
    result = guard(processing).check([text])
    assert_publishable(result, processing)
    assert result.parts[1] == "clear and more words follow here."
    assert any(d.action == "resplit" for d in result.decisions)


def test_nfkc_expansion_past_the_limit_is_resplit() -> None:
    processing = MessageProcessingSettings()
    result = guard(processing).check(["㍱" * 200])  # each becomes "hPa"
    assert_publishable(result, processing)
    assert "".join(p.removesuffix("...") for p in result.parts) == "hPa" * 200


def test_too_many_parts_are_truncated() -> None:
    processing = MessageProcessingSettings(max_parts=2)
    result = guard(processing).check(["one", "two", "three"])
    assert result.parts == ["one", "two"]
    assert any(d.action == "truncated" for d in result.decisions)


def test_small_limit_is_respected_after_neutralisation() -> None:
    processing = MessageProcessingSettings(max_message_length=20, max_parts=10)
    result = guard(processing).check(["/" + "a" * 100])
    assert_publishable(result, processing)


# --- blocklist ------------------------------------------------------------------------------


def test_blocked_word_blocks_the_whole_reply() -> None:
    result = guard(blocked_words=["darn"]).check(["fine part", "well DARN it"])
    assert result.blocked and result.parts == []
    assert result.decisions[-1] == GuardDecision("blocked", "blocked word")


def test_blocked_word_is_whole_word_only() -> None:
    assert not guard(blocked_words=["ass"]).check(["a classic class"]).blocked


def test_blocked_word_survives_lookalike_and_invisible_tricks() -> None:
    g = guard(blocked_words=["darn"])
    assert g.check(["ｄａｒｎ it"]).blocked
    assert g.check(["d\u200ba\u200br\u200bn it"]).blocked


def test_blocked_pattern_redacts_when_configured() -> None:
    g = guard(blocked_patterns=[r"secret\s+\w+"], blocked_action="redact")
    result = g.check(["the secret plan is here"])
    assert result.parts == ["the is here"]
    assert result.decisions[0].action == "redacted"


def test_redaction_that_leaves_nothing_blocks() -> None:
    result = guard(blocked_words=["boo"], blocked_action="redact").check(["boo boo"])
    assert result.blocked


def test_invalid_blocked_pattern_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        SafetySettings(blocked_patterns=["[oops"])


# --- links ------------------------------------------------------------------------------------


def test_link_policy_strip_is_the_default() -> None:
    result = guard().check(["Watch https://example.com/film now."])
    assert result.parts == ["Watch now."]
    assert result.decisions[0].action == "stripped"


def test_link_policy_allow_keeps_links() -> None:
    text = "Watch https://example.com/film now."
    assert guard(link_policy="allow").check([text]).parts == [text]


def test_link_policy_block_blocks_the_reply() -> None:
    result = guard(link_policy="block").check(["See www.example.com please"])
    assert result.blocked


def test_blocked_domain_is_never_posted_even_when_links_are_allowed() -> None:
    g = guard(link_policy="allow", blocked_link_domains=["evil.com"])
    result = g.check(["Go to https://sub.evil.com/x, or evil.com, or good.org/evil.com."])
    joined = " ".join(result.parts)
    assert "evil.com" not in joined.replace("good.org/", "")
    assert "good.org" in joined


def test_blocked_domain_with_ideographic_dots_and_fullwidth() -> None:
    g = guard(link_policy="allow", blocked_link_domains=["evil.com"])
    for text in ["visit evil。com today", "visit ｅｖｉｌ．ｃｏｍ today", "visit EVIL.COM today"]:
        assert g.check([text]).parts == ["visit today"], text


def test_allowed_link_domains() -> None:
    g = guard(link_policy="allow", allowed_link_domains=["imdb.com"])
    result = g.check(["See https://www.imdb.com/title/1 and https://spam.net/x"])
    assert result.parts == ["See https://www.imdb.com/title/1 and"]


def test_link_host_handles_odd_input() -> None:
    assert link_host("https://User@Sub.Example.COM:8080/x") == "sub.example.com"
    assert link_host("www.example.com.") == "www.example.com"
    assert link_host("http://[::1") == ""
    assert link_host("https://xn--bcher-kva.example/") == "bücher.example"


def test_domain_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        SafetySettings(blocked_link_domains=["https://evil.com/"])
    assert SafetySettings(blocked_link_domains=["*.Evil.COM"]).blocked_link_domains == ["evil.com"]


# --- logging ------------------------------------------------------------------------------------


def test_decisions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="kryten_llm.reply.guard"):
        guard().check(["/clear https://x.com"])
    messages = [r.getMessage() for r in caplog.records]
    assert any("neutralised" in m for m in messages)
    assert any("stripped" in m for m in messages)


# --- the adversarial corpus through formatter + guard -------------------------------------------


def test_corpus_is_large_enough_and_well_formed() -> None:
    names = [name for name, _ in ADVERSARIAL_OUTPUTS]
    assert len(ADVERSARIAL_OUTPUTS) >= 40
    assert len(names) == len(set(names))
    assert all(isinstance(text, str) for _, text in ADVERSARIAL_OUTPUTS)


@pytest.mark.parametrize(
    "max_length", [240, 20, 320], ids=["cytube-default", "tiny", "newer-servers"]
)
@pytest.mark.parametrize(
    ("name", "text"), ADVERSARIAL_OUTPUTS, ids=[n for n, _ in ADVERSARIAL_OUTPUTS]
)
def test_adversarial_output_is_safe(name: str, text: str, max_length: int) -> None:
    processing = MessageProcessingSettings(max_message_length=max_length)
    formatter = ResponseFormatter(processing, PersonalitySettings())
    result = OutputGuard(processing, SafetySettings()).check(formatter.format(text))
    assert_publishable(result, processing)


@pytest.mark.parametrize(
    ("name", "text"), ADVERSARIAL_OUTPUTS, ids=[n for n, _ in ADVERSARIAL_OUTPUTS]
)
def test_adversarial_output_is_safe_through_the_guard_alone(name: str, text: str) -> None:
    processing = MessageProcessingSettings()
    assert_publishable(OutputGuard(processing, SafetySettings()).check([text]), processing)


def test_command_in_second_sentence_is_neutralised_at_start_of_part_two() -> None:
    text = dict(ADVERSARIAL_OUTPUTS)["second_sentence_at_part_two"]
    processing = MessageProcessingSettings()
    parts = ResponseFormatter(processing, PersonalitySettings()).format(text)
    assert parts[1].startswith("/kick")  # the formatter alone would have sent a command
    result = OutputGuard(processing, SafetySettings()).check(parts)
    assert result.parts[1] == "kick Alice is what I would do."


def test_link_scanning_is_linear_on_hostile_text() -> None:
    """An unbounded scheme pattern took seconds on "a.a.a..." (quadratic); generous bound."""
    g = guard(link_policy="allow", blocked_link_domains=["evil.com"])
    started = time.monotonic()
    for hostile in ["a." * 100_000, "a-" * 100_000, "x.y" * 70_000]:
        g._apply_link_policy(hostile, [])
    assert time.monotonic() - started < 10.0


# --- guard cases with an expected result (disguised domains, subdivision flags) ----------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [case[1:] for case in GUARD_CASES],
    ids=[case[0] for case in GUARD_CASES],
)
def test_guard_cases_publish_exactly_what_is_expected(output: str, expected: str | None) -> None:
    """As a reply travels: the formatter, then the guard, under the cases' safety settings."""
    processing = MessageProcessingSettings()
    formatted = ResponseFormatter(processing, PersonalitySettings()).format(output)
    result = guard(processing, **GUARD_CASE_SAFETY).check(formatted)
    assert result.parts == ([] if expected is None else [expected])
    assert_publishable(result, processing)


def test_subdivision_flags_survive_the_emoji_limit_whole() -> None:
    """With `max_emojis`, a flag is one emoji: kept or dropped whole, never cut to a black flag."""
    processing = MessageProcessingSettings(max_emojis=2)
    text = f"{ENGLAND} {SCOTLAND} {WALES} derby"
    formatted = ResponseFormatter(processing, PersonalitySettings()).format(text)
    assert guard(processing).check(formatted).parts == [f"{ENGLAND} {SCOTLAND} derby"]


def test_disguised_domains_are_found_in_linear_time() -> None:
    hostile = ["[" * 20_000, " dot " * 4_000, "a" + " ." * 10_000 + "b", "x" * 20_000 + ".evil"]
    checker = guard(**GUARD_CASE_SAFETY)
    for text in hostile:
        started = time.perf_counter()
        checker.check([text])
        assert time.perf_counter() - started < 1.0, text[:20]
