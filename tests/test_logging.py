"""Structured logs: JSON lines, one correlation id through every stage, the operator's level."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from kryten_llm.logsetup import CorrelationFilter, correlation_id, setup_logging
from tests.support.bridge import Bridge
from tests.support.fake_llm import FakeLLM
from tests.support.nats_server import NatsServer, free_port
from tests.support.service import BOT, CHANNEL_A, make_settings, running_service


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(CorrelationFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[Collect]:
    handler = Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
async def bridge(nats_server: NatsServer) -> AsyncIterator[Bridge]:
    b = await Bridge.connect(nats_server.url)
    yield b
    await b.close()


def test_json_lines_carry_the_correlation_id(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", "json")
        token = correlation_id.set("cid-123")
        logging.getLogger("kryten_llm.test").info("hello %s", "world")
        correlation_id.reset(token)
        logging.getLogger("kryten_llm.test").warning("no id here")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "hello world" and lines[0]["correlation_id"] == "cid-123"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "kryten_llm.test"
    assert "correlation_id" not in lines[1]


async def test_one_correlation_id_follows_a_message_through_every_stage(
    nats_server: NatsServer, fake_llm: FakeLLM, bridge: Bridge, collected: Collect
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # the first provider refuses connections
    settings = make_settings(
        nats_server.url,
        fake_llm.base_url,
        llm_providers={
            "dead": {"type": "openai_compatible", "base_url": dead, "model": "m", "priority": 1},
            "fake": {"priority": 2},
        },
        llm_manager={"max_retries": 0},
    )
    fake_llm.reply_with("Found you through the fallback.")
    async with running_service(settings):
        await bridge.chat(CHANNEL_A, "Alice", f"{BOT} trace me")
        await bridge.wait_for_says(1)
    answering = [r for r in collected.records if "answering" in r.getMessage()]
    assert len(answering) == 1
    cid = answering[0].correlation_id  # type: ignore[attr-defined]
    assert cid
    mine = [r for r in collected.records if getattr(r, "correlation_id", "") == cid]
    loggers = {r.name for r in mine}
    assert {"kryten_llm.pipeline", "kryten_llm.llm.manager"} <= loggers
    replied = [r.getMessage() for r in mine if "replied to" in r.getMessage()]
    assert replied and "fake/fake-model" in replied[0] and "ms" in replied[0]
    assert "42+7 tokens" in replied[0]
    assert any("dead" in r.getMessage() for r in mine if r.name == "kryten_llm.llm.manager")


async def test_kryten_py_does_not_override_the_operators_level(
    nats_server: NatsServer, fake_llm: FakeLLM
) -> None:
    from kryten_llm.daemon.service import LLMService

    for level in ("WARNING", "DEBUG"):
        service = LLMService(make_settings(nats_server.url, fake_llm.base_url), log_level=level)
        await service.start()
        try:
            assert logging.getLogger("kryten").level == logging.getLevelName(level)
        finally:
            await service.stop()


def test_a_clean_disconnect_is_not_a_warning(collected: Collect) -> None:
    from kryten_llm.logsetup import KRYTEN_NOISE

    kryten = logging.getLogger("kryten")
    kryten.setLevel(logging.WARNING)
    try:
        KRYTEN_NOISE.shutting_down = True
        kryten.warning("Disconnected from NATS")
        KRYTEN_NOISE.shutting_down = False
        kryten.warning("Disconnected from NATS")  # not during a shutdown: a real warning
        try:
            raise ConnectionRefusedError("nope")
        except ConnectionRefusedError:
            kryten.error("Failed to connect to NATS: nope", exc_info=True)
    finally:
        kryten.setLevel(logging.NOTSET)
    kept = [
        (r.levelname, r.getMessage(), r.exc_info) for r in collected.records if r.name == "kryten"
    ]
    assert kept == [
        ("WARNING", "Disconnected from NATS", None),
        ("ERROR", "Failed to connect to NATS: nope", None),
    ]


HOSTILE_NAME = (
    "eve\n2026-01-01 00:00:00,000 INFO    kryten_llm.pipeline: replied to admin\r\x1b[2J\u2028\x85"
)


def test_text_format_keeps_a_hostile_username_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", "text")
        token = correlation_id.set("cid\nINFO forged")
        logging.getLogger("kryten_llm.pipeline").info(
            "not answering %s in %s: %s", HOSTILE_NAME, "lounge", "spam"
        )
        logging.getLogger("kryten_llm.pipeline").warning(f"message built by {HOSTILE_NAME}")
        correlation_id.reset(token)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    lines = err.split("\n")
    assert len(lines) == 3 and lines[-1] == "", lines  # two records, two physical lines
    assert not any(sep in err for sep in ("\r", "\x1b", "\u2028", "\x85"))
    first = lines[0]
    assert "not answering eve\\n2026-01-01 00:00:00,000 INFO" in first
    assert "\\r\\x1b[2J\\u2028\\x85 in lounge: spam" in first
    assert first.endswith("[cid\\nINFO forged]")
    assert "message built by eve\\n" in lines[1]


def test_text_format_indents_every_line_of_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", "text")
        try:
            raise ValueError(f"bad name {HOSTILE_NAME}")
        except ValueError:
            logging.getLogger("kryten_llm.test").exception("failed for %s", "x")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.rstrip("\n").split("\n")
    assert lines[0].endswith("failed for x")
    assert all(line.startswith("    ") for line in lines[1:]), lines
    assert any("Traceback" in line for line in lines[1:])
