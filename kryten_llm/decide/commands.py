"""Chat commands: which command a line is, and whether its sender may use it.

A command is a decision like every other: parsed synchronously, in event order, from the line
alone (and the sender's rank), so replay and dry run decide exactly as a live run. What a
command then does lives in `kryten_llm/commands.py`; nothing here touches state.

The line is the prefix (`commands.prefix`, `!chat` by default, any case), then a space or the
end. The first word names the command when it is one of `help`, `reset`, `persona`,
`remember`, `recall`, `forget`, `optout`, `optin` (or an alias: `opt-out`, `personas`, ...);
otherwise the whole rest is a question for the bot (`ask`, answered like a mention), and the
bare prefix is `help`. A short line (at most `NEAR_MISS_MAX_WORDS` words) whose first word is
one typo away from a command (`recal popcorn`) is `unknown`: it gets a hint, not an LLM call.
Parsing splits on whitespace once and compares short words: linear in the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from kryten_llm.config import CommandName, CommandSettings

Kind = CommandName | Literal["unknown"]

ALIASES: dict[str, CommandName] = {
    "help": "help",
    "commands": "help",
    "reset": "reset",
    "persona": "persona",
    "personas": "persona",
    "remember": "remember",
    "recall": "recall",
    "forget": "forget",
    "optout": "optout",
    "opt-out": "optout",
    "optin": "optin",
    "opt-in": "optin",
}
"""First words that name a command, lower-cased."""
NEAR_MISS_MAX_WORDS = 3
NEAR_MISS_MAX_CHARS = 16
RESET_ALL = "all"
FORGET_ME = "me"


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command: what it is, the rest of the line, and for a typo the command meant."""

    name: Kind
    arg: str = ""
    meant: CommandName | None = None


def _distance_at_most_one(a: str, b: str) -> bool:
    """True when one insertion, deletion or substitution (or a swap) turns `a` into `b`."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diffs) == 1:
            return True
        first, *rest = diffs
        return rest == [first + 1] and a[first] == b[first + 1] and a[first + 1] == b[first]
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    index = next((i for i, (x, y) in enumerate(zip(short, long_, strict=False)) if x != y), None)
    if index is None:
        return True
    return short[index:] == long_[index + 1 :]


def near_miss(word: str) -> CommandName | None:
    """The command a mistyped first word most likely meant, if it is one typo away."""
    if not 4 <= len(word) <= NEAR_MISS_MAX_CHARS:
        return None
    for alias, name in ALIASES.items():
        if _distance_at_most_one(word, alias):
            return name
    return None


class CommandParser:
    """Recognises this bot's commands (see the module docstring)."""

    def __init__(self, settings: CommandSettings) -> None:
        self.settings = settings
        self.prefix = settings.prefix.casefold()
        self._first = self.prefix[:1]
        # Anchored, with no repetition but the leading spaces: checked for every chat line,
        # so it must not copy the line (a strip would) or look past the prefix.
        self._start = re.compile(r"\s*" + re.escape(settings.prefix) + r"(?:\s|$)", re.IGNORECASE)

    def is_ours(self, text: str) -> bool:
        """The line starts with our prefix as a word (`!chat`, `!CHAT hi`; not `!chatter`)."""
        first = text[:1]
        if first != self._first and first.casefold() != self._first and not first.isspace():
            return False  # nearly every chat line: decided on one character
        return self._start.match(text) is not None

    def parse(self, text: str) -> Command | None:
        """The command in a chat line, or None when the line is not one of ours."""
        if not self.is_ours(text):
            return None
        rest = text.lstrip()[len(self.settings.prefix) :].split()
        if not rest:
            return Command("help")
        first = rest[0].casefold().rstrip(":,")
        name = ALIASES.get(first)
        if name is not None:
            return Command(name, " ".join(rest[1:]))
        if len(rest) <= NEAR_MISS_MAX_WORDS:
            meant = near_miss(first)
            if meant is not None:
                return Command("unknown", " ".join(rest[1:]), meant)
        return Command("ask", " ".join(rest))


@dataclass(frozen=True, slots=True)
class Ranks:
    """The ranks commands are gated on (CyTube ranks: 0 guest, 1 registered, 2 moderator)."""

    moderator: float
    persona: float
    remember: float

    @classmethod
    def of(cls, settings: CommandSettings, admin_min_rank: float) -> Ranks:
        persona = settings.persona_min_rank
        return cls(
            admin_min_rank,
            admin_min_rank if persona is None else persona,
            settings.remember_min_rank,
        )


def refusal(command: Command, rank: float, settings: CommandSettings, ranks: Ranks) -> str | None:
    """Why this sender may not run this command (for the answer and the record), or None.

    Only what the line and the rank decide; "only its author or a moderator may forget a
    memory" needs the memory and is checked where it is looked up.
    """
    name = command.name
    if name == "unknown":
        return None
    if name not in settings.enabled:
        return f"{settings.prefix} {name} is turned off here"
    arg = command.arg.strip().casefold()
    if name == "persona" and arg and rank < ranks.persona:
        return f"switching the persona needs rank {ranks.persona:g}"
    if name == "remember" and rank < ranks.remember:
        if rank <= 0:
            return "guests cannot store memories; log in with a registered account"
        return f"storing memories needs rank {ranks.remember:g}"
    if name == "reset" and arg == RESET_ALL and rank < ranks.moderator:
        return "only moderators can reset the whole channel"
    return None


def usable(settings: CommandSettings, ranks: Ranks, rank: float) -> list[str]:
    """The commands this sender may use, as `help` lists them."""
    prefix = settings.prefix
    on = set(settings.enabled)
    shown: list[str] = []
    if "ask" in on:
        shown.append(f"{prefix} <question>")
    entries: list[tuple[CommandName, str, bool]] = [
        ("help", "help", True),
        ("reset", "reset" + (" [all]" if rank >= ranks.moderator else ""), True),
        ("persona", "persona" + (" [name]" if rank >= ranks.persona else ""), True),
        ("remember", "remember <fact>", rank >= ranks.remember),
        ("recall", "recall <words>", True),
        ("forget", "forget <id>|me", True),
        ("optout", "optout", True),
        ("optin", "optin", True),
    ]
    shown += [text for name, text, allowed in entries if name in on and allowed]
    return shown
