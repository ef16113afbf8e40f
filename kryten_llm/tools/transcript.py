"""Reading a recorded chat for `kryten-llm replay`: the two transcript formats, line by line.

Kept apart from the replay itself so what counts as a transcript, and what happens to a bad
one, can be read (and tested) without the pipeline.

Formats, chosen by the first line that is not blank or a `#` comment:

- JSONL: one bridge envelope per line, exactly as the bridge publishes it. Every event is read,
  whatever its name; which of them the service would hear is the replay's business.
- plain text: `user: message`, optionally prefixed `[HH:MM:SS] `. Lines without a timestamp
  come `interval_seconds` after the previous line; a timestamp more than 12 hours earlier
  than the previous one is taken to be after midnight.

Bad input never stops a read: a line that is not JSON, names no event, carries a payload the
service would reject, or is longer than `MAX_LINE_CHARS` becomes a `MalformedLine` with its
line number and reason, and the next line is read as usual. A file that cannot be read at all
(missing, a directory, an I/O error) raises `TranscriptError`. The file is read in batches
off the event loop, and an endless line is never held whole.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from kryten_llm.config import ChannelSettings
from kryten_llm.events import MalformedEvent, parse_chat, parse_media, subject_token
from kryten_llm.tools.simulate import cytube_escape

DEFAULT_INTERVAL_SECONDS = 5.0
MAX_LINE_CHARS = 64_000
"""Longer transcript lines are malformed: no chat line or bridge event is anywhere near this."""
READ_BATCH_LINES = 2_000
DAY_SECONDS = 86_400
MIDNIGHT_WRAP_SECONDS = 12 * 3600
"""A plain-text timestamp this much earlier than the previous one means the next day."""

_PLAIN_LINE = re.compile(
    r"^(?:\[(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})\]\s*)?(?P<user>[^\s:]{1,40}):(?P<text>.*)$"
)


class TranscriptError(Exception):
    """The transcript cannot be read at all: the operator has to fix the path or the file."""


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """One bridge event from a transcript line: `event_name` in CyTube's case, raw payload."""

    line_no: int
    event_name: str
    payload: Any
    correlation_id: str = ""

    @property
    def token(self) -> str:
        """The event name as the subject (and so `Pipeline.decide`) carries it."""
        return subject_token(self.event_name)

    def envelope(self, channel: ChannelSettings) -> dict[str, Any]:
        """The bridge envelope for this event, addressed to `channel`."""
        return {
            "event_name": self.event_name,
            "payload": self.payload,
            "channel": channel.channel,
            "domain": channel.domain,
            "timestamp": "",
            "correlation_id": self.correlation_id,
        }


@dataclass(frozen=True, slots=True)
class MalformedLine:
    """A transcript line that could not be replayed, and why."""

    line_no: int
    reason: str


TranscriptItem = TranscriptEvent | MalformedLine


def _too_long(line_no: int) -> MalformedLine:
    return MalformedLine(line_no, f"longer than {MAX_LINE_CHARS} characters")


class TranscriptParser:
    """Turns transcript lines into events, one at a time (it keeps the plain-text clock)."""

    def __init__(self, interval_seconds: float = DEFAULT_INTERVAL_SECONDS) -> None:
        self.interval_ms = round(interval_seconds * 1000)
        self.format: Literal["jsonl", "plain"] | None = None
        self._last_ms: int | None = None
        self._last_stamp_seconds: int | None = None
        self._day = 0

    def parse(self, line_no: int, text: str) -> TranscriptItem | None:
        """The event on this line, a MalformedLine, or None for blank lines and comments."""
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            return None
        if len(stripped) > MAX_LINE_CHARS:
            return _too_long(line_no)
        if self.format is None:
            self.format = "jsonl" if stripped.startswith("{") else "plain"
        if self.format == "jsonl":
            return self._parse_envelope(line_no, stripped)
        return self._parse_plain(line_no, text.rstrip("\r\n"))

    def _parse_envelope(self, line_no: int, text: str) -> TranscriptItem:
        try:
            data = json.loads(text)
        except ValueError as exc:
            return MalformedLine(line_no, f"not JSON ({type(exc).__name__})")
        if not isinstance(data, dict):
            return MalformedLine(line_no, "not a JSON object")
        name = data.get("event_name")
        if not isinstance(name, str) or not name.strip():
            return MalformedLine(line_no, "no event_name")
        correlation = data.get("correlation_id")
        event = TranscriptEvent(
            line_no,
            name,
            data.get("payload"),
            correlation if isinstance(correlation, str) else "",
        )
        problem = _payload_problem(event)
        return MalformedLine(line_no, problem) if problem else event

    def _parse_plain(self, line_no: int, text: str) -> TranscriptItem:
        match = _PLAIN_LINE.match(text.lstrip())
        if match is None:
            return MalformedLine(line_no, "not `user: message` or `[HH:MM:SS] user: message`")
        if match["h"] is not None:
            stamp = int(match["h"]) * 3600 + int(match["m"]) * 60 + int(match["s"])
            if int(match["h"]) > 23 or int(match["m"]) > 59 or int(match["s"]) > 59:
                return MalformedLine(line_no, f"bad time {match['h']}:{match['m']}:{match['s']}")
            time_ms = self._stamped_ms(stamp)
        else:
            time_ms = 0 if self._last_ms is None else self._last_ms + self.interval_ms
        self._last_ms = time_ms
        payload: dict[str, Any] = {
            "username": match["user"],
            "msg": cytube_escape(match["text"].strip()),
            "meta": {},
            "time": time_ms,
        }
        return TranscriptEvent(line_no, "chatMsg", payload)

    def _stamped_ms(self, stamp_seconds: int) -> int:
        previous = self._last_stamp_seconds
        if previous is not None and previous - stamp_seconds > MIDNIGHT_WRAP_SECONDS:
            self._day += 1
        self._last_stamp_seconds = stamp_seconds
        return (self._day * DAY_SECONDS + stamp_seconds) * 1000


def _payload_problem(event: TranscriptEvent) -> str | None:
    """Why the service would reject this event's payload, or None if it is usable.

    Rank events are checked by the rank registry itself as they are applied.
    """
    probe = {"payload": event.payload, "channel": "replay", "domain": "replay"}
    try:
        if event.token == "chatmsg":
            parse_chat(probe)
        elif event.token == "changemedia":
            parse_media(probe)
    except (MalformedEvent, ValueError, OverflowError) as exc:
        return f"malformed {event.event_name}: {exc}"
    return None


def parse_transcript(
    lines: Iterable[str], interval_seconds: float = DEFAULT_INTERVAL_SECONDS
) -> Iterator[TranscriptItem]:
    """Every event and malformed line of a transcript, in order (line numbers from 1)."""
    parser = TranscriptParser(interval_seconds)
    for line_no, text in enumerate(lines, start=1):
        item = parser.parse(line_no, text)
        if item is not None:
            yield item


class TranscriptFile:
    """Reads a transcript in batches off the event loop, never holding an endless line whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None
        self._line_no = 0
        self._in_long_line = False

    async def open(self) -> None:
        try:
            self._handle = await asyncio.to_thread(
                self.path.open, "r", encoding="utf-8", errors="replace"
            )
        except IsADirectoryError:
            raise TranscriptError(
                f"cannot read transcript {self.path}: it is a directory"
            ) from None
        except OSError as exc:
            raise TranscriptError(
                f"cannot read transcript {self.path}: {exc.strerror or type(exc).__name__}"
            ) from None

    async def items(self, parser: TranscriptParser) -> AsyncIterator[TranscriptItem]:
        """Every event and malformed line of the open file, in order, read batch by batch."""
        while batch := await self.next_batch():
            for line_no, text in batch:
                item = _too_long(line_no) if text is None else parser.parse(line_no, text)
                if item is not None:
                    yield item

    async def next_batch(self) -> list[tuple[int, str | None]]:
        """Up to READ_BATCH_LINES (line number, text) pairs; text None = line too long."""
        assert self._handle is not None
        try:
            return await asyncio.to_thread(self._read_batch, self._handle)
        except OSError as exc:
            raise TranscriptError(
                f"reading transcript {self.path} failed at line {self._line_no + 1}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None

    def _read_batch(self, handle: IO[str]) -> list[tuple[int, str | None]]:
        batch: list[tuple[int, str | None]] = []
        while len(batch) < READ_BATCH_LINES:
            chunk = handle.readline(MAX_LINE_CHARS + 1)
            if not chunk:
                break
            complete = chunk.endswith("\n")
            if self._in_long_line:  # the rest of a line already reported as too long
                self._in_long_line = not complete
                continue
            self._line_no += 1
            if not complete and len(chunk) > MAX_LINE_CHARS:
                self._in_long_line = True
                batch.append((self._line_no, None))
                continue
            batch.append((self._line_no, chunk))
        return batch

    async def close(self) -> None:
        if self._handle is not None:
            await asyncio.to_thread(self._handle.close)
            self._handle = None


__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "MAX_LINE_CHARS",
    "MalformedLine",
    "TranscriptError",
    "TranscriptEvent",
    "TranscriptFile",
    "TranscriptItem",
    "TranscriptParser",
    "parse_transcript",
]
