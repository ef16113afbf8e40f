"""RankRegistry: ranks from bridge events and the real KV bucket; malformed input is ignored."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient

from kryten_llm.config import ChannelSettings
from kryten_llm.decide.ranks import RankRegistry, load_ranks_from_kv, userlist_bucket
from kryten_llm.types import ChannelKey
from tests.support.nats_server import NatsServer


def room(channel: str, domain: str = "cytu.be") -> ChannelKey:
    return ChannelKey(domain, channel)


def configured(channel: str) -> ChannelSettings:
    return ChannelSettings(domain="cytu.be", channel=channel)


USERS = [
    {"name": "Owner", "rank": 4, "profile": {"image": "", "text": ""}, "meta": {"afk": False}},
    {"name": "ModMike", "rank": 2, "profile": {}, "meta": {}},
    {"name": "Helper", "rank": 1.5, "profile": {}, "meta": {}},
    {"name": "guest1", "rank": 0, "profile": {}, "meta": {}},
]


def test_unknown_users_and_channels_are_rank_zero() -> None:
    registry = RankRegistry()
    assert registry.rank_of(room("lounge"), "nobody") == 0.0


def test_userlist_event_replaces_the_channel() -> None:
    registry = RankRegistry()
    registry.apply_event(room("lounge"), "addUser", {"name": "stale", "rank": 3})
    assert registry.apply_event(room("lounge"), "userlist", USERS)
    assert registry.rank_of(room("lounge"), "modmike") == 2.0
    assert registry.rank_of(room("LOUNGE"), "HELPER") == 1.5, "channel and name ignore case"
    assert registry.rank_of(room("lounge"), "stale") == 0.0
    assert registry.user_count(room("lounge")) == 4


def test_add_set_rank_and_leave() -> None:
    registry = RankRegistry()
    assert registry.apply_event(room("lounge"), "addUser", {"name": "Alice", "rank": 1})
    assert registry.rank_of(room("lounge"), "alice") == 1.0
    assert registry.apply_event(room("lounge"), "setUserRank", {"name": "alice", "rank": 2})
    assert registry.rank_of(room("lounge"), "Alice") == 2.0
    assert registry.apply_event(room("lounge"), "userLeave", {"name": "ALICE"})
    assert registry.rank_of(room("lounge"), "alice") == 0.0
    assert registry.user_count(room("lounge")) == 0


def test_channels_are_separate() -> None:
    registry = RankRegistry()
    registry.apply_event(room("one"), "addUser", {"name": "alice", "rank": 3})
    assert registry.rank_of(room("two"), "alice") == 0.0
    assert registry.rank_of(room("one", "other.example"), "alice") == 0.0, "another server"


def test_other_events_are_ignored_quietly(caplog: pytest.LogCaptureFixture) -> None:
    registry = RankRegistry()
    assert not registry.apply_event(room("lounge"), "chatMsg", {"username": "a", "msg": "hi"})
    assert not registry.apply_event(room("lounge"), "usercount", 5)
    assert caplog.text == ""
    assert registry.malformed == 0


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("addUser", None),
        ("addUser", "alice"),
        ("addUser", ["alice", 2]),
        ("addUser", {"name": "alice"}),
        ("addUser", {"rank": 2}),
        ("addUser", {"name": "", "rank": 2}),
        ("addUser", {"name": "x" * 1000, "rank": 2}),
        ("addUser", {"name": 42, "rank": 2}),
        ("addUser", {"name": "alice", "rank": "2"}),
        ("addUser", {"name": "alice", "rank": True}),
        ("addUser", {"name": "alice", "rank": float("nan")}),
        ("setUserRank", {"name": "alice", "rank": None}),
        ("userLeave", "alice"),
        ("userLeave", {"name": None}),
        ("userlist", {"name": "alice", "rank": 2}),
        ("userlist", None),
    ],
)
def test_malformed_payloads_are_logged_and_ignored(
    event: str, payload: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry = RankRegistry()
    registry.apply_event(room("lounge"), "addUser", {"name": "keep", "rank": 2})
    with caplog.at_level(logging.WARNING, logger="kryten_llm.decide.ranks"):
        assert registry.apply_event(room("lounge"), event, payload) is False
    assert "malformed" in caplog.text
    assert registry.malformed == 1
    assert registry.rank_of(room("lounge"), "keep") == 2.0, "a bad event changes nothing"
    assert registry.rank_of(room("lounge"), "alice") == 0.0


def test_bad_entries_in_a_list_are_skipped_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    registry = RankRegistry()
    loaded = registry.load_userlist(room("lounge"), [*USERS, None, {"name": "x"}, "junk"])
    assert loaded == 4
    assert registry.rank_of(room("lounge"), "owner") == 4.0
    assert "skipped 3 malformed" in caplog.text


def test_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    registry = RankRegistry(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="kryten_llm.decide.ranks"):
        for _ in range(100):
            registry.apply_event(room("lounge"), "addUser", None)
        now[0] = 61.0
        registry.apply_event(room("lounge"), "addUser", None)
    assert len(caplog.records) == 2
    assert registry.malformed == 101


@pytest.mark.parametrize(
    "raw", [b"not json", b"\xff\xfe", b'{"users": []}', b"null", "[1,", b"[" * 100_000]
)
def test_load_userlist_rejects_bad_documents(raw: bytes | str) -> None:
    registry = RankRegistry()
    registry.apply_event(room("lounge"), "addUser", {"name": "keep", "rank": 2})
    assert registry.load_userlist(room("lounge"), raw) == 0
    assert registry.rank_of(room("lounge"), "keep") == 2.0, "a bad document replaces nothing"


def test_memory_is_bounded_per_channel() -> None:
    registry = RankRegistry(max_users_per_channel=100)
    for i in range(1000):
        registry.apply_event(room("lounge"), "addUser", {"name": f"user{i}", "rank": 1})
    assert registry.user_count(room("lounge")) == 100
    assert registry.rank_of(room("lounge"), "user999") == 1.0, "the newest arrivals are kept"
    assert registry.load_userlist(
        room("lounge"), [{"name": f"u{i}", "rank": 0} for i in range(500)]
    )
    assert registry.user_count(room("lounge")) == 100


# --- the real KV bucket ----------------------------------------------------------------------


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url, connect_timeout=5)
    yield client
    await client.close()


async def put_userlist(nc: NatsClient, channel: str, value: bytes) -> None:
    """Write the user list the way the bridge does: bucket kryten_{channel}_userlist, key users."""
    kv = await nc.jetstream().create_key_value(bucket=userlist_bucket(channel))
    await kv.put("users", value)


async def test_load_from_kv_reads_the_bridge_bucket(nc: NatsClient) -> None:
    await put_userlist(nc, "KvLounge", json.dumps(USERS).encode())
    registry = RankRegistry()
    assert await load_ranks_from_kv(nc, configured("KvLounge"), registry, timeout_seconds=5) == 4
    assert registry.rank_of(room("kvlounge"), "modmike") == 2.0
    assert registry.rank_of(room("KvLounge"), "helper") == 1.5


async def test_missing_bucket_is_info_and_zero(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    registry = RankRegistry()
    with caplog.at_level(logging.INFO, logger="kryten_llm.decide.ranks"):
        assert (
            await load_ranks_from_kv(nc, configured("NoSuchChannel"), registry, timeout_seconds=5)
            == 0
        )
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert "no KV bucket kryten_NoSuchChannel_userlist" in record.getMessage()


async def test_missing_key_is_info_and_zero(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    await nc.jetstream().create_key_value(bucket=userlist_bucket("EmptyLounge"))
    with caplog.at_level(logging.INFO, logger="kryten_llm.decide.ranks"):
        assert await load_ranks_from_kv(nc, configured("EmptyLounge"), RankRegistry(), 5) == 0
    assert "has no 'users' key" in caplog.text


async def test_malformed_kv_value_is_logged(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    await put_userlist(nc, "BadLounge", b"{not json")
    registry = RankRegistry()
    assert await load_ranks_from_kv(nc, configured("BadLounge"), registry, 5) == 0
    assert "not JSON" in caplog.text


async def test_channel_names_that_cannot_be_buckets(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert await load_ranks_from_kv(nc, configured("my channel!"), RankRegistry(), 5) == 0
    assert "cannot name a KV bucket" in caplog.text


async def test_timeout_is_logged_not_raised(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    await put_userlist(nc, "SlowLounge", json.dumps(USERS).encode())
    # A zero budget expires at the first network round trip, deterministically.
    assert await load_ranks_from_kv(nc, configured("SlowLounge"), RankRegistry(), 0.0) == 0
    assert "timed out" in caplog.text


async def test_closed_connection_is_logged_not_raised(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = await nats.connect(nats_server.url, connect_timeout=5)
    await client.close()
    assert await load_ranks_from_kv(client, configured("AnyLounge"), RankRegistry(), 5) == 0
    assert "failed" in caplog.text
