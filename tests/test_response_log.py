"""ResponseLog: every record lands, rotation by size, secrets scrubbed, the loop never waits."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kryten_llm.config import ResponseLogSettings
from kryten_llm.redact import MARKER as REDACTED
from kryten_llm.redact import set_secrets
from kryten_llm.response_log import ResponseLog, ResponseLogError, ResponseRecord
from kryten_llm.types import Attempt


def settings(tmp_path: Path, **overrides: Any) -> ResponseLogSettings:
    return ResponseLogSettings(path=tmp_path / "logs" / "responses.jsonl", **overrides)


def record(i: int = 0, **overrides: Any) -> ResponseRecord:
    fields: dict[str, Any] = {
        "channel": "lounge",
        "username": f"user{i}",
        "message": f"hey bot, message number {i}",
        "outcome": "sent",
        "trigger_type": "mention",
        "trigger_name": "mention",
        "correlation_id": f"id-{i}",
        "provider": "local",
        "model": "llama3.2",
        "attempts": (Attempt("local", "ok", 120.5),),
        "latency_ms": 120.5,
        "parts": ("a reply",),
    }
    fields.update(overrides)
    return ResponseRecord(**fields)


def read_all(path: Path) -> list[dict[str, Any]]:
    """Every record in the file and its rotated siblings, oldest file first."""
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    rows = []
    for file in [*files, path]:
        if file.exists():
            rows += [json.loads(line) for line in file.read_text("utf-8").splitlines()]
    return rows


async def test_record_fields_are_written_as_one_json_line(tmp_path: Path) -> None:
    log = ResponseLog(settings(tmp_path))
    await log.start()
    assert log.write(record(7, dry_run=True, outcome="dry_run", prompt_tokens=12, cost_usd=0.01))
    await log.close()
    [row] = read_all(log.path)
    assert next(iter(row)) == "timestamp"
    stamp = datetime.fromisoformat(row["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    assert row["attempts"] == [{"provider": "local", "outcome": "ok", "latency_ms": 120.5}]
    assert row["parts"] == ["a reply"]
    assert (row["outcome"], row["dry_run"], row["prompt_tokens"], row["cost_usd"]) == (
        "dry_run",
        True,
        12,
        0.01,
    )
    assert row["completion_tokens"] is None
    assert log.stats()["written"] == 1


async def test_many_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    log = ResponseLog(settings(tmp_path, queue_size=100_000))
    await log.start()

    async def writer(w: int) -> None:
        for i in range(100):
            assert log.write(record(w * 1000 + i))
            if i % 7 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(writer(w) for w in range(50)))
    await log.close()
    ids = [row["correlation_id"] for row in read_all(log.path)]
    assert sorted(ids) == sorted(f"id-{w * 1000 + i}" for w in range(50) for i in range(100))


async def test_files_rotate_at_the_size_with_handler_style_names(tmp_path: Path) -> None:
    log = ResponseLog(settings(tmp_path, max_bytes=2000, backup_count=3))
    await log.start()
    for i in range(200):
        log.write(record(i))
    await log.close()
    path = log.path
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == [
        "responses.jsonl",
        "responses.jsonl.1",
        "responses.jsonl.2",
        "responses.jsonl.3",
    ]
    for file in path.parent.iterdir():
        assert 0 < file.stat().st_size <= 2000
    rows = read_all(path)
    assert rows[-1]["correlation_id"] == "id-199", "the newest record is in the live file"
    ids = [int(r["correlation_id"][3:]) for r in rows]
    assert ids == list(range(ids[0], 200)), "the kept records are the newest, in order"
    assert ids[0] > 0, "the oldest records were rotated away"


async def test_backup_count_zero_keeps_only_the_live_file(tmp_path: Path) -> None:
    log = ResponseLog(settings(tmp_path, max_bytes=1000, backup_count=0))
    await log.start()
    for i in range(50):
        log.write(record(i))
    await log.close()
    assert [p.name for p in log.path.parent.iterdir()] == ["responses.jsonl"]
    assert log.path.stat().st_size <= 1000


async def test_a_single_record_larger_than_max_bytes_is_still_written(tmp_path: Path) -> None:
    log = ResponseLog(settings(tmp_path, max_bytes=100, backup_count=2))
    await log.start()
    log.write(record(1, message="x" * 500))
    log.write(record(2, message="y" * 500))
    await log.close()
    assert [r["correlation_id"] for r in read_all(log.path)] == ["id-1", "id-2"]


@pytest.mark.parametrize(
    "leak",
    [
        "sk-proj-AbCdEf0123456789ghIJkl",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "AIzaSyA-1234567890abcdefghijklmnopqrstu",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "api_key=abcd1234efgh",
        'password: "hunter2hunter2"',
    ],
)
async def test_key_shaped_strings_are_scrubbed_everywhere(tmp_path: Path, leak: str) -> None:
    log = ResponseLog(settings(tmp_path))
    await log.start()
    log.write(
        record(
            1,
            message=f"my key is {leak} ok",
            reason=f"provider said {leak}",
            parts=(f"here: {leak}",),
            attempts=(Attempt("local", f"http_401 {leak}", 3.0),),
        )
    )
    await log.close()
    text = log.path.read_text("utf-8")
    secret_part = leak.split()[-1].split("=")[-1].strip('"')
    assert secret_part not in text
    assert REDACTED in text
    assert "my key is" in text, "the rest of the message survives"


async def test_configured_secret_values_are_scrubbed(tmp_path: Path) -> None:
    current = ["plainsecretvalue", "abc"]  # "abc" is too short to search for
    log = ResponseLog(settings(tmp_path), secrets=lambda: current)
    await log.start()
    log.write(record(1, message="leaking plainsecretvalue here, abc"))
    await log.close()
    row = read_all(log.path)[0]
    assert row["message"] == f"leaking {REDACTED} here, abc"


async def test_a_failing_secrets_source_still_scrubs_key_shapes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[str]:
        raise RuntimeError("config reload in progress")

    log = ResponseLog(settings(tmp_path), secrets=broken)
    await log.start()
    log.write(record(1, message="sk-abcdefghijklmnopqrstuvwx"))
    await log.close()
    assert read_all(log.path)[0]["message"] == REDACTED
    assert "secrets source failed" in caplog.text


async def test_registered_secrets_are_scrubbed_without_being_passed(tmp_path: Path) -> None:
    """The service registers its secrets once (`set_secrets`); the log needs no list of its own."""
    set_secrets(["registered-secret-value"])
    try:
        log = ResponseLog(settings(tmp_path))
        await log.start()
        log.write(record(1, message="leaking registered-secret-value here"))
        await log.close()
    finally:
        set_secrets([])
    assert read_all(log.path)[0]["message"] == f"leaking {REDACTED} here"


async def test_ordinary_chat_is_logged_unchanged(tmp_path: Path) -> None:
    texts = ["task-force-assemble-everyone-now", "Basic instinct is a movie", "bearer bonds"]
    log = ResponseLog(settings(tmp_path), secrets=lambda: ["hunter2secret"])
    await log.start()
    for i, text in enumerate(texts):
        log.write(record(i, message=text))
    await log.close()
    assert [row["message"] for row in read_all(log.path)] == texts


class SlowLog(ResponseLog):
    """A disk that takes a long time per batch, to prove the loop never waits on it."""

    delay_seconds = 1.0

    def _write_batch(self, batch: list[ResponseRecord], secrets: list[str]) -> None:
        time.sleep(self.delay_seconds)  # runs in the worker thread
        super()._write_batch(batch, secrets)


@pytest.mark.slow
async def test_a_slow_disk_never_blocks_the_loop(tmp_path: Path) -> None:
    log = SlowLog(settings(tmp_path))
    await log.start()
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    for i in range(300):
        log.write(record(i))
        await asyncio.sleep(0)
    # One blocking write would take a whole slow batch; all 300 take far less than one.
    assert time.monotonic() - started < SlowLog.delay_seconds, "write() only enqueues"
    await asyncio.sleep(0.6)
    stop.set()
    await task
    assert ticks >= 10, "the loop kept running while the disk was busy"
    await log.close()
    assert len(read_all(log.path)) == 300


@pytest.mark.slow
async def test_a_full_queue_drops_with_one_rate_limited_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = SlowLog(settings(tmp_path, queue_size=5))
    await log.start()
    with caplog.at_level(logging.WARNING, logger="kryten_llm.response_log"):
        accepted = sum(log.write(record(i)) for i in range(100))
    assert accepted < 100
    assert log.stats()["dropped"] == 100 - accepted
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1
    assert "queue is full" in warnings[0].getMessage()
    await log.close()
    assert len(read_all(log.path)) == accepted


async def test_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    log = ResponseLog(ResponseLogSettings(path=blocker / "responses.jsonl"))
    with pytest.raises(ResponseLogError, match="cannot open response log"):
        await log.start()
    await log.close()


async def test_disk_errors_mid_run_are_logged_and_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = ResponseLog(settings(tmp_path, max_bytes=500, backup_count=1))
    await log.start()
    # A directory where the backup must go makes every rotation fail.
    (log.path.parent / "responses.jsonl.1").mkdir()
    (log.path.parent / "responses.jsonl.1" / "keep").write_text("x")
    for i in range(20):
        log.write(record(i))
        await asyncio.sleep(0.01)
    await log.close()
    assert log.stats()["write_errors"] >= 1
    assert "failed" in caplog.text
    assert log.write(record(99)) is False, "closed logs drop"


async def test_hostile_text_stays_one_valid_line(tmp_path: Path) -> None:
    nasty = "line1\nline2\r\n\u2028\u2029\x00\x1b[31m\ud800 /clear <script>"
    log = ResponseLog(settings(tmp_path))
    await log.start()
    log.write(record(1, message=nasty, username=nasty, latency_ms=float("nan")))
    log.write(record(2, cost_usd=float("inf")))
    await log.close()
    raw = log.path.read_bytes().split(b"\n")
    assert len([line for line in raw if line]) == 2
    rows = read_all(log.path)
    assert rows[0]["latency_ms"] is None
    assert rows[1]["cost_usd"] is None
    assert rows[0]["message"].startswith("line1\nline2")


async def test_disabled_log_writes_nothing(tmp_path: Path) -> None:
    log = ResponseLog(settings(tmp_path, enabled=False))
    await log.start()
    assert log.write(record(1)) is False
    await log.close()
    assert not log.path.parent.exists()


async def test_close_before_start_and_double_close_are_harmless(tmp_path: Path) -> None:
    log = ResponseLog(settings(tmp_path))
    log.write(record(1))
    await log.close()
    await log.close()
    assert not log.path.exists()


# --- a full disk -------------------------------------------------------------------------------


class FullDisk:
    """`os.write` on a disk with `free` bytes left: a short write, then ENOSPC, as Linux does."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, fd: int, data: memoryview) -> int:
        self.calls += 1
        if self.free <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        landed = os.write(fd, data[: self.free])
        self.free -= landed
        return landed


async def settled(log: ResponseLog, records: int, timeout: float = 10.0) -> None:
    """Until the writer has dealt with `records` records (written or lost)."""
    deadline = time.monotonic() + timeout
    while log.written + log.lost < records:
        assert time.monotonic() < deadline, f"writer stuck: {log.stats()}"
        await asyncio.sleep(0.01)


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the file as JSON; fails on a half-written or glued-together record."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), "the file ends in the middle of a record"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


async def test_a_full_disk_loses_whole_records_counts_them_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = FullDisk(free=10**9)
    log = ResponseLog(settings(tmp_path), os_write=disk)
    await log.start()
    caplog.set_level(logging.WARNING, logger="kryten_llm.response_log")
    for i in range(5):
        log.write(record(i))
    await settled(log, 5)
    disk.free = 100  # less than one record: the next write lands partly, then ENOSPC
    for i in range(100, 130):  # one batch each: the disk refuses every one of them
        log.write(record(i))
        await settled(log, 5 + i - 99)
    assert log.lost == 30 and log.stats()["lost"] == 30
    assert log.failing == "ENOSPC"
    assert disk.calls >= 30, "every batch tried the disk again"
    disk.free = 10**9  # space is back
    for i in range(200, 203):
        log.write(record(i))
    await log.close()
    assert log.failing is None
    rows = whole_lines(log.path)
    expected = [f"id-{i}" for i in (0, 1, 2, 3, 4, 200, 201, 202)]
    assert [r["correlation_id"] for r in rows] == expected
    assert log.written == 8 and log.lost == 30
    lost_lines = [r for r in caplog.records if "lost since the last report" in r.getMessage()]
    assert len(lost_lines) == 1, "one warning per interval, not one per batch"
    assert "No space left on device" in lost_lines[0].getMessage()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("writing to" in m and "again" in m for m in messages) == 1


async def test_losses_are_reported_again_after_the_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    disk = FullDisk(free=0)
    log = ResponseLog(settings(tmp_path), clock=lambda: now[0], os_write=disk)
    await log.start()
    caplog.set_level(logging.WARNING, logger="kryten_llm.response_log")
    for i in range(4):
        log.write(record(i))
        await settled(log, i + 1)
    now[0] += 61
    log.write(record(9))
    await settled(log, 5)
    await log.close()
    messages = [r.getMessage() for r in caplog.records]
    reports = [m for m in messages if "lost since the last report" in m]
    assert len(reports) == 2
    assert "4 record(s) lost since the last report, 5 in total" in reports[1]
    assert log.path.read_bytes() == b""


async def test_a_partial_line_left_by_a_crash_is_ended_before_the_next_record(
    tmp_path: Path,
) -> None:
    path = settings(tmp_path).path
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"timestamp":"2026-11-22T02:10:38.071Z","chan')
    log = ResponseLog(settings(tmp_path))
    await log.start()
    log.write(record(1))
    await log.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["correlation_id"] == "id-1"


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 KiB filesystem; skipped where mounting is not permitted (not root, a sandbox)."""
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=10)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem with one file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"x" * 1024)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def test_a_real_full_filesystem_keeps_the_jsonl_parseable(tiny_tmpfs: Path) -> None:
    log = ResponseLog(ResponseLogSettings(path=tiny_tmpfs / "responses.jsonl"))
    await log.start()
    for i in range(3):
        log.write(record(i))
    await settled(log, 3)
    filler = fill(tiny_tmpfs)  # what is left is the rest of the log file's last page
    for i in range(100, 140):
        log.write(record(i, message="x" * 200))
        await settled(log, 3 + i - 99)
    assert log.lost > 0, "the filesystem filled up"
    assert log.failing == "ENOSPC"
    filler.unlink()  # space is back
    for i in range(200, 203):
        log.write(record(i))
    await log.close()
    rows = whole_lines(log.path)
    assert len(rows) == log.written == 46 - log.lost
    assert [r["correlation_id"] for r in rows[-3:]] == ["id-200", "id-201", "id-202"]
