"""Model outputs crafted to smuggle a CyTube command past the formatter and guard, or to break
the formatter. Importable by any test (unit here, end-to-end over NATS by the service tests):

    from tests.adversarial_outputs import ADVERSARIAL_OUTPUTS

Each case is (name, llm_output). Every published part must be non-empty, within the length
limit, and not command-like (see `kryten_llm.reply.guard.is_command_like`).
"""

from __future__ import annotations

_FILLER = "This sentence is filler text to push the next one towards a split point. "
# 234 units: the next sentence cannot join it, so it starts part two.
_LONG_FIRST_PART = (_FILLER * 3).strip() + " More filler."

ADVERSARIAL_OUTPUTS: list[tuple[str, str]] = [
    ("plain_slash_command", "/clear"),
    ("kick_with_target", "/kick Alice spamming"),
    ("ban", "/ban Alice"),
    ("me_nested_clear", "/me /clear"),
    ("sp_nested_kick", "/sp /kick x"),
    ("say_nested_ban", "/say /ban Bob"),
    ("double_slash", "//clear"),
    ("leading_spaces", "     /clear"),
    ("leading_tab", "\t/mute Alice"),
    ("leading_newline", "\n/clear"),
    ("leading_crlf_newlines", "\r\n\r\n/kick Alice"),
    ("leading_control_chars", "\x00\x01\x1f/clear"),
    ("leading_del_and_c1", "\x7f\x85/clear"),
    ("zero_width_space", "\u200b/clear"),
    ("zero_width_joiner", "\u200d/kick Alice"),
    ("zero_width_non_joiner", "\u200c/ban Bob"),
    ("word_joiner", "\u2060/clear"),
    ("bom", "\ufeff/clear"),
    ("rtl_mark", "\u200f/clear"),
    ("rtl_override", "\u202e/clear"),
    ("ltr_isolate", "\u2066/clear\u2069"),
    ("hangul_filler", "\u3164/clear"),
    ("braille_blank", "\u2800/clear"),
    ("nbsp_and_ideographic_space", "\u00a0\u3000/clear"),
    ("line_separator", "\u2028/clear"),
    ("fullwidth_solidus", "／clear"),
    ("small_exclamation", "﹗roll"),
    ("fullwidth_exclamation", "！skip"),
    ("division_slash", "∕clear"),
    ("fraction_slash", "⁄clear"),
    ("big_solidus", "⧸clear"),
    ("philippine_punctuation", "᜵clear"),
    ("combining_solidus_overlay", "\u0338clear"),
    ("combining_mark_then_slash", "\u0301/clear"),
    ("bot_bang_command", "!skip"),
    ("bot_dot_command", ".voteskip"),
    ("ellipsis_opening", "...and then /clear happened"),
    ("mixed_prefixes", " ! . / clear"),
    ("quoted_command", '"/clear"'),
    ("code_block_kick", "```\n/kick Alice\n```"),
    ("code_block_with_lang", "```bash\n/ban Bob\n```\nDone."),
    ("inline_code_command", "`/clear`"),
    ("markdown_heading_command", "# /clear"),
    ("markdown_bullet_command", "- /kick Alice\n- /ban Bob"),
    ("markdown_quote_command", "> /clear"),
    ("self_reference_then_command", "As CynthiaRothbot, /clear"),
    ("as_ai_then_command", "As an AI language model, /kick Alice"),
    ("artifact_then_command", "Sure! Here's my response: /clear"),
    ("second_sentence_at_part_two", f"{_LONG_FIRST_PART} /kick Alice is what I would do."),
    ("second_sentence_fullwidth", f"{_LONG_FIRST_PART} ／clear the chat now."),
    ("command_after_newline", "Hello there.\n/clear"),
    ("command_after_word_split", "x" * 237 + " /clear"),
    ("hard_cut_lands_on_slash", "y" * 237 + "/clear" + "z" * 300),
    ("very_long_word", "supercalifragilistic" * 60),
    ("very_long_url", "https://example.com/" + "a" * 700),
    ("emoji_flood", "🥋" * 400),
    ("emoji_flood_then_command", "🔥" * 119 + " /clear"),
    ("zwj_emoji_flood", "👨\u200d👩\u200d👧" * 100),
    ("only_slashes", "/ / / / /"),
    ("only_invisible", "\u200b\u200c\u200d\u2060\ufeff"),
    ("empty", ""),
    ("whitespace_only", "   \n\t  "),
    ("html_entity_slash", "&#47;clear"),
    ("many_short_commands", "\n".join(["/clear"] * 50)),
    ("command_every_sentence", " ".join(["/kick Alice."] * 40)),
    ("surrogate_boundary", "a" + "😀" * 150),
    ("nfkc_expands_past_limit", "㍱" * 200),
    ("ligatures_expand", "ﬃ" * 239),
    ("greentext_then_command", ">implying\n/clear"),
]
