"""systemd's notify protocol (sd_notify) and watchdog, in a few lines of stdlib.

Under `Type=notify` systemd passes `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket)
and, with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). We send datagrams:

- `READY=1` once the service is subscribed and can answer (systemd then reports it started);
- `WATCHDOG=1` every half watchdog interval, from a task on the running event loop: if the loop
  stalls (a blocking call, a busy loop), the pings stop and systemd kills and restarts us;
- `STOPPING=1` when shutdown begins; `STATUS=...` free text for `systemctl status`, which any
  local user can read: every datagram is redacted (a NATS URL may carry a password).

Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op. Sending never blocks and never
raises: a full or vanished socket is logged at debug level and skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

from kryten_llm.redact import redact_text

log = logging.getLogger(__name__)

WATCHDOG_PING_FRACTION = 0.5
"""Ping at this fraction of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) recommends."""
WATCHDOG_MIN_PING_SECONDS = 0.05


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address from `NOTIFY_SOCKET`; `@name` becomes the abstract `\\0name`."""
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if not path.startswith("/"):
        log.warning("systemd: ignoring NOTIFY_SOCKET that is neither a path nor @abstract")
        return None
    return path


def watchdog_seconds(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog interval meant for this process, or None when there is none.

    `WATCHDOG_PID`, when set, must name this process: a child that inherited the variables
    must not ping on its parent's behalf.
    """
    raw = environ.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            log.warning("systemd: ignoring malformed WATCHDOG_PID")
            return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("systemd: ignoring malformed WATCHDOG_USEC")
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


class SystemdNotifier:
    """Sends notify datagrams and runs the watchdog ping task; inert outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = notify_address(env)
        self.watchdog_interval_seconds = watchdog_seconds(env) if self._address else None
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        """A failure is logged once, until a send succeeds again: a stuck systemd must not
        turn every watchdog ping into a log line."""

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send one datagram (`KEY=value` lines); True if it was handed to the kernel."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(redact_text(state).encode("utf-8"), self._address)
        except OSError as exc:  # includes BlockingIOError: never wait on systemd
            if not self._failing:
                log.warning("systemd: notify %r failed: %s", state.split("=", 1)[0], exc)
            self._failing = True
            return False
        if self._failing:
            log.info("systemd: notifications are getting through again")
            self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def reloading(self) -> bool:
        """Mark a reload in progress; send `ready()` when it is done (sd_notify(3))."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def start_watchdog(self) -> None:
        """Ping from the running loop at half the interval; nothing to do without a watchdog."""
        interval = self.watchdog_interval_seconds
        if interval is None or self._task is not None:
            return
        period = max(interval * WATCHDOG_PING_FRACTION, WATCHDOG_MIN_PING_SECONDS)
        self._task = asyncio.create_task(self._ping_loop(period), name="systemd-watchdog")
        log.info("systemd: watchdog %.1fs, pinging every %.1fs", interval, period)

    async def _ping_loop(self, period_seconds: float) -> None:
        while True:
            self.watchdog()
            await asyncio.sleep(period_seconds)

    async def close(self) -> None:
        """Stop the watchdog task and close the socket (after `stopping()`)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
