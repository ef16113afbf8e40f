"""Session-wide real infrastructure: one nats-server and one fake OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.fake_llm import FakeLLM, start_fake_llm
from tests.support.nats_server import NatsServer, start_nats_server


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = start_nats_server(monitor=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def _fake_llm_session() -> AsyncIterator[FakeLLM]:
    server = await start_fake_llm()
    yield server
    await server.stop()


@pytest.fixture
def fake_llm(_fake_llm_session: FakeLLM) -> Iterator[FakeLLM]:
    """The shared fake LLM, reset before each test so behaviours never leak between tests."""
    _fake_llm_session.reset()
    yield _fake_llm_session
    _fake_llm_session.reset()
