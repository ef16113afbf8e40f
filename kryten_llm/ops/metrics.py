"""Prometheus metrics and the HTTP endpoint that serves them with a JSON `/health`.

The pipeline calls small methods on `Metrics` (`message_seen()`, `triggered(kind)`, ...);
gauges (queue depth, breaker states, NATS link, saturation, health) are read from the
`StatusSource` at scrape time, so nothing has to push them. Each `Metrics` has its own
`CollectorRegistry`, never the global one, so several services can live in one process (tests).

The HTTP server is built to be reachable by strangers without being held by them: a request
head must arrive within `HEADER_TIMEOUT_SECONDS`, a connection with nothing to do is closed
after `IDLE_TIMEOUT_SECONDS`, and at most `SERVER_CONNECTIONS_MAX` are open at once (the oldest
one still waiting for its request head makes room for a new one; when none is, the new one is
answered 503 and closed). A thousand slow clients therefore hold at most that many sockets, for
seconds, and `/health` keeps answering meanwhile. The endpoints take no request body.

No label ever carries a user name or chat text. Label values come from code and config (trigger
kinds, hold-back reasons, provider names, outcomes), and each label is still capped at
`LABEL_VALUES_MAX` distinct values (extra ones become `other`) so a bug cannot grow the series
count without bound.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from kryten_llm._throttle import ThrottledCount
from kryten_llm.ops.health import OVERALL_CODE, HealthMonitor, StatusSource
from kryten_llm.redact import redact_value
from kryten_llm.types import Attempt

log = logging.getLogger(__name__)

PREFIX = "kryten_llm"
LABEL_VALUES_MAX = 64
LABEL_VALUE_CHARS_MAX = 64
OTHER_LABEL = "other"
SKIPPED_OUTCOMES = frozenset({"breaker_open"})
"""Attempt outcomes that never reached the provider: counted, but no latency observed."""
BREAKER_CODE = {"closed": 0, "half_open": 1, "open": 2}
LLM_LATENCY_BUCKETS_SECONDS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)
OVERHEAD_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

HEADER_TIMEOUT_SECONDS = 5.0
"""From a connection's start (or a new request's first byte) to the end of the request head."""
IDLE_TIMEOUT_SECONDS = 30.0
"""A keep-alive connection that sends nothing after its last request is closed after this."""
SERVER_CONNECTIONS_MAX = 64
"""Open HTTP connections at most; Prometheus needs one, an operator's curl another."""
GUARD_LOG_INTERVAL_SECONDS = 60.0
"""At most one warning per kind of closed connection per this interval; each one is counted."""
HEAD_END = b"\r\n\r\n"
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)
GUARD_REASONS = {
    "header_timeout": "no complete request head within {header:g} s",
    "evicted": "made room for a new connection while still waiting for a request head",
    "refused": "over the limit of {cap} connections",
}


class _LabelGuard:
    """Caps one label's distinct values; the first `LABEL_VALUES_MAX` seen are kept."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._seen: set[str] = set()
        self._warned = False

    def __call__(self, value: object) -> str:
        text = str(value)[:LABEL_VALUE_CHARS_MAX] or "unknown"
        if text in self._seen:
            return text
        if len(self._seen) < LABEL_VALUES_MAX:
            self._seen.add(text)
            return text
        if not self._warned:
            self._warned = True
            log.warning(
                "metrics: label %s has %d values; further values are counted as %r",
                self._name,
                LABEL_VALUES_MAX,
                OTHER_LABEL,
            )
        return OTHER_LABEL


def _amount(value: float | int | None) -> float | None:
    """A usable non-negative amount, or None (counters cannot go down; NaN poisons sums)."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        log.debug("metrics: ignoring amount %r", value)
        return None
    return number


class Metrics:
    """Every counter and histogram, plus scrape-time gauges from an attached status source."""

    def __init__(self, status: StatusSource | None = None) -> None:
        self.registry = CollectorRegistry()
        self._status = status
        self._monitor: HealthMonitor | None = None
        self._kinds = _LabelGuard("kind")
        self._reasons = _LabelGuard("reason")
        self._providers = _LabelGuard("provider")
        self._outcomes = _LabelGuard("outcome")
        self._define()
        self.registry.register(_StatusCollector(self))

    def _define(self) -> None:
        r = self.registry
        self._seen = Counter(f"{PREFIX}_messages_seen", "Chat messages received.", registry=r)
        self._triggered = Counter(
            f"{PREFIX}_triggered", "Messages the bot decided to answer.", ["kind"], registry=r
        )
        self._held = Counter(
            f"{PREFIX}_held_back", "Replies held back, by reason.", ["reason"], registry=r
        )
        self._replies = Counter(f"{PREFIX}_replies_sent", "Replies published.", registry=r)
        self._parts = Counter(
            f"{PREFIX}_reply_parts_sent", "Chat lines published (a reply may be split).", registry=r
        )
        self._calls = Counter(
            f"{PREFIX}_llm_calls",
            "LLM attempts by provider and outcome (ok, timeout, http_500, breaker_open, ...).",
            ["provider", "outcome"],
            registry=r,
        )
        self._tokens = Counter(
            f"{PREFIX}_llm_tokens",
            "Tokens used, by provider and type.",
            ["provider", "type"],
            registry=r,
        )
        self._cost = Counter(f"{PREFIX}_llm_cost_usd", "Estimated LLM spend in USD.", registry=r)
        self._latency = Histogram(
            f"{PREFIX}_llm_latency_seconds",
            "Duration of each LLM attempt, by provider.",
            ["provider"],
            buckets=LLM_LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self._http_closed = Counter(
            f"{PREFIX}_http_connections_closed",
            "Connections to /metrics and /health closed by the server's limits, by reason "
            "(header_timeout, evicted, refused).",
            ["reason"],
            registry=r,
        )
        self._overhead = Histogram(
            f"{PREFIX}_pipeline_overhead_seconds",
            "Message received to reply published, minus the time spent waiting for the LLM.",
            buckets=OVERHEAD_BUCKETS_SECONDS,
            registry=r,
        )

    def attach(self, status: StatusSource, monitor: HealthMonitor | None = None) -> None:
        """Where the scrape-time gauges come from (the service, once it exists)."""
        self._status = status
        self._monitor = monitor

    # --- what the pipeline calls ---

    def message_seen(self) -> None:
        self._seen.inc()

    def triggered(self, kind: str) -> None:
        self._triggered.labels(kind=self._kinds(kind)).inc()

    def held_back(self, reason: str) -> None:
        self._held.labels(reason=self._reasons(reason)).inc()

    def sent(self, parts: int) -> None:
        """One reply published as `parts` chat lines (0 parts means nothing was sent)."""
        count = _amount(parts)
        if not count:
            return
        self._replies.inc()
        self._parts.inc(count)

    def llm_call(self, provider: str, outcome: str, latency_s: float | None) -> None:
        labels = {"provider": self._providers(provider), "outcome": self._outcomes(outcome)}
        self._calls.labels(**labels).inc()
        latency = _amount(latency_s)
        if latency is not None and outcome not in SKIPPED_OUTCOMES:
            self._latency.labels(provider=labels["provider"]).observe(latency)

    def llm_attempts(self, attempts: Iterable[Attempt]) -> None:
        """Record every attempt of one reply (`LLMResult.attempts` / `LLMUnavailable.attempts`)."""
        for attempt in attempts:
            self.llm_call(attempt.provider, attempt.outcome, attempt.latency_ms / 1000.0)

    def tokens(self, provider: str, prompt: int | None, completion: int | None) -> None:
        name = self._providers(provider)
        for kind, value in (("prompt", prompt), ("completion", completion)):
            amount = _amount(value)
            if amount:
                self._tokens.labels(provider=name, type=kind).inc(amount)

    def cost(self, usd: float | None) -> None:
        amount = _amount(usd)
        if amount:
            self._cost.inc(amount)

    def http_connection_closed(self, reason: str) -> None:
        self._http_closed.labels(reason=reason).inc()

    def overhead(self, seconds: float) -> None:
        amount = _amount(seconds)
        if amount is not None:
            self._overhead.observe(amount)

    # --- exposition ---

    def render(self) -> bytes:
        """The Prometheus text format for this registry."""
        return generate_latest(self.registry)

    def _gauges(self) -> Iterator[Metric]:
        status = self._status
        if status is None:
            return
        yield _gauge("queue_depth", "Events and reply jobs waiting.", status.queue_depth())
        yield _gauge("queue_capacity", "Bound of those queues.", status.queue_capacity())
        yield _gauge("nats_connected", "1 while the NATS link is up.", status.nats_connected())
        yield _gauge(
            "rate_limit_saturation",
            "Highest reply-budget use across channels (1 = spent).",
            status.limiter_saturation(),
        )
        yield _gauge(
            "paused_channels", "Channels paused by an operator.", len(status.paused_channels())
        )
        breakers = GaugeMetricFamily(
            f"{PREFIX}_breaker_state",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )
        for name, state in status.provider_states().items():
            code = BREAKER_CODE.get(str(state.get("state")), 2)
            breakers.add_metric([self._providers(name)], code)
        yield breakers
        log_state = status.response_log_status()
        yield _counter(
            "response_log_dropped_records",
            "JSONL records dropped because the writer's queue was full.",
            log_state.get("dropped"),
        )
        yield _counter(
            "response_log_lost_records",
            "JSONL records the disk refused (full disk, I/O error); none is ever half-written.",
            log_state.get("lost"),
        )
        if self._monitor is not None:
            overall = self._monitor.check().status
            yield _gauge(
                "health_status", "0 healthy, 1 degraded, 2 failing.", OVERALL_CODE[overall]
            )


def _gauge(name: str, doc: str, value: float | bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=float(value))


def _counter(name: str, doc: str, value: object) -> CounterMetricFamily:
    """A counter kept elsewhere (read at scrape time); anything but a count reads as 0."""
    number = value if isinstance(value, int) and not isinstance(value, bool) else 0
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=float(number))


class _StatusCollector(Collector):
    """Pulls the gauges at scrape time; a failing getter costs the gauges, not the scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self._metrics._gauges())
        except Exception as exc:
            log.error("metrics: reading status for gauges failed (%s)", exc.__class__.__name__)
            return []

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed description: keeps registration from calling collect()


# --- HTTP -----------------------------------------------------------------------------------


class MetricsServer:
    """`GET /metrics` (Prometheus text) and `GET /health` (JSON; 503 when failing).

    aiohttp parses and answers the requests; `_ConnectionGuard` stands in front of it and
    enforces the limits in the module docstring, which aiohttp has no settings for.
    """

    def __init__(
        self,
        metrics: Metrics,
        monitor: HealthMonitor,
        host: str,
        port: int,
        *,
        header_timeout_seconds: float = HEADER_TIMEOUT_SECONDS,
        idle_timeout_seconds: float = IDLE_TIMEOUT_SECONDS,
        connections_max: int = SERVER_CONNECTIONS_MAX,
    ) -> None:
        self._metrics = metrics
        self._monitor = monitor
        self._host = host
        self._port = port
        self._header_timeout_seconds = header_timeout_seconds
        self._idle_timeout_seconds = idle_timeout_seconds
        self._connections_max = connections_max
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._guard: _ConnectionGuard | None = None
        self.port: int | None = None
        """The bound port once started (differs from the configured one when that is 0)."""

    @property
    def open_connections(self) -> int:
        return len(self._guard.open) if self._guard is not None else 0

    async def start(self) -> bool:
        """Listen; a port that cannot be bound is logged and skipped, not fatal to the bot."""
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/health", self._handle_health)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=self._idle_timeout_seconds)
        await runner.setup()
        assert runner.server is not None  # set up just now
        guard = _ConnectionGuard(
            runner.server,
            self._metrics,
            header_timeout_seconds=self._header_timeout_seconds,
            idle_timeout_seconds=self._idle_timeout_seconds,
            connections_max=self._connections_max,
        )
        try:
            listener = await asyncio.get_running_loop().create_server(guard, self._host, self._port)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%d (%s); /metrics and /health are off",
                self._host,
                self._port,
                exc.strerror or exc.__class__.__name__,
            )
            await runner.cleanup()
            return False
        self._runner, self._listener, self._guard = runner, listener, guard
        self.port = _bound_port(listener, self._port)
        log.info("metrics: serving /metrics and /health on http://%s:%d", self._host, self.port)
        return True

    async def stop(self) -> None:
        """Stop accepting, let aiohttp close its connections, then drop any still open."""
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._guard is not None:
            self._guard.abort_all()
            self._guard = None
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                await asyncio.wait_for(listener.wait_closed(), HEADER_TIMEOUT_SECONDS)
            except TimeoutError:
                log.warning("metrics: the HTTP listener did not close in time")

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _handle_health(self, request: web.Request) -> web.Response:
        report = self._monitor.check()
        return web.json_response(
            redact_value(report.to_dict()), status=503 if report.status == "failing" else 200
        )


class _ConnectionGuard:
    """The listener's protocol factory: caps connections, evicts, and counts what it closes."""

    def __init__(
        self,
        make_handler: Callable[[], asyncio.Protocol],
        metrics: Metrics,
        *,
        header_timeout_seconds: float,
        idle_timeout_seconds: float,
        connections_max: int,
    ) -> None:
        self.make_handler = make_handler
        self.header_timeout_seconds = header_timeout_seconds
        self.idle_timeout_seconds = idle_timeout_seconds
        self._metrics = metrics
        self._connections_max = connections_max
        self.open: dict[_GuardedConnection, None] = {}
        """Admitted connections, oldest first (dicts keep insertion order)."""
        self._closed = {
            reason: ThrottledCount(GUARD_LOG_INTERVAL_SECONDS) for reason in GUARD_REASONS
        }

    def __call__(self) -> _GuardedConnection:
        return _GuardedConnection(self)

    def admit(self, connection: _GuardedConnection) -> bool:
        """Make room if the limit is reached (the oldest connection still waiting for its
        request head goes); False when nothing can go."""
        if len(self.open) >= self._connections_max:
            victim = next((c for c in self.open if c.awaiting_head), None)
            if victim is None:
                self.closed("refused")
                return False
            self.closed("evicted")
            self.forget(victim)
            victim.abort()
        self.open[connection] = None
        return True

    def forget(self, connection: _GuardedConnection) -> None:
        self.open.pop(connection, None)

    def closed(self, reason: str) -> None:
        """Count a connection the limits closed; warn once per reason per interval."""
        self._metrics.http_connection_closed(reason)
        counter = self._closed[reason]
        since = counter.note()
        if since is not None:
            why = GUARD_REASONS[reason].format(
                header=self.header_timeout_seconds, cap=self._connections_max
            )
            log.warning(
                "metrics: closed %d connection(s) since the last report (%s); %d in total",
                since,
                why,
                counter.total,
            )

    def abort_all(self) -> None:
        for connection in list(self.open):
            connection.abort()
        self.open.clear()


class _GuardedConnection(asyncio.Protocol):
    """Passes one connection's bytes to aiohttp's handler, watching the request heads.

    Each request head (up to its blank line) must arrive within the header timeout, from the
    connection's start or from the first byte of a later request on the same connection;
    after a head the idle timeout runs until the next byte. Finding the blank line is one
    linear scan of each chunk (plus the 3 bytes before it).
    """

    def __init__(self, guard: _ConnectionGuard) -> None:
        self._guard = guard
        self._handler: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self.awaiting_head = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._guard.admit(self):
            self._transport.write(REFUSED_RESPONSE)
            self._transport.close()
            return
        self._handler = self._guard.make_handler()
        self._arm(self._guard.header_timeout_seconds)
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._handler is None:
            return
        self._watch(data)
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._guard.forget(self)
        if self._handler is not None:
            self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()

    def abort(self) -> None:
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def _watch(self, data: bytes) -> None:
        if not self.awaiting_head:  # the first byte of the next request
            self.awaiting_head = True
            self._arm(self._guard.header_timeout_seconds)
        window = self._tail + data
        rest = 0
        while (end := window.find(HEAD_END, rest)) >= 0:
            rest = end + len(HEAD_END)
            self.awaiting_head = rest < len(window)  # bytes after it begin another request
            self._arm(
                self._guard.header_timeout_seconds
                if self.awaiting_head
                else self._guard.idle_timeout_seconds
            )
        self._tail = window[max(rest, len(window) - len(HEAD_END) + 1) :]

    def _arm(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        """Too slow: a head that did not arrive in time, or a connection left idle."""
        self._timer = None
        if self.awaiting_head:
            self._guard.closed("header_timeout")
        else:
            log.debug("metrics: closing an idle keep-alive connection")
        self.abort()


def _bound_port(listener: asyncio.Server, configured: int) -> int:
    for sock in listener.sockets:
        address = sock.getsockname()
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return configured


def metrics_summary(metrics: Metrics) -> dict[str, Any]:
    """A few headline counters for the `status` control endpoint (no label breakdown)."""
    totals: dict[str, Any] = {}
    for family in metrics.registry.collect():
        if family.type != "counter":
            continue
        total = sum((s.value for s in family.samples if s.name.endswith("_total")), 0.0)
        totals[family.name.removeprefix(f"{PREFIX}_")] = total
    return totals
