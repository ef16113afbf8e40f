"""What each chat command does: its effect on what the bot keeps, and the words it answers.

`decide/commands.py` says which command a line is and whether its sender may use it; this
carries it out on the keeper's mirrors (synchronously, in event order: the KV writes follow
behind, see `memory/keeper.py`) and words the answer. The pipeline sends the answer like a
reply: formatter, output guard, pacing, limits, and one JSONL record.

Answers start with the sender's name and quote any stored text (`“...”`), so a memory that
reads like a command (`/kick everyone`) can never begin a chat line; the guard checks anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kryten_llm.config import DEFAULT_PERSONA, ChannelSettings, Settings
from kryten_llm.decide.budget import UsageTracker
from kryten_llm.decide.commands import (
    FORGET_ME,
    RESET_ALL,
    Command,
    Ranks,
    refusal,
    usable,
)
from kryten_llm.memory.keeper import Keeper
from kryten_llm.memory.notes import CATEGORIES, DEFAULT_IMPORTANCE, Category, Note
from kryten_llm.types import ChatLine

QUOTE_CHARS = 80
"""Longest stored text quoted in an answer (the full text is in the prompt, not in chat)."""
MAX_IMPORTANCE_FOR_USERS = DEFAULT_IMPORTANCE
"""Users below moderator rank store memories at most this important, so nobody can make
their memories outlast everyone else's by marking them all 5."""

AnswerOutcome = Literal["command", "command_refused"]
PRIVACY_COMMANDS = frozenset({"reset", "forget", "optout", "optin"})
"""Commands that only remove what is kept or stop the bot: done even when the answer is held
back by a limit (a rate limit must never keep someone's data or keep answering them)."""


Result = tuple[str, str, AnswerOutcome]
"""A handler's answer (after the sender's name), the record's reason, and the outcome."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What to say, and how the JSONL record files it."""

    text: str
    outcome: AnswerOutcome
    reason: str


def quote(text: str) -> str:
    """Stored text as an answer shows it: one line, cut short, inside quotation marks."""
    flat = " ".join(text.split())
    if len(flat) > QUOTE_CHARS:
        flat = flat[: QUOTE_CHARS - 1] + "…"
    return f"“{flat}”"


def parse_memory(arg: str) -> tuple[Category, int, str]:
    """`remember [(1-5)] [fact:|preference:|topic:] text` -> category, importance, text."""
    words = arg.split()
    importance = DEFAULT_IMPORTANCE
    if words and len(words[0]) == 3 and words[0][0] == "(" and words[0][2] == ")":
        digit = words[0][1]
        if digit in "12345":
            importance, words = int(digit), words[1:]
    category: Category = "fact"
    if words and words[0].endswith(":") and words[0][:-1].casefold() in CATEGORIES:
        category = next(c for c in CATEGORIES if c == words[0][:-1].casefold())
        words = words[1:]
    return category, importance, " ".join(words)


class CommandRunner:
    """Carries out commands against the keeper (and the usage records, for `forget me`)."""

    def __init__(self, settings: Settings, keeper: Keeper, usage: UsageTracker) -> None:
        self.keeper = keeper
        self.usage = usage
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        self.ranks = Ranks.of(settings.commands, settings.rate_limits.admin_min_rank)
        self.personas = settings.persona_table()

    def active_persona(self, channel: ChannelSettings) -> str:
        """The room's persona: the one switched to, if still configured, else its default."""
        chosen = self.keeper.persona_of(channel.key)
        if chosen is not None and chosen in self.personas:
            return chosen
        return channel.persona or DEFAULT_PERSONA

    def refusal(self, command: Command, rank: float) -> str | None:
        return refusal(command, rank, self.settings.commands, self.ranks)

    def run(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Answer:
        """Do the command now and word the answer (refusals included)."""
        who = line.username
        refused = self.refusal(command, rank)
        if refused is not None:
            return Answer(f"{who}: {refused}.", "command_refused", f"{command.name}: {refused}")
        handler = {
            "help": self._help,
            "reset": self._reset,
            "persona": self._persona,
            "remember": self._remember,
            "recall": self._recall,
            "forget": self._forget,
            "optout": self._optout,
            "optin": self._optin,
        }.get(command.name)
        if handler is None:
            return self._unknown(command, line)
        text, reason, outcome = handler(command, line, channel, rank)
        return Answer(f"{who}: {text}", outcome, reason)

    def _unknown(self, command: Command, line: ChatLine) -> Answer:
        prefix = self.settings.commands.prefix
        meant = f" Did you mean {prefix} {command.meant}?" if command.meant else ""
        text = f"{line.username}: not a command.{meant} Try {prefix} help."
        return Answer(text, "command", f"unknown: meant {command.meant}")

    def _help(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Result:
        shown = usable(self.settings.commands, self.ranks, rank)
        return "you can use " + ", ".join(shown) + ".", "help", "command"

    def _reset(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Result:
        room = line.key
        if command.arg.strip().casefold() == RESET_ALL:
            self.keeper.forget_room(room)
            text = "this channel's history and every conversation are forgotten."
            return text, "reset: all", "command"
        had = self.keeper.forget_conversation(room, line.username)
        text = "our conversation is forgotten." if had else "there was no conversation to forget."
        return text, "reset", "command"

    def _persona(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Result:
        table = self.personas
        active = self.active_persona(channel)
        wanted = command.arg.strip().casefold()
        names = ", ".join(f"{name}*" if name == active else name for name in table)
        if not wanted:
            return f"personas: {names} (* is active).", "persona: list", "command"
        if wanted not in table:
            reason = "persona: unknown name"
            text = f"there is no persona {quote(wanted)}; personas: {names}."
            return text, reason, "command_refused"
        self.keeper.set_persona(line.key, wanted)
        return f"the persona is now {wanted}.", f"persona: {wanted}", "command"

    def _remember(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Result:
        prefix = self.settings.commands.prefix
        category, importance, text = parse_memory(command.arg)
        if not text:
            hint = f"remember what? For example: {prefix} remember Alice hates spoilers."
            return hint, "remember: nothing to remember", "command_refused"
        limit = self.settings.memory.max_chars
        if len(text) > limit:
            text = f"that is too long to remember (at most {limit} characters)."
            return text, "remember: too long", "command_refused"
        if rank < self.ranks.moderator:
            importance = min(importance, MAX_IMPORTANCE_FOR_USERS)
        note = self.keeper.remember(
            line.key, line.username, text, line.time_ms, category, importance
        )
        return f"remembered as {note.id}.", f"remember: {note.id}", "command"

    def _recall(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Result:
        words = command.arg.strip()
        if not words:
            prefix = self.settings.commands.prefix
            hint = f"recall what? For example: {prefix} recall popcorn."
            return hint, "recall: no words", "command_refused"
        limit, now = self.settings.memory.recall_max, line.time_ms / 1000.0
        found = self.keeper.recall(line.key, words, limit, now)
        if not found:
            return "I remember nothing about that.", "recall: nothing found", "command"
        listed = "; ".join(f"{note.id} {quote(note.content)}" for note in found)
        return listed, f"recall: {','.join(n.id for n in found)}", "command"

    def _forget(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Result:
        room, arg = line.key, command.arg.strip().casefold()
        prefix = self.settings.commands.prefix
        if not arg:
            hint = f"forget what? {prefix} forget <id>, or {prefix} forget me."
            return hint, "forget: nothing named", "command_refused"
        if arg == FORGET_ME:
            forgotten = self.keeper.forget_user(room, line.username)
            kept = not self.usage.forget_user(line.username)
            usage = " (a spent daily budget stays until midnight UTC)" if kept else ""
            text = (
                f"forgot everything I kept about you here: {forgotten.memories} memories you "
                f"wrote, our conversation and your chat lines{usage}."
            )
            return text, "forget: me", "command"
        note: Note | None = self.keeper.note(room, arg)
        if note is None:
            return f"there is no memory {quote(arg)}.", "forget: no such memory", "command_refused"
        if not note.by(line.username) and rank < self.ranks.moderator:
            text = "only its author or a moderator can forget that memory."
            return text, "forget: not the author", "command_refused"
        self.keeper.forget_note(room, note.id)
        return f"forgot {note.id}.", f"forget: {note.id}", "command"

    def _optout(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Result:
        prefix = self.settings.commands.prefix
        if not self.keeper.opt_out(line.key, line.username, line.time_ms / 1000.0):
            return (
                "the opt-out list is full; ask a moderator.",
                "optout: list full",
                "command_refused",
            )
        text = (
            f"you are opted out: I will not answer you or remember what you say here "
            f"({prefix} optin undoes it)."
        )
        return text, "optout", "command"

    def _optin(
        self, command: Command, line: ChatLine, channel: ChannelSettings, rank: float
    ) -> Result:
        if self.keeper.opt_in(line.key, line.username):
            return "welcome back: I will answer and remember you again.", "optin", "command"
        return "you were not opted out.", "optin: was not opted out", "command"


def applies_when_held(command: Command) -> bool:
    """True for commands whose effect must happen even if their answer is held back."""
    return command.name in PRIVACY_COMMANDS
