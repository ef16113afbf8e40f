"""Logging for the process: text or JSON lines, with each message's correlation id attached.

The correlation id lives in a context variable set where a message enters the pipeline and
where its reply worker picks it up, so every line logged while handling it (trigger, limits,
LLM attempts, guard, sender) carries the same id without each call site passing it along.

kryten-py calls `setLevel()` on its own logger with its config's level when a client is
built, which would override the operator's `--log-level`; `apply_level` re-asserts it.

Every line, text or JSON, passes `RedactFilter` first: configured secrets and key-shaped
strings never reach the log, whoever logged them (us, kryten-py, nats-py, aiohttp).

Log lines carry strangers' text (usernames, chat, correlation ids from the bus). In the text
format a newline in a username would start a line of its own that looks like the service's;
`TextFormatter` writes every control character as a visible escape instead, so one record is
one physical line. The JSON format escapes them already (`json.dumps`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from kryten_llm.redact import redact_text

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(cid_suffix)s"
QUIET_LIBRARIES = ("aiohttp.access", "asyncio")
LOG_FORMATS = ("text", "json")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 controls (newline, carriage return, ESC, NEL, ...), the Unicode line and
paragraph separators, and the bidirectional overrides that can make a line read backwards."""
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")


class CorrelationFilter(logging.Filter):
    """Stamps every record with the current message's correlation id (or none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        cid = correlation_id.get()
        record.correlation_id = cid
        record.cid_suffix = f" [{cid}]" if cid else ""
        return True


class RedactFilter(logging.Filter):
    """Redacts the message (with its arguments merged in), the traceback and the stack.

    The message is formatted once here and the record keeps the result with no arguments, so
    the formatter does not format it again: the hot path pays one redaction scan per line
    (which skips its regular expressions for most lines, see `kryten_llm.redact`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad arguments: show the template, never the raw arguments
            message = f"{record.msg} (log arguments could not be formatted)"
        record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


_TRACEBACKS = logging.Formatter()
"""Formats tracebacks for `RedactFilter` exactly as the handler's formatter would."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers (journald, Loki, ELK) ingest directly.

    Hand-written rather than a dependency: it is a dozen lines over the stdlib formatter.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = getattr(record, "correlation_id", "")
        if cid:
            entry["correlation_id"] = cid
        if record.exc_text:  # already formatted (and redacted) by RedactFilter
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def escape_controls(text: str) -> str:
    """`text` with each control character written as a visible escape (`\\n`, `\\x1b`, ...)."""
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


class TextFormatter(logging.Formatter):
    """The text format, one physical line per record whatever the message or its args hold.

    The record line (message with its args, logger name, correlation id) is escaped whole.
    A traceback keeps its own line breaks, but every line of it is indented, so nothing in
    an exception's message can start a line that looks like a record of its own.
    """

    def format(self, record: logging.LogRecord) -> str:
        # Render the traceback ourselves: another handler's formatter may have cached its own
        # (unindented) rendering in `exc_text`.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        # Rendered afresh (see format), so redacted here as RedactFilter redacts exc_text.
        return _indented(redact_text(super().formatException(ei)))

    def formatStack(self, stack_info: str) -> str:
        return _indented(redact_text(super().formatStack(stack_info)))


def _indented(block: str) -> str:
    return "\n".join(f"    {escape_controls(line)}" for line in block.split("\n"))


class KrytenNoise(logging.Filter):
    """Keeps kryten-py's logger truthful for operators.

    kryten-py logs a failed connect (bad credentials, say) with a full traceback, each
    refusal of our credentials too, and every disconnect at WARNING, including the one a clean
    shutdown makes. The first two keep their one-line message without the traceback; the last
    is INFO while `shutting_down` is set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shutting_down = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Failed to connect to NATS") or (
            message.startswith("NATS error:") and "Authorization Violation" in message
        ):
            record.exc_info, record.exc_text = None, None
        elif self.shutting_down and message == "Disconnected from NATS":
            record.levelno, record.levelname = logging.INFO, "INFO"
            # The logger's level was checked against WARNING; check the new level too.
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


KRYTEN_NOISE = KrytenNoise()
logging.getLogger("kryten").addFilter(KRYTEN_NOISE)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    apply_level(level)


def apply_level(level: str) -> None:
    logging.getLogger().setLevel(level)
    logging.getLogger("kryten").setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
