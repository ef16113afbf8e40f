"""The JSONL response log: one line per triggered message, whatever became of it.

This is the record `kryten-llm stats` (and later `replay`) reads to tune a bot, so every held-back
trigger is logged as well as every reply: outcome `sent`, `dry_run`, `rate_limited`, `spam`,
`llm_failed`, `filtered`, `dropped`, `guard_blocked`, `invalid`, ... with a machine reason.

Interface::

    log = ResponseLog(settings.response_log, secrets=lambda: [key1, key2])
    await log.start()              # opens the file (raises ResponseLogError if it cannot)
    log.write(ResponseRecord(...)) # never blocks: enqueues, or drops with a warning when full
    await log.close()              # writes everything queued, then stops

Why a queue and a thread: the pipeline must never wait on a disk. `write` only puts the record
on a bounded asyncio queue; one writer task drains it in batches and does the JSON encoding,
scrubbing and file I/O in a worker thread (`asyncio.to_thread`). A full queue means the disk is
slower than the chat: the record is dropped and counted, with at most one warning a minute.

Rotation follows `logging.handlers.RotatingFileHandler` naming: when the next line would take the
file past `max_bytes`, `responses.jsonl` becomes `responses.jsonl.1`, `.1` becomes `.2` ... up
to `backup_count` (older ones are deleted; 0 keeps none). `max_bytes` 0 never rotates.

Secrets: records are built from data that should hold none, but every string is still passed
through `SecretScrubber`, which removes the values of the currently configured secrets and
anything shaped like a common API key or credential (`sk-...`, `Bearer ...`, `AIza...` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kryten_llm._throttle import ThrottledCount
from kryten_llm.config import ResponseLogSettings
from kryten_llm.types import Attempt

log = logging.getLogger(__name__)

BATCH_MAX_RECORDS = 500
DROP_WARNING_INTERVAL_SECONDS = 60.0
CLOSE_TIMEOUT_SECONDS = 10.0
MIN_SECRET_CHARS = 6
"""Configured secrets shorter than this are not searched for: they would redact ordinary words."""
REDACTED = "***redacted***"

OUTCOMES = (
    "sent",
    "dry_run",
    "rate_limited",
    "spam",
    "llm_failed",
    "filtered",
    "dropped",
    "guard_blocked",
    "invalid",
)
"""Outcomes the pipeline uses today; the log accepts any string so new ones need no change here."""
REPLY_OUTCOMES = frozenset({"sent", "dry_run"})


def utc_now_iso() -> str:
    """Now as UTC ISO-8601 with milliseconds and a `Z`, e.g. `2026-11-22T02:10:38.071Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    """One triggered message and what happened to it (a JSONL line; see the module docstring).

    `message` is the user's input line; `parts` the formatted chat lines sent or that would have
    been; `latency_ms` the LLM time of the successful call; `attempts` every provider call.
    """

    channel: str
    username: str
    message: str
    outcome: str
    reason: str = ""
    trigger_type: str = ""
    trigger_name: str = ""
    rank: float = 0.0
    correlation_id: str = ""
    domain: str = ""
    provider: str | None = None
    model: str | None = None
    attempts: tuple[Attempt, ...] = ()
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    parts: tuple[str, ...] = ()
    dry_run: bool = False
    anomalies: tuple[str, ...] = ()
    """What the provider reported that could not be used as sent (clamped or ignored), or
    what failed while accounting for the reply (`LLMResult.anomalies`)."""
    timestamp: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, timestamp first so a log reads well with `head`."""
        data = dataclasses.asdict(self)
        return {"timestamp": data.pop("timestamp"), **data}


# --- scrubbing -------------------------------------------------------------------------------

_KEY_SHAPES = re.compile(
    r"""
      \bsk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}             # OpenAI, OpenRouter, Anthropic (sk-ant-)
    | \b[Bb]earer\s+[A-Za-z0-9._~+/=\-]{12,}            # HTTP bearer credentials
    | \bBasic\s+[A-Za-z0-9+/]{16,}={0,2}               # HTTP basic credentials
    | \bAIza[0-9A-Za-z_\-]{30,}                       # Google / Gemini
    | \bgh[pousr]_[A-Za-z0-9]{30,}                    # GitHub tokens
    | \bxox[abprs]-[A-Za-z0-9\-]{10,}                 # Slack tokens
    | \b(?:hf|gsk|xai)[_-][A-Za-z0-9]{20,}            # Hugging Face, Groq, xAI
    | (?i:\b(?:api[_-]?key|access[_-]?token|secret|password)\b["']?\s*[:=]\s*["']?)[^\s"',;]{4,}
    """,
    re.VERBOSE,
)


class SecretScrubber:
    """Removes configured secret values and key-shaped strings from any JSON-like value.

    `secrets` is called each time (so a hot-reloaded key is covered at once); values shorter
    than `MIN_SECRET_CHARS` are ignored. Non-finite floats become None so every line is valid
    JSON.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        cleaned = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS}
        # Longest first, so a secret containing another is removed whole.
        self._secrets = sorted(cleaned, key=len, reverse=True)

    def scrub_text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _KEY_SHAPES.sub(REDACTED, text)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {str(k): self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value


def encode_record(record: ResponseRecord, scrubber: SecretScrubber) -> bytes:
    """One JSONL line with its newline, as UTF-8.

    JSON escapes line breaks and control characters (and we escape U+2028/2029), so a record is
    always one line, even for `str.splitlines`; a lone
    surrogate (possible in hostile text) cannot be UTF-8 and becomes `?`.
    """
    data = scrubber.scrub(record.to_dict())
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    # U+2028/2029 are valid in JSON strings but break tools that split lines on them.
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return (text + "\n").encode("utf-8", errors="replace")


# --- the file --------------------------------------------------------------------------------


class ResponseLogError(Exception):
    """The response log cannot be opened (bad path, permissions): a configuration problem."""


class RotatingJsonlFile:
    """An append-only file rotated by size, named like RotatingFileHandler's backups.

    Used from one writer thread at a time; the lock only guards `close` racing a late write.
    """

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._file: IO[bytes] | None = None
        self._size = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        self._size = self._file.tell()

    def write_lines(self, lines: list[bytes]) -> None:
        with self._lock:
            if self._file is None:
                self._open_locked()
            for data in lines:
                if self._should_rotate(len(data)):
                    self._rotate_locked()
                assert self._file is not None
                self._file.write(data)
                self._size += len(data)
            assert self._file is not None
            self._file.flush()

    def _should_rotate(self, incoming: int) -> bool:
        return self.max_bytes > 0 and self._size > 0 and self._size + incoming > self.max_bytes

    def _rotate_locked(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for index in range(self.backup_count - 1, 0, -1):
            older = self._backup(index)
            if older.exists():
                older.replace(self._backup(index + 1))
        if self.backup_count > 0:
            self.path.replace(self._backup(1))
        else:
            self.path.unlink(missing_ok=True)
        self._open_locked()

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def discard(self) -> None:
        """Forget a broken handle so the next write reopens the file."""
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.close()
            self._file = None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# --- the log ---------------------------------------------------------------------------------


def _no_secrets() -> list[str]:
    return []


class ResponseLog:
    """Non-blocking JSONL writer (see the module docstring)."""

    def __init__(
        self,
        settings: ResponseLogSettings,
        secrets: Callable[[], Iterable[str]] = _no_secrets,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._clock = clock
        self._file = RotatingJsonlFile(settings.path, settings.max_bytes, settings.backup_count)
        self._queue: asyncio.Queue[ResponseRecord | None] = asyncio.Queue(settings.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._drops = ThrottledCount(DROP_WARNING_INTERVAL_SECONDS, clock)
        self.written = 0
        self.write_errors = 0

    @property
    def path(self) -> Path:
        return self._settings.path

    async def start(self) -> None:
        """Open the file and start the writer; a path that cannot be opened is a clear error."""
        if not self._settings.enabled or self._task is not None:
            return
        try:
            await asyncio.to_thread(self._file.open)
        except OSError as exc:
            raise ResponseLogError(
                f"cannot open response log {self._settings.path}: {exc.strerror or exc}"
            ) from None
        self._task = asyncio.create_task(self._run(), name="response-log-writer")

    def write(self, record: ResponseRecord) -> bool:
        """Queue a record without waiting; False if it was dropped (disabled, closed, full)."""
        if not self._settings.enabled:
            return False
        if self._closing:
            self._note_drop("the log is closed")
            return False
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._note_drop(f"the queue is full ({self._settings.queue_size})")
            return False
        return True

    @property
    def dropped(self) -> int:
        return self._drops.total

    def _note_drop(self, why: str) -> None:
        since = self._drops.note()
        if since is not None:
            log.warning(
                "response log: dropped %d record(s) because %s (%d dropped in total)",
                since,
                why,
                self.dropped,
            )

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "write_errors": self.write_errors,
            "queued": self._queue.qsize(),
        }

    async def close(self, timeout_seconds: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Write everything already queued, then stop the writer and close the file."""
        if self._closing:
            return
        self._closing = True
        if self._task is None:
            if self._queue.qsize():
                log.warning(
                    "response log: closed before start; %d record(s) not written",
                    self._queue.qsize(),
                )
            return
        try:
            await asyncio.wait_for(self._queue.put(None), timeout_seconds)
            await asyncio.wait_for(asyncio.shield(self._task), timeout_seconds)
        except TimeoutError:
            log.warning(
                "response log: writer did not finish within %.0f s; %d record(s) not written",
                timeout_seconds,
                self._queue.qsize(),
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._file.close)

    async def _run(self) -> None:
        """Drain the queue in batches; the encoding and the disk work happen in a thread."""
        stopping = False
        while not stopping:
            batch, stopping = await self._next_batch()
            if batch:
                secrets = self._current_secrets()
                try:
                    await asyncio.to_thread(self._write_batch, batch, secrets)
                except Exception:
                    # Never let one bad batch kill the writer: later records still matter.
                    self.write_errors += 1
                    log.exception("response log: writing a batch failed unexpectedly")

    async def _next_batch(self) -> tuple[list[ResponseRecord], bool]:
        first = await self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < BATCH_MAX_RECORDS:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _current_secrets(self) -> list[str]:
        try:
            return list(self._secrets())
        except Exception:
            # A broken secrets source must not stop logging; key shapes are still scrubbed.
            log.exception("response log: the secrets source failed; scrubbing key shapes only")
            return []

    def _write_batch(self, batch: list[ResponseRecord], secrets: list[str]) -> None:
        """Runs in a worker thread: encode, scrub, append, rotate."""
        scrubber = SecretScrubber(secrets)
        lines = []
        for record in batch:
            try:
                lines.append(encode_record(record, scrubber))
            except (TypeError, ValueError) as exc:
                self.write_errors += 1
                log.warning("response log: record not encodable (%s); skipped", type(exc).__name__)
        try:
            self._file.write_lines(lines)
        except OSError as exc:
            self.write_errors += 1
            self._file.discard()
            log.warning(
                "response log: writing %d record(s) to %s failed: %s",
                len(lines),
                self._settings.path,
                exc.strerror or type(exc).__name__,
            )
            return
        self.written += len(lines)
