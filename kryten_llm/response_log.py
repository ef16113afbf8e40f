"""The JSONL response log: one line per triggered message, whatever became of it.

This is the record `kryten-llm stats` (and later `replay`) reads to tune a bot, so every held-back
trigger is logged as well as every reply: outcome `sent`, `dry_run`, `rate_limited`, `spam`,
`llm_failed`, `fallback`, `dropped`, `guard_blocked`, `invalid`, ... (every one is in
`types.Outcome`) with a machine reason.

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

A full disk must not corrupt the file: each line is written with `os.write` on an `O_APPEND`
descriptor and cut off again if it did not land whole, so every line in the file is a whole
record. Records the disk would not take are counted as `lost` (in `stats()`, the health report
and the `kryten_llm_response_log_lost_records_total` metric) with at most one warning a minute,
and writing resumes by itself once there is space again.

Secrets: records are built from data that should hold none, but every string is still passed
through the process-wide redactor (`kryten_llm.redact`), which removes the values of the
configured secrets (plus any `secrets` given here) and anything shaped like a common API key or
credential (`sk-...`, `Bearer ...`, `AIza...` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from kryten_llm._throttle import ThrottledCount
from kryten_llm.config import ResponseLogSettings
from kryten_llm.redact import Redactor, current
from kryten_llm.types import Attempt, Outcome

log = logging.getLogger(__name__)

BATCH_MAX_RECORDS = 500
DROP_WARNING_INTERVAL_SECONDS = 60.0
"""At most one warning per this interval for queue drops, and one for records the disk lost."""
CLOSE_TIMEOUT_SECONDS = 10.0
FILE_MODE = 0o666
"""Permissions for a new log file before the umask (as `open()` uses; the unit sets 0077)."""

REPLY_OUTCOMES: frozenset[Outcome] = frozenset({"sent", "dry_run", "command", "command_refused"})
"""The outcomes that mean the bot answered (or, in dry run, would have): a reply, or the
answer to a chat command."""
CAUSE_CHARS = 48
"""A cause is a short name; anything longer is cut (reasons in a log are untrusted text)."""
_CAUSE_END = re.compile(r":|;|\s\(|['\"`]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PREFIXED_CAUSES = frozenset({"regenerate", "regenerated"})
"""Reasons of the form `prefix: reason`, whose cause is the prefix and the inner cause."""


def reason_cause(outcome: str, reason: str) -> str:
    """The cause a record's reason names, without its particulars: what reports group by.

    A reason is `cause: particulars` (`user_cooldown: allowed again in 42.0 s`), a cause with
    particulars in parentheses or quotes (`all providers failed (main=http_500)`, `blocked
    pattern 'x'`), or, for a spent budget, which one and whose (`user alice`). The cause is
    the text before the first `:`, `;`, ` (` or quote, with numbers written `N`; a budget's
    is its kind (`global`, `channel`, `user`); the output guard's reason lists its decisions
    (`; `-joined) and the last is the one that blocked; `regenerated: ...` keeps its inner
    cause. Replies (`sent`, `dry_run`) have none. Linear in the reason's length.
    """
    if outcome in REPLY_OUTCOMES:
        return ""
    text = reason.rsplit(";", 1)[-1] if outcome == "guard_blocked" else reason
    if outcome == "budget":
        return " ".join(text.split()[:1])[:CAUSE_CHARS]
    head, _, rest = text.partition(":")
    if head.strip() in _PREFIXED_CAUSES and rest.strip():
        return f"{head.strip()}: {reason_cause(outcome, rest)}"[:CAUSE_CHARS]
    cause = _CAUSE_END.split(text, maxsplit=1)[0]
    return " ".join(_NUMBER.sub("N", cause).split())[:CAUSE_CHARS]


def utc_now_iso() -> str:
    """Now as UTC ISO-8601 with milliseconds and a `Z`, e.g. `2026-11-22T02:10:38.071Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_iso(epoch_seconds: float) -> str:
    """A moment (seconds since the epoch) in the same form as `utc_now_iso`."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def encode_record(record: ResponseRecord, redactor: Redactor) -> bytes:
    """One JSONL line with its newline, as UTF-8.

    JSON escapes line breaks and control characters (and we escape U+2028/2029), so a record is
    always one line, even for `str.splitlines`; a lone
    surrogate (possible in hostile text) cannot be UTF-8 and becomes `?`. Every string is
    redacted, and non-finite floats become null, so every line is valid JSON.
    """
    data = redactor.value(record.to_dict())
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    # U+2028/2029 are valid in JSON strings but break tools that split lines on them.
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return (text + "\n").encode("utf-8", errors="replace")


# --- the file --------------------------------------------------------------------------------


class ResponseLogError(Exception):
    """The response log cannot be opened (bad path, permissions): a configuration problem."""


OsWrite = Callable[[int, memoryview], int]
"""`os.write`'s shape: bytes in, how many of them reached the file out."""


class WriteResult(NamedTuple):
    """How many lines of a batch are in the file, and why the rest are not (None: all are)."""

    written: int
    error: OSError | None


class RotatingJsonlFile:
    """An append-only file rotated by size, named like RotatingFileHandler's backups.

    Each line goes to the file with `os.write` on an `O_APPEND` descriptor, no buffer in
    between, and is written whole or not at all: when a write fails or comes up short (a full
    disk, a quota), whatever part of the line reached the file is cut off again, so the file
    never holds half a record and the next record starts on a line of its own.

    Used from one writer thread at a time; the lock only guards `close` racing a late write.
    `os_write` is the system call, replaceable so tests can fill the disk.
    """

    def __init__(
        self, path: Path, max_bytes: int, backup_count: int, os_write: OsWrite = os.write
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self._os_write = os_write
        self._fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            self._size = os.fstat(fd).st_size
            if self._size and os.pread(fd, 1, self._size - 1) != b"\n":
                # Left by an older version or a crash mid-line: end that line, so our first
                # record is not glued onto it.
                self._append(fd, b"\n")
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def write_lines(self, lines: list[bytes]) -> WriteResult:
        """Append lines in order; stop at the first that cannot be written (none of it stays)."""
        written = 0
        with self._lock:
            try:
                if self._fd is None:
                    self._open_locked()
                for data in lines:
                    if self._should_rotate(len(data)):
                        self._rotate_locked()
                    assert self._fd is not None
                    self._append(self._fd, data)
                    written += 1
            except OSError as exc:
                return WriteResult(written, exc)
        return WriteResult(written, None)

    def _append(self, fd: int, data: bytes) -> None:
        """One whole line at the end of the file, or nothing (see the class docstring)."""
        landed = 0
        view = memoryview(data)
        try:
            while landed < len(data):
                count = self._os_write(fd, view[landed:])
                if count <= 0:  # a regular file that takes nothing is full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                landed += count
        except OSError:
            if landed:
                # Measured now, not remembered: the file may have been truncated by others.
                os.ftruncate(fd, os.fstat(fd).st_size - landed)
            raise
        self._size += landed

    def _should_rotate(self, incoming: int) -> bool:
        return self.max_bytes > 0 and self._size > 0 and self._size + incoming > self.max_bytes

    def _rotate_locked(self) -> None:
        self._close_locked()
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

    def _close_locked(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def discard(self) -> None:
        """Forget a broken handle so the next write reopens the file."""
        with self._lock, contextlib.suppress(OSError):
            self._close_locked()

    def close(self) -> None:
        with self._lock:
            self._close_locked()


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
        os_write: OsWrite = os.write,
    ) -> None:
        self._settings = settings
        self._secrets = secrets
        self._clock = clock
        self._file = RotatingJsonlFile(
            settings.path, settings.max_bytes, settings.backup_count, os_write
        )
        self._queue: asyncio.Queue[ResponseRecord | None] = asyncio.Queue(settings.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._drops = ThrottledCount(DROP_WARNING_INTERVAL_SECONDS, clock)
        self._lost = ThrottledCount(DROP_WARNING_INTERVAL_SECONDS, clock)
        self._loss_reported = False
        self.written = 0
        self.write_errors = 0
        self.failing: str | None = None
        """Why the last write failed (`ENOSPC`, ...) while writing fails; None once it works."""

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

    @property
    def lost(self) -> int:
        """Records that reached the writer but not the file (disk full, I/O error)."""
        return self._lost.total

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "lost": self.lost,
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
            # A broken secrets source must not stop logging; the registered secrets and the key
            # shapes are still scrubbed.
            log.exception("response log: the secrets source failed; scrubbing the rest")
            return []

    def _write_batch(self, batch: list[ResponseRecord], secrets: list[str]) -> None:
        """Runs in a worker thread: encode, scrub, append, rotate."""
        redactor = current().with_secrets(secrets) if secrets else current()
        lines = []
        for record in batch:
            try:
                lines.append(encode_record(record, redactor))
            except (TypeError, ValueError) as exc:
                self.write_errors += 1
                log.warning("response log: record not encodable (%s); skipped", type(exc).__name__)
        written, error = self._file.write_lines(lines)
        self.written += written
        if error is None:
            self._note_recovered()
            return
        self.write_errors += 1
        self._file.discard()
        self._note_lost(len(lines) - written, error)

    def _note_lost(self, count: int, error: OSError) -> None:
        """Count records the disk would not take; warn at most once per interval, not per batch.

        Runs in the writer thread, the only one that touches this counter.
        """
        self.failing = errno.errorcode.get(error.errno or 0) or type(error).__name__
        since = self._lost.note(count=count)
        if since is None:
            return
        self._loss_reported = True
        log.warning(
            "response log: writing to %s failed (%s): %d record(s) lost since the last report, "
            "%d in total; writing resumes by itself once it can",
            self._settings.path,
            error.strerror or self.failing,
            since,
            self.lost,
        )

    def _note_recovered(self) -> None:
        """Writing works again: one line, and only after a loss was reported."""
        if self.failing is None:
            return
        self.failing = None
        if self._loss_reported:
            self._loss_reported = False
            log.warning(
                "response log: writing to %s again (%d record(s) lost in total)",
                self._settings.path,
                self.lost,
            )
