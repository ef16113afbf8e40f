"""Reaching NATS at start, over real processes and a real nats-server that requires a password.

Refused credentials are said once, in one line, and end the process with exit 1 (systemd shows
a failed unit); a bus that is not there yet is said once with what to do, then waited for with
backoff and a quiet log, and READY=1 comes only once connected. The start-up banner says what
the run uses, naming an unset key variable but never a key.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kryten_llm.config import build_settings
from kryten_llm.daemon import connect
from kryten_llm.daemon.connect import BusWaiter, probe_bus
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer, free_port, start_nats_server
from tests.support.service import base_config, merge
from tests.test_service_lifecycle import (
    NotifySocket,
    process_log,
    start_process,
    wait_for,
    write_config,
)

NATS_USER = "kryten"
NATS_PASSWORD = "correct-horse-battery-staple"
WRONG_PASSWORD = "Tr0ub4dor-and-3-wrong"
KEY_VALUE = "sk-test-banner-never-prints-this-0123456789"


@pytest.fixture(scope="module")
def guarded_nats() -> Iterator[NatsServer]:
    server = start_nats_server(user=NATS_USER, password=NATS_PASSWORD)
    yield server
    server.stop()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def config_file(tmp_path: Path, nats: dict[str, object], llm_url: str) -> Path:
    config = merge(
        base_config(str(nats["url"]), llm_url),
        {"nats": nats, "response_log": {"path": str(tmp_path / "r.jsonl")}},
    )
    path = tmp_path / "config.json"
    write_config(path, config)
    path.chmod(0o600)  # an inline password in a private file is no warning
    return path


@pytest.mark.slow
async def test_wrong_credentials_exit_1_with_one_line_and_no_traceback(
    guarded_nats: NatsServer, fake_llm: FakeLLM, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    path = config_file(
        tmp_path,
        {"url": guarded_nats.url, "user": NATS_USER, "password": WRONG_PASSWORD},
        fake_llm.base_url,
    )
    process = start_process(path, {"NOTIFY_SOCKET": notify_socket.path})
    try:
        returncode = await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
    log = process_log(path)
    assert returncode == 1, log
    assert "Traceback" not in log
    refused = [line for line in log.splitlines() if "refused" in line]
    assert len(refused) == 1, log
    assert f"NATS at {guarded_nats.url} refused user '{NATS_USER}'" in refused[0]
    assert "ERROR" in refused[0] and "check nats.user and nats.password" in refused[0]
    assert WRONG_PASSWORD not in log
    assert "READY=1" not in notify_socket.states()


async def test_a_token_or_no_credentials_are_named_too(guarded_nats: NatsServer) -> None:
    none = build_settings({"nats": {"url": guarded_nats.url}}, "t").nats
    found = await probe_bus(none)
    assert found.kind == "auth" and found.detail == "Authorization Violation"
    assert "none are configured" in connect.auth_failure_line(none, found)
    token = build_settings({"nats": {"url": guarded_nats.url, "token": "tkn-123456"}}, "t").nats
    line = connect.auth_failure_line(token, await probe_bus(token))
    assert "refused a token" in line and "tkn-123456" not in line
    right = build_settings(
        {"nats": {"url": guarded_nats.url, "user": NATS_USER, "password": NATS_PASSWORD}}, "t"
    ).nats
    assert (await probe_bus(right)).ok


async def test_credentials_in_the_url_are_not_shown(guarded_nats: NatsServer) -> None:
    url = f"nats://{NATS_USER}:{WRONG_PASSWORD}@127.0.0.1:{guarded_nats.port}"
    nats = build_settings({"nats": {"url": url}}, "t").nats
    found = await probe_bus(nats)
    line = connect.auth_failure_line(nats, found)
    assert found.kind == "auth" and WRONG_PASSWORD not in line
    assert f"NATS at nats://127.0.0.1:{guarded_nats.port} refused user '{NATS_USER}'" in line


@pytest.mark.slow
async def test_an_unreachable_bus_is_one_line_then_quiet_retries_until_it_comes(
    fake_llm: FakeLLM, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    path = config_file(tmp_path, {"url": url}, fake_llm.base_url)
    process = start_process(path, {"NOTIFY_SOCKET": notify_socket.path})
    late: NatsServer | None = None
    try:
        await wait_for(lambda: "not reachable" in process_log(path), timeout=20)
        await asyncio.sleep(4.0)  # probes at about 0, 1 and 3 s: retried, not logged
        assert process.poll() is None
        assert "READY=1" not in notify_socket.states()
        assert any(s.startswith("EXTEND_TIMEOUT_USEC=") for s in notify_socket.states())
        late = await asyncio.to_thread(start_nats_server, 10.0, False, port)
        await wait_for(lambda: "READY=1" in notify_socket.states(), timeout=40)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        if late is not None:
            await asyncio.to_thread(late.stop)
    log = process_log(path)
    lines = log.splitlines()
    unreachable = [line for line in lines if "not reachable" in line]
    assert len(unreachable) == 1, log
    assert f"NATS at {url} is not reachable (connection refused)" in unreachable[0]
    assert "kryten-llm demo" in unreachable[0] and "start nats-server" in unreachable[0]
    assert not [line for line in lines if "will retry" in line or "still waiting" in line], log
    assert "is reachable after" in log
    assert "Traceback" not in log


async def test_waiting_logs_a_line_a_minute_not_one_per_attempt(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Six real probes of a closed port; a clock that runs 25 s per reading."""
    monkeypatch.setattr(connect, "RETRY_INITIAL_SECONDS", 0.01)
    monkeypatch.setattr(connect, "RETRY_MAX_SECONDS", 0.02)
    fake_now = [0.0]

    def clock() -> float:
        fake_now[0] += 25.0
        return fake_now[0]

    stop = asyncio.Event()
    nats = build_settings({"nats": {"url": f"nats://127.0.0.1:{free_port()}"}}, "t").nats
    waiter: BusWaiter

    def stop_after_six(_delay: float, _status: str) -> None:
        if waiter.attempts >= 6:
            stop.set()

    waiter = BusWaiter(nats, stop, on_wait=stop_after_six, clock=clock)
    caplog.set_level(logging.INFO, logger="kryten_llm.daemon.connect")
    started = time.monotonic()
    assert await waiter.wait() is False
    assert waiter.attempts == 6
    assert time.monotonic() - started < 20
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not reachable" in m for m in messages) == 1
    # 25 s of fake time per attempt: a "still waiting" line every third attempt or so.
    still = [m for m in messages if m.startswith("still waiting for NATS")]
    assert 1 <= len(still) <= 3, messages
    assert "attempts in" in still[0] and "(last: connection refused)" in still[0]


@pytest.mark.slow
async def test_the_banner_says_what_runs_and_names_an_unset_key_variable(
    nats_server: NatsServer, fake_llm: FakeLLM, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    config = merge(
        base_config(nats_server.url, fake_llm.base_url),
        {
            "response_log": {"path": str(tmp_path / "r.jsonl")},
            "llm_providers": {
                "hosted": {
                    "type": "openrouter",
                    "base_url": fake_llm.base_url,
                    "model": "big-model",
                    "api_key_env": "KLLM_BANNER_UNSET",
                    "priority": 1,
                },
                "keyed": {
                    "base_url": fake_llm.base_url,
                    "model": "keyed-model",
                    "api_key_env": "KLLM_BANNER_SET",
                    "priority": 2,
                },
            },
            "metrics": {"port": 0},
        },
    )
    path = tmp_path / "config.json"
    write_config(path, config)
    path.chmod(0o600)
    process = start_process(
        path,
        {"NOTIFY_SOCKET": notify_socket.path, "KLLM_BANNER_SET": KEY_VALUE},
    )
    try:
        await wait_for(lambda: "READY=1" in notify_socket.states(), timeout=30)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = process_log(path)
    assert f"kryten-llm 0.1.0 starting: config {path}; dry run off" in log
    assert "channels: cytu.be/420Grindhouse, example.net/Lounge" in log
    assert (
        "1. hosted (openrouter, big-model, key unset: KLLM_BANNER_UNSET); "
        "2. keyed (openai_compatible, keyed-model, key set (KLLM_BANNER_SET)); "
        "3. fake (openai_compatible, fake-model, key inline)"
    ) in log
    assert f"bus: {nats_server.url} as no credentials" in log
    assert "metrics: http://127.0.0.1 on a free port chosen at start" in log
    warning = [line for line in log.splitlines() if "WARNING" in line and "KLLM_BANNER" in line]
    assert len(warning) == 1 and "'hosted'" in warning[0] and "not set" in warning[0]
    assert KEY_VALUE not in log
