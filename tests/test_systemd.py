"""sd_notify and the watchdog, against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kryten_llm.daemon.systemd import SystemdNotifier, notify_address, watchdog_seconds


class FakeSystemd:
    """Receives notify datagrams on a thread, with arrival times (the loop may be blocked)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        return [m for _, m in self.received]

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[tuple[str, FakeSystemd]]:
    path = str(tmp_path / "notify.sock")
    receiver = FakeSystemd(path)
    yield path, receiver
    receiver.close()


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll: the datagrams land on a receiver thread, not on the loop."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_outside_systemd_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval_seconds is None
    notifier.start_watchdog()
    await notifier.close()


async def test_ready_status_stopping_arrive(fake_systemd: tuple[str, FakeSystemd]) -> None:
    path, receiver = fake_systemd
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("listening on 1 channel")
    assert notifier.status("degraded: provider open")
    assert notifier.reloading()
    assert notifier.stopping()
    await wait_until(lambda: len(receiver.received) == 4)
    ready, status, reloading, stopping = receiver.messages()
    assert ready == "READY=1\nSTATUS=listening on 1 channel"
    assert status == "STATUS=degraded: provider open"
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(reloading.rsplit("=", 1)[1]) > 0
    assert stopping == "STOPPING=1"
    await notifier.close()


async def test_abstract_socket() -> None:
    name = f"kryten-llm-test-{uuid.uuid4().hex}"
    receiver = FakeSystemd("\0" + name)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        await wait_until(lambda: receiver.messages() == ["READY=1"])
        await notifier.close()
    finally:
        receiver.close()


async def test_watchdog_pings_at_half_the_interval(fake_systemd: tuple[str, FakeSystemd]) -> None:
    path, receiver = fake_systemd
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    notifier = SystemdNotifier(env)
    assert notifier.watchdog_interval_seconds == 0.2
    notifier.start_watchdog()
    notifier.start_watchdog()  # a second start must not add a second pinger
    await wait_until(lambda: receiver.messages().count("WATCHDOG=1") >= 5)
    times = [t for t, m in receiver.received if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap > 0.05 for gap in gaps), gaps  # one pinger at ~0.1 s, not two
    await notifier.close()
    count = len(receiver.received)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == count  # closed: no more pings


async def test_a_stalled_loop_stops_the_pings(fake_systemd: tuple[str, FakeSystemd]) -> None:
    """The pings come from the event loop, so a blocked loop is what systemd sees."""
    path, receiver = fake_systemd
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    notifier.start_watchdog()
    await wait_until(lambda: len(receiver.received) >= 2)
    stall_started = time.monotonic()
    time.sleep(0.6)  # noqa: ASYNC251 - deliberately block the loop, as a buggy handler would
    stall_ended = time.monotonic()
    await wait_until(lambda: any(t > stall_ended for t, _ in receiver.received))
    await notifier.close()
    during = [t for t, _ in receiver.received if stall_started + 0.01 < t < stall_ended]
    assert during == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "abc"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({}, None),
    ],
)
def test_watchdog_environment(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_seconds(env, pid=4242) == expected


def test_watchdog_pid_matching_this_process() -> None:
    env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_seconds(env) == 1.0


def test_malformed_watchdog_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None
    assert any("malformed WATCHDOG_USEC" in r.getMessage() for r in caplog.records)


def test_watchdog_ignored_without_notify_socket() -> None:
    assert SystemdNotifier({"WATCHDOG_USEC": "1000000"}).watchdog_interval_seconds is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("/run/systemd/notify", "/run/systemd/notify"), ("@abc", "\0abc"), ("", None), ("rel", None)],
)
def test_notify_address(value: str, expected: str | None) -> None:
    assert notify_address({"NOTIFY_SOCKET": value}) == expected


async def test_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    await notifier.close()


async def test_full_socket_never_blocks_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that never reads: once its queue is full, sends fail instead of waiting.

    A blocking send would hang this test on the first full queue, so finishing proves it.
    """
    caplog.set_level(logging.INFO)
    path = str(tmp_path / "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as never_reads:
        never_reads.bind(path)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        results = [notifier.watchdog() for _ in range(5000)]
        assert results[0] is True
        assert False in results
        failures = [r for r in caplog.records if "notify 'WATCHDOG' failed" in r.getMessage()]
        assert len(failures) == 1  # logged once, not once per ping
        never_reads.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # systemd catches up: drain its queue
            while True:
                never_reads.recv(64)
        assert notifier.watchdog() is True
        assert "getting through again" in caplog.text
        await notifier.close()
