"""Which chat lines the bot never answers, decided before any trigger or limit is consulted.

Every rule here protects the operator: the bot must not answer itself (loops), server
notices, shadow-muted users (only moderators can see them, so a reply would expose the mute),
other bots' commands, or CyTube's replay of old lines when the bot (re)connects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from kryten_llm.decide.commands import CommandParser
from kryten_llm.types import ChannelKey, ChatLine

SEEN_LINES_MAX = 512


class MessageFilter:
    """Stateful only in what it must remember: the start time and recently seen lines.

    `own_commands` recognises this bot's own chat commands (`!chat ...`): those are the one
    kind of `!` line it does not leave to other bots.
    """

    def __init__(
        self,
        bot_names: Iterable[str],
        ignored_users: Iterable[str],
        start_ms: int,
        own_commands: CommandParser | None = None,
    ):
        self.bot_names = {n.lower() for n in bot_names}
        self.ignored_users = {u.lower() for u in ignored_users}
        self.start_ms = start_ms
        self.own_commands = own_commands
        self._seen: OrderedDict[tuple[ChannelKey, int, str, str], None] = OrderedDict()

    def reconfigure(
        self,
        bot_names: Iterable[str],
        ignored_users: Iterable[str],
        own_commands: CommandParser | None = None,
    ) -> None:
        self.bot_names = {n.lower() for n in bot_names}
        self.ignored_users = {u.lower() for u in ignored_users}
        self.own_commands = own_commands

    def is_own(self, line: ChatLine) -> bool:
        return line.username.lower() in self.bot_names

    def reason_to_ignore(self, line: ChatLine) -> str | None:
        """None if the line may be considered, else a short reason for the debug log."""
        if self.is_own(line):
            return "own message"
        if line.username == "[server]" or line.add_class == "server-whisper":
            return "server notice"
        if line.shadow:
            return "shadow-muted sender"
        if line.username.lower() in self.ignored_users:
            return "ignored user"
        if not line.text.strip():
            return "blank message"
        if line.text.lstrip().startswith("!") and not self._own_command(line.text):
            return "command for another bot"
        if line.time_ms < self.start_ms:
            return "history replayed from before start"
        if self._replayed(line):
            return "duplicate (replayed after reconnect)"
        return None

    def _own_command(self, text: str) -> bool:
        return self.own_commands is not None and self.own_commands.is_ours(text)

    def _replayed(self, line: ChatLine) -> bool:
        """CyTube replays recent lines on every reconnect: the same line twice is a replay."""
        key = (line.key, line.time_ms, line.username, line.text)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > SEEN_LINES_MAX:
            self._seen.popitem(last=False)
        return False
