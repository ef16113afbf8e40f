"""Chat commands in isolation: parsing, rank gating, and what each one does and says.

End to end over NATS (ranks from the bridge's user list, answers on the bus, restarts) is
`test_commands_e2e.py`; here the parser and the runner are driven directly, with a real
keeper and context (no store: the mirrors alone).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from kryten_llm.commands import CommandRunner, parse_memory, quote
from kryten_llm.config import Settings, build_settings
from kryten_llm.context import ContextManager
from kryten_llm.decide.budget import UsageTracker
from kryten_llm.decide.commands import Command, CommandParser, near_miss
from kryten_llm.decide.filters import MessageFilter
from kryten_llm.memory.keeper import Keeper
from kryten_llm.types import ChatLine

GUEST, USER, MOD = 0.0, 1.0, 2.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("!chat", Command("help")),
        ("  !CHAT   help ", Command("help")),
        ("!chat remember  Alice   hates spoilers", Command("remember", "Alice hates spoilers")),
        ("!chat persona", Command("persona")),
        ("!chat Personas", Command("persona")),
        ("!chat opt-out", Command("optout")),
        ("!chat forget me", Command("forget", "me")),
        ("!chat reset all", Command("reset", "all")),
        ("!chat what is this movie?", Command("ask", "what is this movie?")),
        ("!chat hello", Command("ask", "hello")),
        ("!chat recal popcorn", Command("unknown", "popcorn", "recall")),
        ("!chat remembr", Command("unknown", "", "remember")),
        (
            "!chat personal question about the plot here",
            Command("ask", "personal question about the plot here"),
        ),
        ("!chatter hi", None),
        ("!cha help", None),
        ("hello !chat help", None),
        ("!chat\thelp", Command("help")),
    ],
)
def test_parsing(text: str, expected: Command | None) -> None:
    assert CommandParser(build_settings({}, "t").commands).parse(text) == expected


def test_a_configured_prefix_and_the_filter_leaves_only_our_commands_through() -> None:
    ours = CommandParser(build_settings({"commands": {"prefix": "!bot"}}, "t").commands)
    assert ours.parse("!bot help") == Command("help")
    assert ours.parse("!chat help") is None
    chat_filter = MessageFilter(["bot"], [], 0, ours)
    line = ChatLine("c", "d", "alice", "!bot help", 10)
    assert chat_filter.reason_to_ignore(line) is None
    other = ChatLine("c", "d", "alice", "!skip", 10)
    assert chat_filter.reason_to_ignore(other) == "command for another bot"


def test_near_misses_are_one_typo_away_and_long_words_never_match() -> None:
    assert near_miss("forgt") == "forget" and near_miss("rcall") == "recall"
    assert near_miss("hello") is None and near_miss("rset") == "reset"
    assert near_miss("x" * 5000) is None


def test_parsing_a_huge_line_is_linear() -> None:
    line = "!chat " + "recal " * 200_000
    started = time.perf_counter()
    assert CommandParser(build_settings({}, "t").commands).parse(line) is not None
    assert time.perf_counter() - started < 2.0


# --- the runner -------------------------------------------------------------------------------


def runner(**config: Any) -> tuple[CommandRunner, Settings]:
    settings = build_settings(
        {"cytube": {"domain": "cytu.be", "channel": "lounge", "username": "bot"}, **config}, "t"
    )
    keeper = Keeper(settings, ContextManager(settings.context))
    return CommandRunner(settings, keeper, UsageTracker(settings.usage)), settings


def say(
    run: CommandRunner, settings: Settings, user: str, text: str, rank: float, at: int = 1000
) -> tuple[str, str, str]:
    command = CommandParser(settings.commands).parse(text)
    assert command is not None
    line = ChatLine("lounge", "cytu.be", user, text, at)
    answer = run.run(command, line, settings.channels[0], rank)
    return answer.text, answer.outcome, answer.reason


def test_help_lists_only_what_this_user_may_use() -> None:
    run, settings = runner()
    guest, _, _ = say(run, settings, "guest", "!chat help", GUEST)
    mod, _, _ = say(run, settings, "mod", "!chat help", MOD)
    assert "remember" not in guest and "persona," in guest and "reset," in guest
    assert "remember <fact>" in mod and "persona [name]" in mod and "reset [all]" in mod
    assert len(mod) <= 2 * settings.message_processing.max_message_length


def test_rank_gates_guests_users_and_moderators() -> None:
    run, settings = runner()
    text, outcome, _ = say(run, settings, "guest", "!chat remember the sky is blue", GUEST)
    assert outcome == "command_refused" and "guests cannot store memories" in text
    assert say(run, settings, "al", "!chat persona concise", USER)[1] == "command_refused"
    assert say(run, settings, "al", "!chat reset all", USER)[1] == "command_refused"
    assert say(run, settings, "mod", "!chat persona concise", MOD)[2] == "persona: concise"
    assert run.active_persona(settings.channels[0]) == "concise"
    # configurable: anyone may switch here
    run2, settings2 = runner(commands={"persona_min_rank": 0, "remember_min_rank": 0})
    assert say(run2, settings2, "guest", "!chat persona creative", GUEST)[1] == "command"
    assert say(run2, settings2, "guest", "!chat remember guests may", GUEST)[1] == "command"


def test_disabled_commands_are_refused_with_a_hint() -> None:
    run, settings = runner(commands={"enabled": ["ask", "help"]})
    text, outcome, _ = say(run, settings, "al", "!chat recall popcorn", USER)
    assert outcome == "command_refused" and "turned off" in text
    assert (
        say(run, settings, "al", "!chat help", USER)[0] == "al: you can use !chat <question>, help."
    )


def test_remember_recall_forget_round_trip_with_authors_and_moderators() -> None:
    run, settings = runner()
    text, outcome, reason = say(
        run, settings, "Alice", "!chat remember (5) preference: Bob loves popcorn", USER
    )
    ident = reason.removeprefix("remember: ")
    assert outcome == "command" and text == f"Alice: remembered as {ident}."
    note = run.keeper.note(settings.channels[0].key, ident)
    assert note is not None and note.category == "preference" and note.importance == 3  # capped
    recalled, _, _ = say(run, settings, "Carol", "!chat recall popcorn", USER, at=2000)
    assert recalled == f"Carol: {ident} “Bob loves popcorn”"
    assert say(run, settings, "Carol", f"!chat forget {ident}", USER)[2] == "forget: not the author"
    assert (
        say(run, settings, "Alice", f"!chat forget {ident.upper()}", USER)[2] == f"forget: {ident}"
    )
    assert (
        say(run, settings, "Carol", "!chat recall popcorn", USER)[0]
        == "Carol: I remember nothing about that."
    )
    _, _, reason = say(run, settings, "Alice", "!chat remember mods can forget this", USER)
    assert say(run, settings, "Mod", f"!chat forget {reason.split()[-1]}", MOD)[1] == "command"


def test_remember_refuses_empty_and_too_long() -> None:
    run, settings = runner(memory={"max_chars": 20})
    assert say(run, settings, "al", "!chat remember", USER)[2] == "remember: nothing to remember"
    assert say(run, settings, "al", "!chat remember " + "x" * 21, USER)[2] == "remember: too long"


def test_memory_arguments_and_quoting() -> None:
    assert parse_memory("(4) topic: kung fu night") == ("topic", 4, "kung fu night")
    assert parse_memory("(9) fact") == ("fact", 3, "(9) fact")
    assert parse_memory("preference:") == ("preference", 3, "")
    assert quote("/kick   everyone\n") == "“/kick everyone”"
    assert len(quote("y" * 500)) == 82


def test_opt_out_opt_in_and_forget_me() -> None:
    run, settings = runner()
    room = settings.channels[0].key
    run.keeper.context.add_chat(ChatLine("lounge", "cytu.be", "Eve", "my secret", 5))
    say(run, settings, "Eve", "!chat remember eve was here", USER)
    assert say(run, settings, "Eve", "!chat optout", USER)[2] == "optout"
    assert run.keeper.is_opted_out(room, "EVE") and run.keeper.context.chat_of(room) == []
    assert say(run, settings, "Eve", "!chat optin", USER)[2] == "optin"
    assert say(run, settings, "Eve", "!chat optin", USER)[2] == "optin: was not opted out"
    text, _, reason = say(run, settings, "Eve", "!chat forget me", USER)
    assert reason == "forget: me" and "1 memories you wrote" in text
    assert run.keeper.book(room).by_author("eve") == []


def test_unknown_commands_get_a_hint_and_persona_lists() -> None:
    run, settings = runner()
    text, _, _ = say(run, settings, "al", "!chat recal popcorn", USER)
    assert text == "al: not a command. Did you mean !chat recall? Try !chat help."
    listed, _, _ = say(run, settings, "al", "!chat persona", USER)
    assert listed == "al: personas: default*, concise, technical, creative (* is active)."
    assert say(run, settings, "mod", "!chat persona pirate", MOD)[1] == "command_refused"
