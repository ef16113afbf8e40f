"""The durable state layer against a real nats-server: keys, compare-and-set, degradation.

Every store here talks to a real server through a real kryten-py client; the JetStream-less
and hung servers are real nats-server processes too (started without `-js`, or stopped with
SIGSTOP), never a stand-in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.kv import KeyValue

from kryten_llm._bus import Client
from kryten_llm.config import StateSettings
from kryten_llm.state import (
    MAX_KEY_CHARS,
    StateConflictError,
    StateKey,
    StateStore,
    StateValueError,
    decode_part,
)
from kryten_llm.types import ChannelKey
from tests.support.nats_server import NatsServer, start_nats_server

ROOM = ChannelKey("cytu.be", "lounge")
STATE_LOGGER = "kryten_llm.state"
NATS_KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
"""NATS's own rule for a KV key (nats-py's VALID_KEY_RE), with the token rules checked below."""

ODD_NAMES = [
    "a:b",
    "x.y",
    "with space",
    "  ",
    "ünïcødé",
    "日本語",
    "emoji 🎬🍿",
    "x" * 200,
    "🍿" * 200,
    "*",
    ">",
    "a.*.>",
    "",
    ".",
    "..",
    "=",
    "=YQ",
    "YQ",
    "a/b",
    "tab\there",
    "new\nline",
    "\x00",
    "\ud800",
]
"""Names a chat room can throw at a key: separators, wildcards, our own escape, lone
surrogates (JSON can carry them), and the longest names in the widest characters."""


def fast(prefix: str, **overrides: Any) -> StateSettings:
    """Settings with a private bucket prefix and short waits, so tests stay quick."""
    values: dict[str, Any] = {
        "bucket_prefix": prefix,
        "operation_timeout_seconds": 1.0,
        "retry_initial_seconds": 0.05,
        "retry_max_seconds": 0.2,
    }
    return StateSettings(**(values | overrides))


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


async def connect(url: str) -> Client:
    client = Client(
        {
            "nats": {"servers": [url], "reconnect_time_wait": 1, "connect_timeout": 5},
            "channels": [{"domain": "cytu.be", "channel": "lounge"}],
        },
        logger=logging.getLogger("kryten"),
    )
    await client.connect()
    return client


@asynccontextmanager
async def store_on(url: str, settings: StateSettings) -> AsyncIterator[StateStore]:
    """A started store on its own connection, closed (and its connection too) afterwards."""
    client = await connect(url)
    store = StateStore(settings, client)
    try:
        yield store
    finally:
        await store.close()
        await client.disconnect()


@asynccontextmanager
async def raw_bucket(url: str, name: str) -> AsyncIterator[KeyValue]:
    """The bucket as any other NATS client sees it: what really is in KV."""
    nc = await nats.connect(url)
    try:
        yield await nc.jetstream(timeout=5).key_value(name)
    finally:
        await nc.close()


async def wait_until_available(store: StateStore, timeout_seconds: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not store.status.available:
        assert time.monotonic() < deadline, f"still unavailable: {store.status.reason}"
        await asyncio.sleep(0.05)


def warnings_from_state(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith(STATE_LOGGER) and r.levelno == logging.WARNING
    ]


def freeze(pid: int, timeout_seconds: float = 5.0) -> None:
    """SIGSTOP a process and wait until every thread of it has stopped.

    The signal takes effect asynchronously: a busy machine can let a thread answer a request
    or two after kill() returned, so the test waits for the kernel to report all stopped.
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_seconds
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()]
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop")


@contextmanager
def server_without_jetstream() -> Iterator[NatsServer]:
    server = start_nats_server(jetstream=False)
    try:
        yield server
    finally:
        server.stop()


# --- keys ------------------------------------------------------------------------------------


def assert_valid_nats_key(key: str) -> None:
    assert NATS_KV_KEY.fullmatch(key), key
    assert not key.startswith(".") and not key.endswith("."), key
    assert all(key.split(".")), f"empty token in {key!r}"
    assert len(key) <= MAX_KEY_CHARS


parts = st.lists(st.text(max_size=60), min_size=1, max_size=4).map(tuple)


@settings(max_examples=300)
@given(a=parts, b=parts)
def test_any_text_makes_a_valid_key_that_decodes_back_and_never_collides(
    a: tuple[str, ...], b: tuple[str, ...]
) -> None:
    key_a, key_b = StateKey(a), StateKey(b)
    assert_valid_nats_key(key_a.encoded)
    assert StateKey.decode(key_a.encoded) == key_a
    assert (key_a.encoded == key_b.encoded) == (a == b)


def test_odd_names_make_valid_keys() -> None:
    for name in ODD_NAMES:
        key = StateKey.for_user(ROOM, name, "profile")
        assert_valid_nats_key(key.encoded)
        assert StateKey.decode(key.encoded).parts == (
            "user",
            "cytu.be",
            "lounge",
            name.lower(),
            "profile",
        )
    assert StateKey.of("persona", "Plain_name-1").encoded == "persona.Plain_name-1"


def test_rooms_and_users_compare_as_the_bridge_does() -> None:
    upper = StateKey.for_user(ChannelKey("cytu.be", "Lounge"), "Alice")
    assert upper == StateKey.for_user(ChannelKey("cytu.be", "lounge"), "alice")
    other_server = StateKey.for_user(ChannelKey("other.example", "lounge"), "alice")
    assert other_server.encoded != upper.encoded
    # The kind comes first: a room's key never equals a user's, whatever the names.
    assert StateKey.for_room(ROOM, "alice").encoded != StateKey.for_user(ROOM, "alice").encoded
    # Keys of a feature's own keep case: personas "Ann" and "ann" may differ.
    assert StateKey.of("persona", "Ann") != StateKey.of("persona", "ann")


def test_a_key_too_long_for_a_subject_is_refused_before_the_server() -> None:
    with pytest.raises(ValueError, match="longer than"):
        StateKey.of("memo", "🍿" * 2000)
    with pytest.raises(ValueError):
        StateKey(())
    for foreign in ("a*b", "=%%", "=\u00e9", "a..b", ""):
        with pytest.raises(ValueError):
            StateKey.decode(foreign)
    with pytest.raises(ValueError):
        decode_part("=_w")  # base64url of an invalid UTF-8 byte (0xff)


async def test_odd_names_round_trip_through_real_kv_and_never_collide(
    nats_server: NatsServer,
) -> None:
    prefix = new_prefix()
    async with store_on(nats_server.url, fast(prefix)) as store:
        memory = store.bucket("memory", str)
        await store.start()
        assert store.status.available
        for name in ODD_NAMES:
            await memory.put(StateKey.of("name", name), ascii(name))
        for name in ODD_NAMES:
            assert await memory.get(StateKey.of("name", name)) == ascii(name)
        with pytest.raises(StateValueError, match="no JSON form"):
            await memory.put(StateKey.of("lone"), "\ud800")  # the key may hold one, JSON not
        listed = await memory.keys(StateKey.of("name"))
        assert sorted(k.parts[1] for k in listed) == sorted(ODD_NAMES)
    # Another client sees the same keys: they really are in KV, one per name.
    async with raw_bucket(nats_server.url, f"{prefix}memory") as kv:
        assert len(await kv.keys()) == len(ODD_NAMES)


@settings(max_examples=15, deadline=None)
@given(names=st.lists(st.text(max_size=40), min_size=1, max_size=6))
def test_arbitrary_names_round_trip_through_real_kv(
    nats_server: NatsServer, names: list[str]
) -> None:
    """Users are case-insensitive: names equal when lower-cased share one key, others never."""

    async def scenario() -> None:
        async with store_on(nats_server.url, fast(new_prefix())) as store:
            users = store.bucket("users", str)
            await store.start()
            for name in names:
                await users.put(StateKey.for_user(ROOM, name), name)
            expected = {name.lower(): name for name in names}  # the last writer's spelling
            for folded, spelling in expected.items():
                assert await users.get(StateKey.for_user(ROOM, folded)) == spelling
            listed = await users.keys(StateKey.users_in(ROOM))
            assert sorted(k.parts[3] for k in listed) == sorted(expected)

    asyncio.run(scenario())


# --- compare-and-set -----------------------------------------------------------------------


async def test_two_writers_on_two_connections_lose_no_update(nats_server: NatsServer) -> None:
    prefix = new_prefix()
    key = StateKey.for_room(ROOM, "log")

    async def writer(tag: str) -> None:
        async with store_on(nats_server.url, fast(prefix)) as store:
            log = store.bucket("history", list[str])
            await store.start()
            for i in range(50):
                await log.update(key, lambda items, i=i: [*(items or []), f"{tag}{i}"])

    await asyncio.gather(writer("a"), writer("b"))
    async with store_on(nats_server.url, fast(prefix)) as store:
        log = store.bucket("history", list[str])
        await store.start()
        items = await log.get(key)
    assert items is not None and len(items) == 100
    assert sorted(items) == sorted([f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)])
    # Each writer's own items stay in its order.
    assert [x for x in items if x[0] == "a"] == [f"a{i}" for i in range(50)]


def sneak_in(url: str, bucket: str, key: str, data: bytes) -> None:
    """Another writer's put, finished before this returns (from inside an update's function).

    It runs on its own connection in a thread, so it lands exactly between the update's
    read and its write: the race the compare-and-set exists for, made deterministic.
    """

    async def put() -> None:
        nc = await nats.connect(url)
        try:
            await (await nc.jetstream(timeout=5).key_value(bucket)).put(key, data)
        finally:
            await nc.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, put()).result(timeout=10)


async def test_a_write_between_read_and_write_is_never_overwritten(
    nats_server: NatsServer,
) -> None:
    prefix = new_prefix()
    key = StateKey.of("list")
    async with store_on(nats_server.url, fast(prefix)) as store:
        items = store.bucket("race", list[str])
        await store.start()
        await items.put(key, ["first"])
        seen: list[list[str] | None] = []

        def append(value: list[str] | None) -> list[str]:
            seen.append(value)
            if len(seen) == 1:
                sneak_in(nats_server.url, items.name, key.encoded, b'["first","other"]')
            return [*(value or []), "mine"]

        assert await items.update(key, append) == ["first", "other", "mine"]
        assert seen == [["first"], ["first", "other"]]

        # A delete is checked the same way: the newer value is seen, not deleted unseen.
        seen.clear()

        def drop_unless_changed(value: list[str] | None) -> list[str] | None:
            seen.append(value)
            if len(seen) == 1:
                sneak_in(nats_server.url, items.name, key.encoded, b'["newer"]')
                return None
            return value

        assert await items.update(key, drop_unless_changed) == ["newer"]
        assert await items.get(key) == ["newer"]

        # A key some other program wrote, which this layer never makes, is left out.
        sneak_in(nats_server.url, items.name, "=_w", b"[]")
        assert await items.keys() == [key]


async def test_an_update_that_keeps_losing_fails_loudly_and_loses_nothing_silently(
    nats_server: NatsServer,
) -> None:
    prefix = new_prefix()
    key = StateKey.of("counter")
    async with (
        store_on(nats_server.url, fast(prefix, update_attempts=1)) as one,
        store_on(nats_server.url, fast(prefix, update_attempts=1)) as two,
    ):
        buckets = [one.bucket("counts", int), two.bucket("counts", int)]
        await one.start()
        await two.start()
        results = await asyncio.gather(
            *(buckets[i % 2].update(key, lambda n: (n or 0) + 1) for i in range(20)),
            return_exceptions=True,
        )
        lost = [r for r in results if isinstance(r, StateConflictError)]
        won = [r for r in results if isinstance(r, int)]
        assert lost, "twenty concurrent single-try updates should collide"
        assert len(won) + len(lost) == 20
        assert await buckets[0].get(key) == len(won)


async def test_update_creates_changes_and_deletes(nats_server: NatsServer) -> None:
    async with store_on(nats_server.url, fast(new_prefix())) as store:
        notes = store.bucket("notes", dict[str, int])
        await store.start()
        key = StateKey.for_user(ROOM, "Alice", "seen")
        assert await notes.update(key, lambda v: {"n": 1} if v is None else None) == {"n": 1}
        assert await notes.update(key, lambda v: {"n": (v or {"n": 0})["n"] + 1}) == {"n": 2}
        assert await notes.update(key, lambda v: None) is None
        assert await notes.get(key) is None
        # Created again after the delete: the create expects the delete marker's revision.
        assert await notes.update(key, lambda v: {"n": 9}) == {"n": 9}
        await notes.delete(key)
        assert await notes.keys() == []


async def test_values_are_typed_and_bounded(nats_server: NatsServer) -> None:
    prefix = new_prefix()
    async with store_on(nats_server.url, fast(prefix, max_value_bytes=1024)) as store:
        text = store.bucket("typed", str)
        await store.start()
        with pytest.raises(StateValueError, match="limit"):
            await text.put(StateKey.of("big"), "x" * 2000)
        await text.put(StateKey.of("word"), "not a number")
        numbers = store.bucket("typed", int)
        with pytest.raises(StateValueError, match="not what the bucket holds"):
            await numbers.get(StateKey.of("word"))
        # A value this version cannot read is not silently replaced by an update either.
        with pytest.raises(StateValueError):
            await numbers.update(StateKey.of("word"), lambda n: 1)
        assert await text.get(StateKey.of("word")) == "not a number"


# --- buckets -------------------------------------------------------------------------------


async def test_buckets_get_the_configured_history_replicas_and_size(
    nats_server: NatsServer,
) -> None:
    prefix = new_prefix()
    async with store_on(nats_server.url, fast(prefix, history=5)) as store:
        store.bucket("memory", str)
        await store.start()
    async with raw_bucket(nats_server.url, f"{prefix}memory") as kv:
        status = await kv.status()
        assert status.history == 5
        assert status.stream_info.config.num_replicas == 1
        assert status.stream_info.config.max_msg_size == 262_144 + 1024
    # A changed setting reaches the existing bucket on the next start.
    async with store_on(nats_server.url, fast(prefix, history=2, max_value_bytes=4096)) as store:
        store.bucket("memory", str)
        await store.start()
        assert store.status.available
    async with raw_bucket(nats_server.url, f"{prefix}memory") as kv:
        status = await kv.status()
        assert status.history == 2
        assert status.stream_info.config.max_msg_size == 4096 + 1024


async def test_replicas_a_single_server_cannot_hold_turn_durable_state_off_with_the_reason(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with store_on(nats_server.url, fast(new_prefix(), replicas=3)) as store:
        memory = store.bucket("memory", str)
        await store.start()
        assert store.status.degraded
        assert "replicas" in store.status.reason
        await memory.put(StateKey.of("k"), "kept in memory")
        assert await memory.get(StateKey.of("k")) == "kept in memory"
    assert len(warnings_from_state(caplog)) == 1


async def test_bucket_names_are_prefix_and_purpose() -> None:
    store = StateStore(StateSettings(), None)
    assert store.bucket("memory", str).name == "kryten_llm_memory"
    assert store.bucket("personas", str).name == "kryten_llm_personas"
    for bad in ("", "Memory", "a.b", "x" * 33, "a-b"):
        with pytest.raises(ValueError):
            store.bucket(bad, str)


# --- degradation -----------------------------------------------------------------------------


async def test_without_jetstream_state_falls_back_to_memory_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with server_without_jetstream() as server:
        async with store_on(server.url, fast(new_prefix())) as store:
            memory = store.bucket("memory", list[str])
            await store.start()
            status = store.status
            assert (status.enabled, status.available, status.degraded) == (True, False, True)
            assert "JetStream is not enabled" in status.reason
            key = StateKey.for_user(ROOM, "Bob")
            for i in range(20):  # many calls, and several retry rounds meanwhile
                await memory.update(key, lambda v, i=i: [*(v or []), str(i)])
                await asyncio.sleep(0.02)
            assert await memory.get(key) == [str(i) for i in range(20)]
            assert await memory.keys() == [key]
            await memory.delete(key)
            assert await memory.get(key) is None
            assert not store.status.available
    warned = warnings_from_state(caplog)
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "JetStream is not enabled" in warned[0].getMessage()
    assert "durable state is off" in warned[0].getMessage()


async def test_disabled_or_unconnected_state_lives_in_memory_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    for store in (
        StateStore(StateSettings(enabled=False), None),
        StateStore(StateSettings(), None),
    ):
        memory = store.bucket("memory", int)
        await store.start()
        assert not store.status.enabled and not store.status.degraded
        await memory.put(StateKey.of("n"), 1)
        assert await memory.update(StateKey.of("n"), lambda n: (n or 0) + 1) == 2
        await store.close()
    assert warnings_from_state(caplog) == []


async def test_memory_fallback_is_bounded_least_recently_used_first() -> None:
    store = StateStore(StateSettings(memory_max_keys=10), None)
    memory = store.bucket("memory", int)
    for i in range(10):
        await memory.put(StateKey.of("k", str(i)), i)
    assert await memory.get(StateKey.of("k", "0")) == 0  # used: now the newest
    for i in range(10, 15):
        await memory.put(StateKey.of("k", str(i)), i)
    kept = {int(k.parts[1]) for k in await memory.keys()}
    assert len(kept) == 10
    assert 0 in kept and not {1, 2, 3, 4, 5} & kept


@pytest.mark.slow
async def test_state_comes_back_when_jetstream_does_and_carries_memory_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    prefix = new_prefix()
    server = start_nats_server(jetstream=False)
    try:
        async with store_on(server.url, fast(prefix)) as store:
            memory = store.bucket("memory", str)
            await store.start()
            assert store.status.degraded
            await memory.put(StateKey.for_user(ROOM, "Carol"), "said hi during the outage")

            port = server.port
            await asyncio.to_thread(server.stop)
            server = await asyncio.to_thread(start_nats_server, port=port)

            await wait_until_available(store)
            assert store.status.reason == ""
            await memory.put(StateKey.for_user(ROOM, "Dave"), "after")
            async with raw_bucket(server.url, f"{prefix}memory") as kv:
                carol = await kv.get(StateKey.for_user(ROOM, "Carol").encoded)
                dave = await kv.get(StateKey.for_user(ROOM, "Dave").encoded)
            assert carol.value == b'"said hi during the outage"'
            assert dave.value == b'"after"'
    finally:
        server.stop()
    assert len(warnings_from_state(caplog)) == 1
    assert any("back on JetStream KV" in r.getMessage() for r in caplog.records)


async def test_a_hung_server_times_out_into_memory_and_kv_keeps_its_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every call is timed: a server that stops answering costs one timeout, not a hang.

    The bucket exists before the store binds it (through kryten-py, whose handle waits 5 s by
    itself), so it is the layer's own timeout that cuts the calls short.
    """
    caplog.set_level(logging.INFO)
    prefix = new_prefix()
    server = start_nats_server()
    try:
        async with store_on(server.url, fast(prefix)) as earlier_run:
            await earlier_run.start()
            await earlier_run.bucket("memory", str).put(StateKey.of("shared"), "from KV")
        async with store_on(server.url, fast(prefix, operation_timeout_seconds=0.3)) as store:
            memory = store.bucket("memory", str)
            await store.start()
            assert store.status.available
            assert await memory.get(StateKey.of("shared")) == "from KV"

            await asyncio.to_thread(freeze, server.process.pid)
            try:
                started = time.monotonic()
                # Times out, then is redone in memory. The publish itself is already on its
                # way and lands when the server wakes: a timed-out write may still happen.
                # Several calls in flight when it hangs: each times out, one warning in all.
                await asyncio.gather(
                    *(memory.put(StateKey.of("timed out", str(i)), "either way") for i in range(5))
                )
                assert time.monotonic() - started < 3.0
                assert store.status.degraded
                assert "did not answer within 0.3 s" in store.status.reason
                # Now in memory only, no waiting on the server.
                await memory.put(StateKey.of("shared"), "from memory")
                await memory.put(StateKey.of("new"), "written while hung")
                assert await memory.get(StateKey.of("new")) == "written while hung"
            finally:
                os.kill(server.process.pid, signal.SIGCONT)

            await wait_until_available(store)
            # KV's value is the shared truth; the keys only memory had are carried over.
            assert await memory.get(StateKey.of("shared")) == "from KV"
            assert await memory.get(StateKey.of("new")) == "written while hung"
            for i in range(5):
                assert await memory.get(StateKey.of("timed out", str(i))) == "either way"
    finally:
        server.stop()
    assert len(warnings_from_state(caplog)) == 1


async def test_a_bucket_deleted_under_the_store_is_created_again(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    prefix = new_prefix()
    async with store_on(nats_server.url, fast(prefix)) as store:
        memory = store.bucket("memory", str)
        await store.start()
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream(timeout=5).delete_key_value(f"{prefix}memory")
        finally:
            await nc.close()
        await memory.put(StateKey.of("k"), "v")  # refused: no stream; kept in memory
        assert "no JetStream stream took the write" in store.status.reason
        await wait_until_available(store)
        async with raw_bucket(nats_server.url, f"{prefix}memory") as kv:
            assert (await kv.get("k")).value == b'"v"'
    assert len(warnings_from_state(caplog)) == 1


async def test_close_cancels_the_retry_task() -> None:
    with server_without_jetstream() as server:
        async with store_on(server.url, fast(new_prefix(), retry_initial_seconds=60)) as store:
            store.bucket("memory", str)
            await store.start()
            task = store._retry_task
            assert task is not None and not task.done()
        assert task.done() and store._retry_task is None


async def test_listings_find_every_key_even_with_the_loop_busy(nats_server: NatsServer) -> None:
    """A listing must not end before its keys arrive: nats-py's own watch marks the end when
    the consumer has nothing pending and its callback has seen nothing yet, which is also
    the case while the keys are on their way; with the loop busy that came back empty."""
    async with store_on(nats_server.url, fast(new_prefix(), operation_timeout_seconds=10)) as store:
        users = store.bucket("listing", int)
        await store.start()
        names = [f"user{index}" for index in range(8)]
        for index, name in enumerate(names):
            await users.put(StateKey.for_user(ROOM, name), index)
        await users.delete(StateKey.for_user(ROOM, names[0]))
        expected = {StateKey.for_user(ROOM, name) for name in names[1:]}
        for _ in range(300):  # one at a time: each a fresh consumer racing its own keys
            found = await users.keys(StateKey.users_in(ROOM))
            assert len(found) == len(expected) and set(found) == expected
        listings = await asyncio.gather(*(users.keys(StateKey.users_in(ROOM)) for _ in range(40)))
        assert all(set(found) == expected for found in listings)
        assert await users.keys(StateKey.users_in(ChannelKey("cytu.be", "empty"))) == []
        assert store.status.available
