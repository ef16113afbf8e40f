"""Reaching NATS at start: one probe per attempt, and one clear line for each way it fails.

kryten-py's `connect()` hands nats-py unlimited attempts, so a server that refuses our
credentials was retried every 2 s forever, each refusal logged with a traceback, although
nothing but an operator can fix it. So before kryten-py connects, a plain nats-py connection
that gives up at its first error probes each configured server and says what it found:

- **refused credentials** (`Authorization Violation`): fatal. `BusAuthError` carries one line
  naming the server, the user (or token) and what to check; the service logs it and exits 1,
  so systemd shows the failure instead of a unit that is "activating" forever.
- **not reachable** (connection refused, no answer): one WARNING naming the URL and what to
  do (start nats-server, fix `nats.url`, or try `kryten-llm demo`, which runs its own), then
  retries with exponential backoff and a quiet log: a line a minute, not one per attempt.
  systemd's start timeout is extended meanwhile; READY=1 comes only once connected.

The probe connection is closed before kryten-py connects for real. `kryten-llm check` uses
the same probe for its bus line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client as NatsClient

from kryten_llm.config import NatsSettings
from kryten_llm.redact import redact_text

log = logging.getLogger(__name__)

RETRY_INITIAL_SECONDS = 1.0
"""First wait after an unreachable probe; doubles per attempt."""
RETRY_MAX_SECONDS = 30.0
"""Longest wait between probes of a server that is not reachable."""
STILL_WAITING_LOG_SECONDS = 60.0
"""While NATS stays unreachable, one log line per this interval, not one per attempt."""
PROBE_GRACE_SECONDS = 1.0
"""Slack on top of nats-py's own connect timeout before a probe is given up."""
AUTH_ERRORS = ("authorization violation", "authentication")
"""What nats-server says (lower-cased) when it refuses the credentials."""

ProbeKind = Literal["ok", "auth", "unreachable"]


@dataclass(frozen=True)
class BusProbe:
    """What one probe of one server found."""

    url: str
    """The server, without any credentials in the URL."""
    kind: ProbeKind
    detail: str = ""
    """Why it failed: `connection refused`, `Authorization Violation`, ... (never a secret)."""
    who: str = "no credentials"
    """Who we presented ourselves as (`credentials()`)."""
    connection: NatsClient | None = None
    """The open probe connection when `kind` is ok and the caller asked to keep it."""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class BusAuthError(Exception):
    """The server refused the configured credentials: retrying cannot help."""


def display_url(url: str) -> str:
    """`url` without `user:password@`: fit for logs and tables."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def credentials(nats: NatsSettings, url: str) -> str:
    """Who we present ourselves as, without any secret: `user 'bot'`, `a token`, `none`."""
    user = nats.user or urlsplit(url).username
    if user:
        return f"user {user!r}"
    if nats.token is not None:
        return "a token"
    return "no credentials"


def auth_failure_line(nats: NatsSettings, probe: BusProbe) -> str:
    """The one line an operator needs when the server refuses us."""
    who = probe.who
    if who == "no credentials":
        fix = (
            "the server requires credentials and none are configured: set nats.user and "
            "nats.password (or KRYTEN_LLM_NATS_PASSWORD), or nats.token"
        )
    elif who == "a token":
        fix = "check nats.token (or KRYTEN_LLM_NATS_TOKEN) against the server's authorization"
    else:
        fix = (
            "check nats.user and nats.password (or KRYTEN_LLM_NATS_PASSWORD) against the "
            "server's authorization"
        )
    return f"NATS at {probe.url} refused {who} ({probe.detail}): {fix}; not retrying"


def unreachable_line(probe: BusProbe) -> str:
    return (
        f"NATS at {probe.url} is not reachable ({probe.detail}): start nats-server there or "
        "fix nats.url, or try `kryten-llm demo`, which runs its own; retrying with backoff, "
        f"logging once a minute until it connects"
    )


def _kind_of(error: BaseException | None) -> tuple[ProbeKind, str]:
    """Classify a probe's first error; the detail never carries a credential."""
    if error is None:
        return "unreachable", "no answer"
    text = str(error)
    if any(marker in text.lower() for marker in AUTH_ERRORS):
        return "auth", text.removeprefix("nats: ").strip("'")
    if isinstance(error, ConnectionRefusedError):
        return "unreachable", "connection refused"
    if isinstance(error, TimeoutError):
        return "unreachable", "no answer in time"
    if isinstance(error, OSError) and error.strerror:
        return "unreachable", error.strerror.lower()
    return "unreachable", redact_text(f"{type(error).__name__}: {text}"[:120])


async def probe_server(nats: NatsSettings, url: str, *, keep_open: bool = False) -> BusProbe:
    """Connect once to `url` with the configured credentials; never retries, never raises.

    nats-py retries inside `connect()` even when told not to reconnect, so the attempt is
    ended at its first error. With `keep_open` a successful probe hands its connection over
    (for `check`, which goes on to look at KV buckets); otherwise it is closed.
    """
    errors: list[BaseException] = []
    first_error = asyncio.Event()

    async def on_error(error: Exception) -> None:
        errors.append(error)
        first_error.set()

    async def quiet(*_args: Any) -> None:
        return None

    connection = NatsClient()
    timeout = float(nats.connect_timeout_seconds)
    options: dict[str, Any] = {
        "servers": [url],
        "connect_timeout": timeout,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0,
        "error_cb": on_error,
        "disconnected_cb": quiet,
        "reconnected_cb": quiet,
        "closed_cb": quiet,
        "name": "kryten-llm-probe",
    }
    if nats.user:
        options["user"] = nats.user
    if nats.password is not None:
        options["password"] = nats.password.get_secret_value()
    if nats.token is not None:
        options["token"] = nats.token.get_secret_value()
    connecting = asyncio.ensure_future(connection.connect(**options))
    erroring = asyncio.ensure_future(first_error.wait())
    try:
        await asyncio.wait(
            {connecting, erroring},
            timeout=timeout + PROBE_GRACE_SECONDS,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        erroring.cancel()
        if not connecting.done():
            connecting.cancel()
        outcome = (await asyncio.gather(connecting, return_exceptions=True))[0]
    shown, who = display_url(url), credentials(nats, url)
    if not isinstance(outcome, BaseException) and connection.is_connected:
        if keep_open:
            return BusProbe(shown, "ok", who=who, connection=connection)
        await connection.close()
        return BusProbe(shown, "ok", who=who)
    await _close_quietly(connection)
    first = errors[0] if errors else (outcome if isinstance(outcome, Exception) else None)
    kind, detail = _kind_of(first)
    return BusProbe(shown, kind, detail, who)


async def _close_quietly(connection: NatsClient) -> None:
    try:
        await connection.close()
    except Exception:  # a connection that never opened has nothing to close
        log.debug("closing a failed NATS probe failed", exc_info=True)


async def probe_bus(nats: NatsSettings, *, keep_open: bool = False) -> BusProbe:
    """Probe the configured servers in order: the first that accepts us, else the verdict.

    A refusal of our credentials by any server wins over another being unreachable: the
    credentials are the same for all of them, so that is what the operator must fix.
    """
    failures: list[BusProbe] = []
    for url in nats.server_list():
        found = await probe_server(nats, url, keep_open=keep_open)
        if found.ok:
            return found
        failures.append(found)
    refused = [f for f in failures if f.kind == "auth"]
    return refused[0] if refused else failures[0]


class BusWaiter:
    """Waits until NATS accepts a probe: fatal on refused credentials, patient otherwise.

    `on_wait(seconds, status)` is called before each wait (the service extends systemd's
    start timeout and sets its status line with it).
    """

    def __init__(
        self,
        nats: NatsSettings,
        stop: asyncio.Event,
        on_wait: Callable[[float, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nats = nats
        self.stop = stop
        self.on_wait = on_wait
        self.clock = clock
        self.attempts = 0

    async def wait(self) -> bool:
        """True once a probe connects; False if `stop` was set first; BusAuthError if refused."""
        started = self.clock()
        delay = RETRY_INITIAL_SECONDS
        next_report = started + STILL_WAITING_LOG_SECONDS
        while not self.stop.is_set():
            self.attempts += 1
            probe = await probe_bus(self.nats)
            if probe.ok:
                if self.attempts > 1:
                    waited = self.clock() - started
                    log.info(
                        "NATS at %s is reachable after %d attempt(s) (%.0f s)",
                        probe.url,
                        self.attempts,
                        waited,
                    )
                return True
            if probe.kind == "auth":
                raise BusAuthError(auth_failure_line(self.nats, probe))
            now = self.clock()
            if self.attempts == 1:
                log.warning("%s", unreachable_line(probe))
            elif now >= next_report:
                next_report = now + STILL_WAITING_LOG_SECONDS
                log.warning(
                    "still waiting for NATS at %s: %d attempts in %.0f s (last: %s)",
                    probe.url,
                    self.attempts,
                    now - started,
                    probe.detail,
                )
            if self.on_wait is not None:
                self.on_wait(delay, f"waiting for NATS at {probe.url} ({probe.detail})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        return False
