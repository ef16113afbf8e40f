"""Server-sent events and NDJSON framing, shared by every streaming wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

MAX_EVENT_CHARS = 1024 * 1024
"""One event larger than this is a broken server; the stream is refused, not buffered."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its `event:` name (default `message`) and joined `data:` lines."""

    event: str
    data: str


async def sse_events(lines: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """Parse SSE framing: `field: value` lines, comments (`:`), blank line ends an event.

    A final event without its blank line is still dispatched: some servers omit it, and the
    wire format's own end marker (not the framing) decides whether the stream was complete.
    """
    event = ""
    data: list[str] = []
    size = 0
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data, size = "", [], 0
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            size += len(value)
            if size > MAX_EVENT_CHARS:
                raise ValueError("server-sent event too large")
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SSEEvent(event or "message", "\n".join(data))


async def ndjson_lines(lines: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Non-blank lines of a newline-delimited JSON stream, decoded."""
    async for raw in lines:
        line = raw.decode("utf-8", errors="replace").strip()
        if line:
            yield line
