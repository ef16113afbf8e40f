"""Logging for the process: text or JSON lines, with each message's correlation id attached.

The correlation id lives in a context variable set where a message enters the pipeline and
where its reply worker picks it up, so every line logged while handling it (trigger, limits,
LLM attempts, guard, sender) carries the same id without each call site passing it along.

kryten-py calls `setLevel()` on its own logger with its config's level when a client is
built, which would override the operator's `--log-level`; `apply_level` re-asserts it.

Every line, text or JSON, passes `RedactFilter` first: configured secrets and key-shaped
strings never reach the log, whoever logged them (us, kryten-py, nats-py, aiohttp).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from kryten_llm.redact import redact_text

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(cid_suffix)s"
QUIET_LIBRARIES = ("aiohttp.access", "asyncio")
LOG_FORMATS = ("text", "json")

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


class KrytenNoise(logging.Filter):
    """Keeps kryten-py's logger truthful for operators.

    kryten-py logs a failed connect (bad credentials, say) with a full traceback, and every
    disconnect at WARNING, including the one a clean shutdown makes. The first keeps its
    one-line message without the traceback; the second is INFO while `shutting_down` is set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shutting_down = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Failed to connect to NATS"):
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
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    apply_level(level)


def apply_level(level: str) -> None:
    logging.getLogger().setLevel(level)
    logging.getLogger("kryten").setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
