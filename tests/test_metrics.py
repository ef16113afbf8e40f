"""Metrics: counters move, gauges come from the status source, and HTTP serves both formats."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kryten_llm.ops.health import HealthMonitor
from kryten_llm.ops.metrics import (
    LABEL_VALUES_MAX,
    OTHER_LABEL,
    Metrics,
    MetricsServer,
    metrics_summary,
)
from kryten_llm.types import Attempt
from tests.test_health import StaticStatus


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back as Prometheus would read it."""
    text = metrics.render().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_counters_move() -> None:
    metrics = Metrics()
    metrics.message_seen()
    metrics.message_seen()
    metrics.triggered("mention")
    metrics.held_back("cooldown")
    metrics.sent(2)
    metrics.llm_call("fake", "ok", 0.4)
    metrics.tokens("fake", 42, 7)
    metrics.cost(0.0015)
    metrics.overhead(0.003)
    assert value(metrics, "kryten_llm_messages_seen_total") == 2
    assert value(metrics, "kryten_llm_triggered_total", kind="mention") == 1
    assert value(metrics, "kryten_llm_held_back_total", reason="cooldown") == 1
    assert value(metrics, "kryten_llm_replies_sent_total") == 1
    assert value(metrics, "kryten_llm_reply_parts_sent_total") == 2
    assert value(metrics, "kryten_llm_llm_calls_total", provider="fake", outcome="ok") == 1
    assert value(metrics, "kryten_llm_llm_tokens_total", provider="fake", type="prompt") == 42
    assert value(metrics, "kryten_llm_llm_tokens_total", provider="fake", type="completion") == 7
    assert value(metrics, "kryten_llm_llm_cost_usd_total") == pytest.approx(0.0015)
    assert value(metrics, "kryten_llm_llm_latency_seconds_count", provider="fake") == 1
    assert value(metrics, "kryten_llm_llm_latency_seconds_sum", provider="fake") == 0.4
    assert value(metrics, "kryten_llm_pipeline_overhead_seconds_count") == 1


def test_attempts_are_recorded_and_skips_have_no_latency() -> None:
    metrics = Metrics()
    metrics.llm_attempts(
        [
            Attempt("a", "http_500", 120.0),
            Attempt("b", "breaker_open", 0.0),
            Attempt("c", "ok", 900),
        ]
    )
    assert value(metrics, "kryten_llm_llm_calls_total", provider="a", outcome="http_500") == 1
    assert value(metrics, "kryten_llm_llm_calls_total", provider="b", outcome="breaker_open") == 1
    assert value(metrics, "kryten_llm_llm_latency_seconds_count", provider="a") == 1
    assert value(metrics, "kryten_llm_llm_latency_seconds_count", provider="b") is None
    assert value(metrics, "kryten_llm_llm_latency_seconds_sum", provider="c") == 0.9


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), None])
def test_bad_amounts_are_ignored_not_raised(bad: Any) -> None:
    metrics = Metrics()
    metrics.cost(bad)
    metrics.tokens("p", bad, bad)
    metrics.overhead(bad)
    metrics.sent(bad)
    metrics.llm_call("p", "ok", bad)
    assert value(metrics, "kryten_llm_llm_cost_usd_total") == 0
    assert value(metrics, "kryten_llm_llm_tokens_total", provider="p", type="prompt") is None
    assert value(metrics, "kryten_llm_pipeline_overhead_seconds_count") == 0
    assert value(metrics, "kryten_llm_replies_sent_total") == 0
    assert value(metrics, "kryten_llm_llm_latency_seconds_count", provider="p") is None


def test_sent_zero_parts_is_not_a_reply() -> None:
    metrics = Metrics()
    metrics.sent(0)
    assert value(metrics, "kryten_llm_replies_sent_total") == 0


def test_label_values_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    for index in range(LABEL_VALUES_MAX + 10):
        metrics.held_back(f"reason-{index}")
    metrics.held_back("x" * 500)
    found = samples(metrics)
    reasons = {dict(k[1])["reason"] for k in found if k[0] == "kryten_llm_held_back_total"}
    assert len(reasons) == LABEL_VALUES_MAX + 1
    assert value(metrics, "kryten_llm_held_back_total", reason=OTHER_LABEL) == 11
    warnings = [r for r in caplog.records if "label reason" in r.getMessage()]
    assert len(warnings) == 1


def test_registries_are_per_instance() -> None:
    first, second = Metrics(), Metrics()
    first.message_seen()
    assert value(first, "kryten_llm_messages_seen_total") == 1
    assert value(second, "kryten_llm_messages_seen_total") == 0


def test_gauges_are_read_at_scrape_time() -> None:
    status = StaticStatus(depth=3, capacity=50, saturation=0.25)
    status.providers = {"a": {"state": "closed"}, "b": {"state": "open"}}
    metrics = Metrics()
    assert value(metrics, "kryten_llm_queue_depth") is None  # nothing attached yet
    metrics.attach(status, HealthMonitor(status))
    assert value(metrics, "kryten_llm_queue_depth") == 3
    assert value(metrics, "kryten_llm_queue_capacity") == 50
    assert value(metrics, "kryten_llm_rate_limit_saturation") == 0.25
    assert value(metrics, "kryten_llm_nats_connected") == 1
    assert value(metrics, "kryten_llm_breaker_state", provider="a") == 0
    assert value(metrics, "kryten_llm_breaker_state", provider="b") == 2
    assert value(metrics, "kryten_llm_health_status") == 1
    status.depth = 7
    status.connected = False
    assert value(metrics, "kryten_llm_queue_depth") == 7
    assert value(metrics, "kryten_llm_nats_connected") == 0
    assert value(metrics, "kryten_llm_health_status") == 2


def test_response_log_losses_are_counters_read_at_scrape_time() -> None:
    status = StaticStatus()
    metrics = Metrics()
    metrics.attach(status)
    assert value(metrics, "kryten_llm_response_log_lost_records_total") == 0
    status.log_status = {"written": 5, "dropped": 2, "lost": 30, "error": "ENOSPC"}
    assert value(metrics, "kryten_llm_response_log_lost_records_total") == 30
    assert value(metrics, "kryten_llm_response_log_dropped_records_total") == 2


class _RaisingStatus(StaticStatus):
    def queue_depth(self) -> int:
        raise RuntimeError("bug")


def test_a_broken_status_source_costs_the_gauges_not_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics(_RaisingStatus())
    metrics.message_seen()
    assert value(metrics, "kryten_llm_messages_seen_total") == 1
    assert value(metrics, "kryten_llm_queue_capacity") is None
    assert any("gauges failed (RuntimeError)" in r.getMessage() for r in caplog.records)


async def test_http_metrics_and_health() -> None:
    status = StaticStatus()
    monitor = HealthMonitor(status)
    metrics = Metrics()
    metrics.attach(status, monitor)
    server = MetricsServer(metrics, monitor, "127.0.0.1", 0)
    assert await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            metrics.message_seen()
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            names = {f.name for f in text_string_to_metric_families(text)}
            assert {"kryten_llm_messages_seen", "kryten_llm_queue_depth"} <= names
            assert "kryten_llm_messages_seen_total 1.0" in text
            async with http.get(f"{base}/health") as resp:
                assert resp.status == 200
                body = await resp.json()
            assert body["status"] == "healthy"
            assert body["components"]["nats"]["connected"] is True
            status.connected = False
            async with http.get(f"{base}/health") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "failing"
            async with http.get(f"{base}/nope") as resp:
                assert resp.status == 404
    finally:
        await server.stop()


async def test_port_in_use_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    status = StaticStatus()
    monitor = HealthMonitor(status)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(Metrics(status), monitor, "127.0.0.1", port)
        assert await server.start() is False
        await server.stop()
    assert any("cannot listen on 127.0.0.1" in r.getMessage() for r in caplog.records)


def test_metrics_summary_totals_counters_across_labels() -> None:
    metrics = Metrics()
    metrics.triggered("mention")
    metrics.triggered("trigger_word")
    metrics.message_seen()
    summary = metrics_summary(metrics)
    assert summary["triggered"] == 2.0
    assert summary["messages_seen"] == 1.0
    assert summary["held_back"] == 0.0
    assert "llm_latency_seconds" not in summary  # histograms are not headline counters


# --- the HTTP endpoint's limits: slow clients, too many clients ------------------------------

SLOW_CLIENTS = 8


@asynccontextmanager
async def guarded_server(**limits: Any) -> AsyncIterator[tuple[MetricsServer, Metrics]]:
    status = StaticStatus()
    monitor = HealthMonitor(status)
    metrics = Metrics()
    metrics.attach(status, monitor)
    server = MetricsServer(metrics, monitor, "127.0.0.1", 0, **limits)
    assert await server.start()
    try:
        yield server, metrics
    finally:
        await server.stop()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def slowloris(port: int) -> Stream:
    """A client that starts a request and never finishes its headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
    await writer.drain()
    return reader, writer


async def closed_by_server(stream: Stream, within_seconds: float) -> bytes:
    """What the server sent before it closed the connection; fails if it stays open."""
    reader, _ = stream
    try:
        return await asyncio.wait_for(reader.read(), within_seconds)
    except ConnectionResetError:
        return b""


async def health_over_new_connection(port: int) -> int:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(f"http://127.0.0.1:{port}/health") as resp,
    ):
        await resp.read()
        return resp.status


async def keep_alive_request(port: int) -> Stream:
    """A whole request answered on a connection the client then keeps open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return reader, writer


def close_all(streams: list[Stream]) -> None:
    for _, writer in streams:
        writer.close()


async def test_slow_headers_are_cut_off_and_health_answers_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with guarded_server(header_timeout_seconds=1.0, connections_max=32) as (server, m):
        assert server.port
        slow = [await slowloris(server.port) for _ in range(SLOW_CLIENTS)]
        try:
            assert await health_over_new_connection(server.port) == 200
            for stream in slow:
                assert await closed_by_server(stream, within_seconds=5.0) == b""
        finally:
            close_all(slow)
        assert value(m, "kryten_llm_http_connections_closed_total", reason="header_timeout") == (
            SLOW_CLIENTS
        )
        assert await health_over_new_connection(server.port) == 200
    timeouts = [r for r in caplog.records if "no complete request head" in r.getMessage()]
    assert len(timeouts) == 1, "one warning per interval, not one per connection"


async def test_a_slow_second_request_on_a_kept_alive_connection_is_cut_off_too() -> None:
    async with guarded_server(header_timeout_seconds=1.0) as (server, _):
        assert server.port
        reader, writer = await keep_alive_request(server.port)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            await writer.drain()
            assert await closed_by_server((reader, writer), within_seconds=5.0) == b""
        finally:
            writer.close()


async def test_idle_keep_alive_connections_are_closed() -> None:
    async with guarded_server(idle_timeout_seconds=1.0) as (server, _):
        assert server.port
        stream = await keep_alive_request(server.port)
        try:
            assert await closed_by_server(stream, within_seconds=5.0) == b""
            assert server.open_connections == 0
        finally:
            close_all([stream])


async def test_connections_beyond_the_cap_are_closed_and_health_still_answers() -> None:
    cap = 4
    async with guarded_server(connections_max=cap) as (server, m):
        assert server.port
        slow = [await slowloris(server.port) for _ in range(cap)]
        try:
            # The limit is reached by clients that never finish: a new one still gets in,
            # and the oldest of them makes room.
            assert await health_over_new_connection(server.port) == 200
            assert await closed_by_server(slow[0], within_seconds=5.0) == b""
            assert server.open_connections <= cap
            assert value(m, "kryten_llm_http_connections_closed_total", reason="evicted") == 1
        finally:
            close_all(slow)
        await wait_until(lambda: server.open_connections == 0)
        # Every slot held by a client that was just answered: the next one is refused.
        kept = [await keep_alive_request(server.port) for _ in range(cap)]
        try:
            extra = await slowloris(server.port)
            answer = await closed_by_server(extra, within_seconds=5.0)
            assert answer.startswith(b"HTTP/1.1 503")
            close_all([extra])
            assert server.open_connections == cap
            assert value(m, "kryten_llm_http_connections_closed_total", reason="refused") == 1
        finally:
            close_all(kept)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
