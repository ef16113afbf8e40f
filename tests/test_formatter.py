"""ResponseFormatter: cleanup of model artifacts and splitting into CyTube-sized parts."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from kryten_llm.config import MessageProcessingSettings, PersonalitySettings, Settings
from kryten_llm.reply._text import utf16_cut, utf16_len
from kryten_llm.reply.formatter import ResponseFormatter, iter_sentences, split_text, strip_markdown

LIMIT = 240


def make(**processing: object) -> ResponseFormatter:
    return ResponseFormatter(MessageProcessingSettings(**processing), PersonalitySettings())


# --- utf16 helpers ------------------------------------------------------------------------------


def test_utf16_len_counts_astral_characters_twice() -> None:
    assert utf16_len("abc") == 3
    assert utf16_len("é") == 1
    assert utf16_len("🥋") == 2
    assert utf16_len("👨‍👩‍👧") == 8  # three astral emoji and two joiners


def test_utf16_cut_never_splits_a_surrogate_pair() -> None:
    assert utf16_cut("a🥋b", 2) == "a"
    assert utf16_cut("a🥋b", 3) == "a🥋"
    assert utf16_cut("abc", 0) == ""
    assert utf16_cut("abc", 10) == "abc"


# --- splitting ----------------------------------------------------------------------------------


def test_long_response_splits_at_a_sentence_boundary() -> None:
    first = "Enter the Dragon is the gold standard of martial arts cinema. " * 3
    second = "Bruce Lee moves like lightning and the mirror room finale still holds up today."
    parts = make().format(first + second)
    assert len(parts) == 2
    assert parts[0] == first.strip()
    assert parts[1] == second
    assert all(utf16_len(p) <= LIMIT for p in parts)


def test_short_reply_is_one_part_unchanged() -> None:
    assert make().format("Nice kick!") == ["Nice kick!"]


@pytest.mark.parametrize(
    "text",
    [
        "Dr. No was the first Bond film.",
        "Try some classics, e.g. Police Story or Drunken Master.",
        "I rate it 3.5 out of 5 and that is generous.",
        "See https://example.com/films/enter.the.dragon for details.",
        "Well... maybe not the best sequel.",
        "J. R. R. Tolkien never wrote a kung fu movie.",
        "Mr. Miyagi would not approve, i.e. wax on, wax off.",
    ],
)
def test_abbreviations_decimals_urls_and_ellipses_are_not_sentence_ends(text: str) -> None:
    assert list(iter_sentences(text)) == [text]


def test_real_sentence_ends_are_found() -> None:
    text = "First one. Second one! Third one? Fourth... Fifth."
    assert list(iter_sentences(text)) == [
        "First one.",
        "Second one!",
        "Third one?",
        "Fourth...",
        "Fifth.",
    ]


def test_splitting_never_breaks_an_abbreviation_across_parts() -> None:
    filler = "word " * 40
    text = f"{filler.strip()} and Dr. Smith agrees, as e.g. experts do. Next sentence here."
    parts = split_text(text, 60, "...", 10)
    joined = " ".join(parts)
    assert "Dr. Smith" in joined.replace("...", "")
    assert not any(p.startswith("Smith") for p in parts)


def test_a_newline_ends_a_sentence_and_parts_have_no_newlines() -> None:
    parts = make().format("Line one\nLine two")
    assert parts == ["Line one Line two"]


def test_over_long_sentence_falls_back_to_word_boundaries_with_indicator() -> None:
    words = " ".join(f"word{i}" for i in range(80))
    parts = make().split(words)
    assert len(parts) > 1
    for part in parts[:-1]:
        assert part.endswith("...")
        assert utf16_len(part) <= LIMIT
    rebuilt = " ".join(p.removesuffix("...") for p in parts).split()
    assert rebuilt == words.split()


def test_single_over_long_word_is_hard_cut_within_the_limit() -> None:
    word = "a" * 600
    parts = make().split(word)
    assert len(parts) == 3
    assert all(utf16_len(p) <= LIMIT for p in parts)
    assert "".join(p.removesuffix("...") for p in parts) == word


def test_hard_cut_never_splits_a_surrogate_pair() -> None:
    word = "🥋" * 300
    parts = make().split(word)
    for part in parts:
        assert utf16_len(part) <= LIMIT
        part.encode("utf-16-le")  # a lone surrogate would raise
        assert set(part.removesuffix("...")) == {"🥋"}


def test_over_long_link_is_dropped_not_cut() -> None:
    url = "https://example.com/" + "a" * 300
    assert make().split(url) == []
    assert make().split(f"See {url} now.") == ["See now."]
    assert make().split("www." + "b" * 300 + ".com") == []


def test_hard_cut_keeps_emoji_sequences_whole() -> None:
    family = "👨\u200d👩\u200d👧"
    for part in make().split(family * 100):
        body = part.removesuffix("...")
        assert body.startswith("👨") and body.endswith("👧"), part


def test_max_parts_limits_the_reply() -> None:
    text = " ".join(f"Sentence number {i} is here and it is long enough." for i in range(60))
    parts = make(max_parts=2).format(text)
    assert len(parts) == 2
    assert all(utf16_len(p) <= LIMIT for p in parts)


def test_indicator_counts_inside_the_limit_at_small_limits() -> None:
    text = " ".join(["abcdefghij"] * 30)
    parts = split_text(text, 25, "...", 10)
    assert all(utf16_len(p) <= 25 for p in parts)


def test_empty_indicator_is_allowed() -> None:
    parts = make(continuation_indicator="").split("x" * 500)
    assert "".join(parts) == "x" * 500


def test_empty_and_blank_input_give_no_parts() -> None:
    assert make().format("") == []
    assert make().format("   \n\t \u200b ") == []


# --- cleanup ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opening",
    [
        "As Cynthia Rothrock, ",
        "As CynthiaRothbot, ",
        "As Cynthia Rothbot, ",
        "As an AI, ",
        "As an AI language model, ",
        "As a large language model, ",
        "As an AI developed by OpenAI, ",
        "as cynthia rothrock: ",
        "CynthiaRothbot: ",
        "Being Cynthia Rothrock myself, ",
    ],
)
def test_self_referential_openings_are_removed(opening: str) -> None:
    assert make().clean(opening + "that kick was perfect.") == "That kick was perfect."


def test_cynthia_rothrock_prefix_removed_in_full_format() -> None:
    assert make().format("As Cynthia Rothrock, I approve of this movie.") == [
        "I approve of this movie."
    ]


def test_self_reference_stripping_can_be_disabled() -> None:
    text = "As an AI, I like films."
    assert make(strip_self_references=False).clean(text) == text


def test_name_in_the_middle_of_a_sentence_is_kept() -> None:
    text = "Fans of Cynthia Rothrock, like me, know China O'Brien."
    assert make().clean(text) == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Sure! Here's my response: Great movie.", "Great movie."),
        ("Certainly! Here is a fun fact: she was a champion.", "She was a champion."),
        ("Here's my reply: nope.", "Nope."),
        ("Response: totally.", "Totally."),
        ('Sure! Here\'s my reply: "As an AI, I love it."', "I love it."),
    ],
)
def test_artifact_preambles_are_removed(raw: str, expected: str) -> None:
    assert make().clean(raw) == expected


def test_custom_artifact_patterns() -> None:
    formatter = make(artifact_patterns=[r"^\*?thinks?\*?\s*"])
    assert formatter.clean("*thinks* Maybe.") == "Maybe."


def test_invalid_artifact_pattern_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        MessageProcessingSettings(artifact_patterns=["(unclosed"])


def test_blank_command_prefix_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="must not be empty"):
        MessageProcessingSettings(command_prefixes=["/", " "])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"Hello there."', "Hello there."),
        ("“Hello there.”", "Hello there."),
        ("'Hi'", "Hi"),
        ('"One" and "two"', '"One" and "two"'),
        ('He said "hi"', 'He said "hi"'),
    ],
)
def test_surrounding_quotes(raw: str, expected: str) -> None:
    assert make().clean(raw) == expected


def test_whitespace_control_and_zero_width_characters_are_cleaned() -> None:
    raw = "Hello\u200b  \t world\x07!\u200e\u202e  Bye\ufeff."
    assert make().clean(raw) == "Hello world ! Bye."


def test_emoji_zwj_sequences_survive_but_stray_joiners_do_not() -> None:
    assert make().clean("Family 👨\u200d👩\u200d👧 night") == "Family 👨\u200d👩\u200d👧 night"
    assert make().clean("a\u200db") == "ab"


def test_code_fences_are_removed_and_code_kept_as_text() -> None:
    raw = "Try this:\n```python\nprint('hi')\n```\nDone."
    assert make().format(raw) == ["Try this: print('hi') Done."]


def test_unterminated_code_fence() -> None:
    assert make().clean("```bash\nls -la") == "ls -la"


def test_markdown_chat_cannot_render_is_removed() -> None:
    raw = (
        "# Top picks\n"
        "- **Enter the Dragon**\n"
        "* __Police Story__\n"
        "> a quote\n"
        "---\n"
        "See [the list](https://example.com/list) and ![poster](https://x.y/p.png)."
    )
    cleaned = make().clean(raw)
    assert cleaned == (
        "Top picks\n*Enter the Dragon*\n_Police Story_\na quote\n"
        "See the list https://example.com/list and poster."
    )


def test_markdown_stripping_can_be_disabled() -> None:
    assert make(strip_markdown=False).clean("# Title") == "# Title"


def test_snake_case_is_not_mangled() -> None:
    assert make().clean("use my__var__name here") == "use my__var__name here"


def test_emoji_limit_keeps_the_first_ones() -> None:
    raw = "Great 🥋🔥🎬 movie 😀😀😀😀😀"
    assert make(max_emojis=2).clean(raw) == "Great 🥋🔥 movie"
    assert make(max_emojis=0).clean(raw) == "Great movie"
    assert make().clean(raw) == raw


def test_emoji_limit_counts_zwj_sequences_as_one() -> None:
    assert make(max_emojis=1).clean("👨\u200d👩\u200d👧 and 🥋") == "👨\u200d👩\u200d👧 and"


def test_only_artifacts_gives_no_parts() -> None:
    assert make().format("Sure! Here's my response: ") == []
    assert make().format('""') == []


def test_runaway_input_is_bounded() -> None:
    parts = make().format("word. " * 100_000)
    assert 1 <= len(parts) <= 3


def test_settings_expose_the_new_sections() -> None:
    settings = Settings()
    assert settings.message_processing.continuation_indicator == "..."
    assert settings.safety.link_policy == "strip"
    assert settings.validation.on_refusal == "regenerate"


@pytest.mark.parametrize(
    "hostile",
    ["**a " * 50_000, "__a " * 50_000, "[a " * 60_000, "[a](" * 50_000, "![a](" * 40_000],
    ids=["stars", "underscores", "brackets", "links", "images"],
)
def test_markdown_stripping_is_linear_on_hostile_text(hostile: str) -> None:
    """Unbounded patterns took minutes on these (quadratic); bounded ones well under a second.

    The bound is deliberately generous: it only catches a return to quadratic behaviour.
    """
    started = time.monotonic()
    strip_markdown(hostile)
    assert time.monotonic() - started < 10.0
