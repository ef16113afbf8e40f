"""The kryten-llm benchmark: the real service, a real nats-server, bridge-exact traffic.

    python -m benchmarks.run            # full: the figures in docs/BENCHMARKS.md
    python -m benchmarks.run --quick    # smoke run with smaller numbers
    python benchmarks/run.py --json out.json

A standard run (every measurement, no variant, no --set, the default ladder, no profiler)
records its figures and wall time in benchmarks/results.json and regenerates the current
results in docs/BENCHMARKS.md from it (`benchmarks/results.py`); `--no-record` skips that.

What runs: a private nats-server (`kryten_llm.tools.natsd`); two local OpenAI-compatible servers in
this process (`benchmarks.fakellm`: one instant, one that waits 2 s); the service as its own
process (`python -m kryten_llm --config <tmp>/config.json run`) so its RSS, CPU and start-up are
its own; and, for floods, a publisher process (`benchmarks.publisher`) so the publisher's CPU
is not spent inside the service's event loop. Everything is on 127.0.0.1; every loop is bounded
in count and in time.

The service is started three times (a fresh process per measurement that needs one):
  A. instant LLM: start-up, idle RSS, pipeline overhead, throughput of non-triggering chat;
  B. 2 s LLM: 20 simultaneous mentions;
  C. instant LLM: idle RSS, then 1,000,000 messages from 100,000 users, then RSS.
See docs/BENCHMARKS.md for how each figure is measured and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from kryten_llm.events import chat_subject
from kryten_llm.tools.natsd import NatsServer, start_nats_server
from kryten_llm.tools.simulate import chat_payload, envelope

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import results
from benchmarks.fakellm import TOKEN, BenchLLM
from benchmarks.service_variant import VARIANTS
from benchmarks.spy import Recorder, py_spy, summarise

REPO_ROOT = Path(__file__).resolve().parent.parent
CHANNEL = "BenchRoom"
DOMAIN = "bench.local"
BOT = "CynthiaRothbot"
COMMAND_SUBJECT = "kryten.robot.command"
STARTUP_SUBJECT = "kryten.lifecycle.llm.startup"
SLOW_LLM_DELAY_SECONDS = 2.0
FLOOR = "floor"
"""`--variant floor`: not the service but `benchmarks.floor`, the least a reply can cost."""

READY_POLL_INTERVAL_SECONDS = 0.010
READY_TIMEOUT_SECONDS = 20.0
SETTLE_SECONDS = 1.0
REPLY_TIMEOUT_SECONDS = 10.0
MENTION_SPACING_SECONDS = 0.110  # > 1/send_rate_per_second: the send bucket never empties
CONCURRENT_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 15.0
RSS_SAMPLE_INTERVAL_SECONDS = 0.5
FLOOD_SECONDS_PER_MESSAGE_MAX = 0.001  # time limit for a flood: 1 ms per message, plus slack
FLOOD_SLACK_SECONDS = 60.0
BUSY_LOAD_AVERAGE = 0.5
IDLE_POLL_SECONDS = 0.5
IDLE_CPU_SECONDS = 0.05  # less CPU than this over IDLE_GIVE_UP_SECONDS: the service is idle
IDLE_GIVE_UP_SECONDS = 3.0

# Lines in the service's log that mean an event was lost somewhere on the way in.
LOSS_PATTERNS = {
    "listener queue full": re.compile(r"inbound queue full"),
    "reply queue full": re.compile(r"reply queue full"),
    "nats slow consumer": re.compile(r"slow consumer", re.I),
    "nats disconnect": re.compile(r"disconnected", re.I),
}


@dataclass(frozen=True)
class Scale:
    """How big each measurement is; `--quick` shrinks everything for a smoke run."""

    name: str
    overhead_samples: int
    flood_messages: int
    flood_users: int
    flood_rates_per_second: tuple[float, ...]
    memory_messages: int
    memory_users: int
    memory_rate_per_second: float
    startup_repeats: int = 5
    concurrent_mentions: int = 20


# Throughput is a ladder of paced floods, stopping at the first step that loses anything: an
# unpaced flood only measures how much the nats-server buffers before it cuts off a slow
# consumer. The first step is 10 % above the 20,000/s target so that passing it is a pass.
FULL = Scale(
    "full",
    300,
    200_000,
    10_000,
    (22_000, 30_000, 40_000, 50_000, 65_000),
    1_000_000,
    100_000,
    12_000,
)
QUICK = Scale(
    "quick", 60, 50_000, 3_000, (22_000, 30_000), 100_000, 10_000, 12_000, startup_repeats=2
)


@dataclass
class Figure:
    """One measured number against its target."""

    name: str
    value: float | None
    unit: str
    target: float
    higher_is_better: bool = False
    note: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


@dataclass(frozen=True)
class Options:
    """What to run and how: the measurements, a prototype variant, config overrides."""

    only: frozenset[str]
    variant: str | None = None
    overrides: tuple[str, ...] = ()
    log_dir: Path | None = None
    profile_dir: Path | None = None

    def profile_file(self, name: str) -> Path | None:
        return self.profile_dir / f"{name}.txt" if self.profile_dir is not None else None


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


# --- configuration ------------------------------------------------------------------------


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.field=JSON` pairs from `--set`, to measure a proposed config change."""
    for item in overrides:
        path, _, raw = item.partition("=")
        keys = path.split(".")
        if not raw or len(keys) < 2:
            raise SystemExit(f"--set wants section.field=value, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return config


def service_config(nats_url: str, llm_base_url: str, workdir: Path) -> dict[str, Any]:
    """Production defaults, except policy that would add deliberate waiting.

    Send pacing and rate limits are policy, not overhead: the bucket is as large as CyTube's
    antiflood allows (burst 20, 10/s) with no delay between parts, every cooldown is 0 and
    every limit is high, and the spam rules that count the bot's own replies are opened up,
    so no reply in the benchmark ever waits on or is refused by policy. Everything else
    (spam flood rules, validation, formatter, guard, log level INFO) is as shipped.
    """
    return {
        "nats": {"url": nats_url},
        "cytube": {"domain": DOMAIN, "channel": CHANNEL, "username": BOT},
        "personality": {"character_name": BOT, "name_variations": ["cynthia"]},
        "llm_providers": {
            "bench": {
                "type": "openai_compatible",
                "base_url": llm_base_url,
                "model": "bench-model",
                "api_key": "sk-bench-local-not-a-secret",
                "timeout_seconds": 10,
            }
        },
        "message_processing": {
            "split_delay_seconds": 0,
            "send_burst": 20,
            "send_rate_per_second": 10,
        },
        "rate_limits": {
            "global_max_per_minute": 1_000_000,
            "global_max_per_hour": 10_000_000,
            "global_cooldown_seconds": 0,
            "user_max_per_hour": 1_000_000,
            "user_cooldown_seconds": 0,
            "mention_cooldown_seconds": 0,
        },
        "spam": {
            "mention_max": 100,
            "max_replies_per_window": 10_000,
            "max_consecutive_replies_to_user": 1000,
            "max_chat_share": 1.0,
        },
        "response_log": {"path": str(workdir / "responses.jsonl")},
        # Per-user usage limits are policy too: the benchmark's users ask far more than 10/min.
        "user_limits": {
            "requests_per_minute": 0,
            "requests_per_hour": 0,
            "requests_per_day": 0,
            "tokens_per_day": 0,
        },
    }


# --- the service process --------------------------------------------------------------------


class ServiceProcess:
    """The service as its own process: RSS, CPU and start-up are then its alone."""

    def __init__(self, workdir: Path, config: dict[str, Any], variant: str | None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.json"
        self.log_path = workdir / "service.log"
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.variant = variant
        self.process: subprocess.Popen[bytes] | None = None
        self.started_monotonic = 0.0

    def command(self) -> list[str]:
        if self.variant == FLOOR:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
            return [
                sys.executable,
                "-m",
                "benchmarks.floor",
                f"--url={config['nats']['url']}",
                f"--llm={config['llm_providers']['bench']['base_url']}",
                f"--channel={CHANNEL}",
                f"--bot={BOT}",
            ]
        cli = ["--config", str(self.config_path), "--log-level", "INFO", "run"]
        if self.variant:
            return [sys.executable, "-m", "benchmarks.service_variant", self.variant, "--", *cli]
        return [sys.executable, "-m", "kryten_llm", *cli]

    def start(self) -> None:
        log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.started_monotonic = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status_kb(self, field_name: str) -> int | None:
        """A `/proc/PID/status` memory line (VmRSS, VmHWM) in kB; None once the process is gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
        return int(match.group(1)) if match else None

    def cpu_seconds(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def loss_lines(self) -> dict[str, int]:
        text = self.log_text()
        return {name: len(p.findall(text)) for name, p in LOSS_PATTERNS.items()}

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode


# --- the bridge side: publishing chat and watching `say` --------------------------------------


class Bridge:
    """Publishes chat as the bridge does and notes when each `say` arrives (by its token)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.said: dict[str, float] = {}
        self.say_count = 0
        self.startups: list[float] = []
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._subject = chat_subject(CHANNEL, "chatMsg")

    @classmethod
    async def connect(cls, url: str) -> Bridge:
        bridge = cls(await nats.connect(url, connect_timeout=5))
        await bridge.nc.subscribe(COMMAND_SUBJECT, cb=bridge._on_command)
        await bridge.nc.subscribe(STARTUP_SUBJECT, cb=bridge._on_startup)
        await bridge.nc.flush()
        return bridge

    async def _on_command(self, msg: Any) -> None:
        arrived = time.monotonic()  # first thing: the callback's own work is not counted
        try:
            command = json.loads(msg.data)
            text = command["args"]["message"] if command.get("command") == "say" else None
        except (ValueError, KeyError, TypeError):
            return
        if not isinstance(text, str):
            return
        self.say_count += 1
        for token in TOKEN.findall(text):
            self.said.setdefault(token, arrived)
            waiter = self._waiters.pop(token, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(arrived)

    async def _on_startup(self, msg: Any) -> None:
        self.startups.append(time.monotonic())

    async def chat(self, username: str, text: str) -> float:
        """Publish one chatMsg; return the monotonic time just before the publish."""
        data = envelope("chatMsg", chat_payload(username, text), CHANNEL, DOMAIN)
        published = time.monotonic()
        await self.nc.publish(self._subject, data)
        return published

    async def wait_for(self, token: str, timeout_seconds: float) -> float | None:
        if token in self.said:
            return self.said[token]
        waiter = self._waiters.setdefault(token, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout_seconds)
        except TimeoutError:
            return None
        finally:
            self._waiters.pop(token, None)


def mention(token: str) -> str:
    return f"{BOT} what do you think of the fight in take {token}?"


# --- measurements ---------------------------------------------------------------------------


async def wait_until_ready(bridge: Bridge, service: ServiceProcess, tag: str) -> dict[str, Any]:
    """Publish a mention every 10 ms until one is answered: the service is subscribed by then.

    A mention is answered only if the server had the listener's subscription when the mention
    arrived, so the publish time of the first answered mention is within one poll interval
    after the moment the service was subscribed. Reported from the service's process start.
    """
    published: dict[str, float] = {}
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    index = 0
    while time.monotonic() < deadline and not any(t in bridge.said for t in published):
        if not service.alive():
            raise RuntimeError("the service exited during start-up:\n" + service.log_text())
        token = f"zq{tag}{index:06d}"
        published[token] = await bridge.chat(f"early{index:05d}", mention(token))
        index += 1
        await asyncio.sleep(READY_POLL_INTERVAL_SECONDS)
    answered = [t for t in published if t in bridge.said]
    if not answered:
        raise RuntimeError("the service never answered:\n" + service.log_text()[-4000:])
    first = min(answered, key=lambda t: published[t])
    await asyncio.sleep(SETTLE_SECONDS)  # let the later probes' replies come and go
    started = service.started_monotonic
    connected = [t - started for t in bridge.startups if t >= started]
    return {
        "subscribed_seconds": published[first] - started,
        "startup_event_seconds": connected[0] if connected else None,
        "probes_sent": index,
        "probes_answered": len([t for t in published if t in bridge.said]),
    }


async def measure_overhead(
    bridge: Bridge,
    service: ServiceProcess,
    llm: BenchLLM,
    samples: int,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Sequential mentions: (say arrival - publish) - the LLM server's own handling time."""
    recorder = Recorder(service.pid, profile_to) if profile_to is not None else None
    cpu_before = service.cpu_seconds() or 0.0
    overheads: list[float] = []
    end_to_end: list[float] = []
    missing = 0
    for index in range(samples):
        token = f"zqovh{index:06d}"
        published = await bridge.chat(f"asker{index:05d}", mention(token))
        arrived = await bridge.wait_for(token, REPLY_TIMEOUT_SECONDS)
        if arrived is None:
            missing += 1
            continue
        total = arrived - published
        end_to_end.append(total)
        overheads.append(total - llm.handling_seconds(token))
        await asyncio.sleep(max(0.0, published + MENTION_SPACING_SECONDS - time.monotonic()))
    cpu_used = (service.cpu_seconds() or 0.0) - cpu_before
    if recorder is not None:
        await asyncio.to_thread(recorder.stop)
    return {
        "samples": len(overheads),
        "service_cpu_ms_per_mention": 1000 * cpu_used / max(samples, 1),
        "missing": missing,
        "overhead_ms": _percentiles(overheads),
        "end_to_end_ms": _percentiles(end_to_end),
        "llm_handling_ms_mean": 1000
        * statistics.fmean(llm.handling_seconds(f"zqovh{i:06d}") for i in range(samples)),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": 1000 * ordered[-1]}


async def run_publisher(
    nats_url: str, count: int, users: int, rate: float, token: str, user_prefix: str
) -> dict[str, Any]:
    """The flood, from its own process; returns its timings (monotonic, system-wide)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.publisher",
        f"--url={nats_url}",
        f"--channel={CHANNEL}",
        f"--domain={DOMAIN}",
        f"--count={count}",
        f"--users={users}",
        f"--user-prefix={user_prefix}",
        f"--rate={rate}",
        "--mention-user=finalasker",
        f"--mention-text={mention(token)}",
    ]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    limit = count * FLOOD_SECONDS_PER_MESSAGE_MAX + FLOOD_SLACK_SECONDS
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"publisher did not finish within {limit:.0f}s") from None
    if process.returncode != 0:
        raise RuntimeError(f"publisher failed: {stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def measure_flood(
    bridge: Bridge,
    service: ServiceProcess,
    llm: BenchLLM,
    nats_url: str,
    *,
    count: int,
    users: int,
    rate: float,
    tag: str,
    sample_rss: bool = False,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """N non-triggering lines then one mention; the mention's answer proves all N were handled.

    The listener feeds one queue that a single dispatcher task drains in order, so when the
    mention published after the flood is answered, every earlier line has been through
    `decide()`, unless it was dropped on the way in: drops are logged (listener queue full,
    NATS slow consumer, disconnect) and counted from the service's log. As a second check the
    prompt of that final mention must hold the last lines of the flood as recent chat.
    """
    token = f"zq{tag}{0:06d}"
    cpu_before = service.cpu_seconds() or 0.0
    losses_before = service.loss_lines()
    rss_samples: list[tuple[float, int]] = []
    sampler = asyncio.create_task(_sample_rss(service, rss_samples)) if sample_rss else None
    recorder = Recorder(service.pid, profile_to) if profile_to is not None else None
    try:
        timings = await run_publisher(nats_url, count, users, rate, token, tag)
        answered = await _answer_or_idle(bridge, service, token, count)
    finally:
        if recorder is not None:
            await asyncio.to_thread(recorder.stop)
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    cpu_after = service.cpu_seconds() or 0.0
    losses = {k: v - losses_before.get(k, 0) for k, v in service.loss_lines().items()}
    elapsed = (answered - timings["first"]) if answered is not None else None
    tail_seen = _flood_tail_in_prompt(llm.last_body, count, users, tag)
    lost = sum(losses.values()) > 0 or answered is None or not tail_seen
    return {
        "lost": lost,
        "messages": count,
        "users": users,
        "publisher_rate_target": rate,
        "publisher_seconds": timings["last"] - timings["first"],
        "publisher_rate": count / max(timings["last"] - timings["first"], 1e-9),
        "publisher_cpu_seconds": timings["cpu_seconds"],
        "answered": answered is not None,
        "first_publish_to_answer_seconds": elapsed,
        "service_rate": (count / elapsed) if elapsed else None,
        "mention_latency_ms": (
            1000 * (answered - timings["mention"]) if answered is not None else None
        ),
        "service_cpu_seconds": cpu_after - cpu_before,
        "service_cpu_us_per_message": 1e6 * (cpu_after - cpu_before) / max(count, 1),
        "loss_log_lines": losses,
        "flood_tail_in_prompt": tail_seen,
        "rss_samples_kb": [kb for _, kb in rss_samples],
    }


async def _answer_or_idle(
    bridge: Bridge, service: ServiceProcess, token: str, count: int
) -> float | None:
    """The final mention's answer time; None once the service has sat idle without answering.

    Bounded twice: by a time limit proportional to the flood, and by idleness (the service's
    CPU time has not moved for IDLE_GIVE_UP_SECONDS, so it has nothing left to process: the
    mention was lost, and waiting longer would only waste the run).
    """
    deadline = time.monotonic() + count * FLOOD_SECONDS_PER_MESSAGE_MAX + FLOOD_SLACK_SECONDS
    last_cpu, last_change = service.cpu_seconds(), time.monotonic()
    while time.monotonic() < deadline:
        answered = await bridge.wait_for(token, IDLE_POLL_SECONDS)
        if answered is not None:
            return answered
        cpu = service.cpu_seconds()
        if cpu is None:
            return None
        if last_cpu is None or cpu - last_cpu > IDLE_CPU_SECONDS:
            last_cpu, last_change = cpu, time.monotonic()
        elif time.monotonic() - last_change > IDLE_GIVE_UP_SECONDS:
            return None
    return None


def _flood_tail_in_prompt(body: dict[str, Any], count: int, users: int, prefix: str) -> bool:
    """Are the flood's last three lines (by number and user) in the final prompt's history?"""
    text = json.dumps(body)
    for index in range(max(0, count - 3), count):
        user = f"{prefix}{index % users:06d}"
        if f"{user}: that's a great fight scene, the kick at {index} was wild" not in text:
            return False
    return True


async def _sample_rss(service: ServiceProcess, out: list[tuple[float, int]]) -> None:
    while True:
        kb = service.status_kb("VmRSS")
        if kb is not None:
            out.append((time.monotonic(), kb))
        await asyncio.sleep(RSS_SAMPLE_INTERVAL_SECONDS)


async def throughput_ladder(
    bridge: Bridge,
    service: ServiceProcess,
    llm: BenchLLM,
    nats_url: str,
    scale: Scale,
    options: Options,
) -> list[dict[str, Any]]:
    """Paced floods at rising rates until one loses a message (or the ladder ends)."""
    steps: list[dict[str, Any]] = []
    for index, rate in enumerate(scale.flood_rates_per_second):
        say(f"throughput: {scale.flood_messages} lines at {rate:,.0f}/s")
        step = await measure_flood(
            bridge,
            service,
            llm,
            nats_url,
            count=scale.flood_messages,
            users=scale.flood_users,
            rate=rate,
            tag="tr" + "abcdefghij"[index],
            profile_to=options.profile_file(f"throughput-{rate:.0f}"),
        )
        steps.append(step)
        if step["lost"]:
            break
        await asyncio.sleep(SETTLE_SECONDS)
    return steps


async def measure_concurrent(bridge: Bridge, llm: BenchLLM, count: int) -> dict[str, Any]:
    """`count` mentions from `count` users at once against the 2 s LLM: time until all answered."""
    tokens = [f"zqcon{i:06d}" for i in range(count)]
    started = time.monotonic()
    for index, token in enumerate(tokens):
        await bridge.chat(f"crowd{index:03d}", mention(token))
    results = await asyncio.gather(
        *(bridge.wait_for(t, CONCURRENT_TIMEOUT_SECONDS) for t in tokens)
    )
    answered = [r for r in results if r is not None]
    return {
        "mentions": count,
        "answered": len(answered),
        "all_answered_seconds": (max(answered) - started) if len(answered) == count else None,
        "first_answered_seconds": (min(answered) - started) if answered else None,
        "llm_max_in_flight": llm.max_in_flight,
        "llm_requests": llm.requests,
    }


API_REQUESTS = 2000
API_CONCURRENCY = 32
API_TIMEOUT_SECONDS = 10.0


async def measure_api(nc: NATS, count: int) -> dict[str, Any]:
    """`kryten.llm.complete` against the instant LLM: p50 overhead (round trip minus the LLM's
    own latency, sequential) and requests/s (`API_CONCURRENCY` callers at once)."""
    body = json.dumps({"prompt": "say ok", "caller": "bench"}).encode()
    overheads: list[float] = []
    for _ in range(max(1, count // 10)):
        started = time.monotonic()
        msg = await nc.request("kryten.llm.complete", body, timeout=API_TIMEOUT_SECONDS)
        elapsed = time.monotonic() - started
        answer = json.loads(msg.data)
        if answer.get("ok"):  # in seconds, as `_percentiles` takes them
            overheads.append(max(0.0, elapsed - answer["completion"]["latency_ms"] / 1000))
    done = 0

    async def caller(share: int) -> None:
        nonlocal done
        for _ in range(share):
            msg = await nc.request("kryten.llm.complete", body, timeout=API_TIMEOUT_SECONDS)
            done += bool(json.loads(msg.data).get("ok"))

    started = time.monotonic()
    await asyncio.gather(*(caller(count // API_CONCURRENCY) for _ in range(API_CONCURRENCY)))
    elapsed = time.monotonic() - started
    return {
        "overhead_ms": _percentiles(overheads),
        "requests": (count // API_CONCURRENCY) * API_CONCURRENCY,
        "answered_ok": done,
        "requests_per_second": done / elapsed if elapsed > 0 else None,
    }


# --- orchestration --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_service(nats_url: str, llm: BenchLLM, label: str, options: Options) -> Any:
    """One fresh service process in a temp dir; its log is copied to `log_dir` if given."""
    with tempfile.TemporaryDirectory(prefix=f"kryten-llm-bench-{label}-") as tmp:
        workdir = Path(tmp)
        config = apply_overrides(service_config(nats_url, llm.base_url, workdir), options.overrides)
        service = ServiceProcess(workdir, config, options.variant)
        service.start()
        try:
            yield service
        finally:
            code = await asyncio.to_thread(service.stop)
            if options.log_dir is not None:
                await asyncio.to_thread(_keep_log, service, options.log_dir, label)
            if code not in (0, None):
                print(f"[{label}] service exited with status {code}; log tail:", file=sys.stderr)
                print(service.log_text()[-3000:], file=sys.stderr)


def _keep_log(service: ServiceProcess, log_dir: Path, label: str) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(service.log_path, log_dir / f"service-{label}.log")
    shutil.copy(service.config_path, log_dir / f"config-{label}.json")


def say(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


async def run(scale: Scale, options: Options) -> Report:
    only = options.only
    report = Report()
    nats_server: NatsServer = await asyncio.to_thread(start_nats_server)
    instant = await BenchLLM(0.0).start()
    slow = await BenchLLM(SLOW_LLM_DELAY_SECONDS).start()
    bridge = await Bridge.connect(nats_server.url)
    startups: list[float] = []
    idle_rss: list[int] = []
    try:
        if "startup" in only:
            say(f"start-up: {scale.startup_repeats} fresh service processes")
            for index in range(scale.startup_repeats):
                label = f"s{index}"
                async with running_service(nats_server.url, instant, label, options) as service:
                    ready = await wait_until_ready(bridge, service, "st" + "abcdefghij"[index])
                    startups.append(ready["subscribed_seconds"])
                    idle_rss.append(service.status_kb("VmRSS") or 0)
        if only & {"overhead", "throughput", "api"}:
            say("service A (instant LLM): start-up, idle RSS, overhead, throughput")
            async with running_service(nats_server.url, instant, "a", options) as service:
                ready = await wait_until_ready(bridge, service, "stx")
                startups.append(ready["subscribed_seconds"])
                idle_rss.append(service.status_kb("VmRSS") or 0)
                report.details["startup_a"] = ready
                if "overhead" in only:
                    say(f"overhead: {scale.overhead_samples} sequential mentions")
                    over = await measure_overhead(
                        bridge,
                        service,
                        instant,
                        scale.overhead_samples,
                        options.profile_file("overhead"),
                    )
                    report.details["overhead"] = over
                if "api" in only:
                    say(f"api: kryten.llm.complete, {API_REQUESTS} requests")
                    report.details["api"] = await measure_api(bridge.nc, API_REQUESTS)
                if "throughput" in only:
                    report.details["throughput_steps"] = await throughput_ladder(
                        bridge, service, instant, nats_server.url, scale, options
                    )
        if "concurrent" in only:
            say(f"service B (2 s LLM): {scale.concurrent_mentions} simultaneous mentions")
            async with running_service(nats_server.url, slow, "b", options) as service:
                ready = await wait_until_ready(bridge, service, "sty")
                startups.append(ready["subscribed_seconds"])
                report.details["startup_b"] = ready
                slow.max_in_flight = 0
                slow.requests = 0
                concurrent = await measure_concurrent(bridge, slow, scale.concurrent_mentions)
                report.details["concurrent"] = concurrent
        if "memory" in only:
            say(
                f"service C (instant LLM): {scale.memory_messages} lines from "
                f"{scale.memory_users} users at {scale.memory_rate_per_second:,.0f}/s"
            )
            async with running_service(nats_server.url, instant, "c", options) as service:
                ready = await wait_until_ready(bridge, service, "stz")
                startups.append(ready["subscribed_seconds"])
                idle = service.status_kb("VmRSS") or 0
                idle_rss.append(idle)
                report.details["startup_c"] = ready
                flood = await measure_flood(
                    bridge,
                    service,
                    instant,
                    nats_server.url,
                    count=scale.memory_messages,
                    users=scale.memory_users,
                    rate=scale.memory_rate_per_second,
                    tag="mem",
                    sample_rss=True,
                    profile_to=options.profile_file("memory"),
                )
                at_answer = service.status_kb("VmRSS")
                await asyncio.sleep(2.0)
                flood["rss_idle_kb"] = idle
                flood["rss_at_answer_kb"] = at_answer
                flood["rss_after_kb"] = service.status_kb("VmRSS")
                flood["rss_peak_kb"] = service.status_kb("VmHWM")
                report.details["memory"] = flood
    finally:
        await bridge.nc.close()
        await instant.stop()
        await slow.stop()
        await asyncio.to_thread(nats_server.stop)
    report.details["startup_all_seconds"] = startups
    report.details["idle_rss_kb"] = idle_rss
    report.figures = figures(report.details, scale)
    return report


def figures(d: dict[str, Any], scale: Scale) -> list[Figure]:
    out: list[Figure] = []
    if "api" in d:
        api = d["api"]
        note = f"{api['answered_ok']}/{api['requests']} ok, {API_CONCURRENCY} callers"
        out.append(Figure("api complete p50 overhead", api["overhead_ms"].get("p50"), "ms", 5.0))
        out.append(
            Figure(
                "api complete requests/s",
                api["requests_per_second"],
                "req/s",
                200.0,
                higher_is_better=True,
                note=note,
            )
        )
    if "overhead" in d:
        ms = d["overhead"]["overhead_ms"]
        note = f"{d['overhead']['samples']} samples, {d['overhead']['missing']} unanswered"
        out.append(Figure("overhead p50 (mention -> say, minus LLM)", ms.get("p50"), "ms", 2.0))
        out.append(Figure("overhead p99", ms.get("p99"), "ms", 10.0, note=note))
    if d.get("throughput_steps"):
        steps = d["throughput_steps"]
        clean = [t for t in steps if not t["lost"]]
        best = max(clean, key=lambda t: t["service_rate"]) if clean else None
        worst = steps[-1]
        note = "; ".join(
            f"{t['publisher_rate_target']:,.0f}/s: "
            + (f"ok {t['service_cpu_us_per_message']:.0f} us CPU/msg" if not t["lost"] else "LOST")
            for t in steps
        )
        if worst["lost"]:
            note += " (" + _loss_text(worst) + ")"
        out.append(
            Figure(
                "non-triggering chat, sustained with none lost",
                best["service_rate"] if best else None,
                "msg/s",
                20_000.0,
                True,
                note=note,
            )
        )
    if "concurrent" in d:
        c = d["concurrent"]
        note = (
            f"{c['answered']}/{c['mentions']} answered; LLM max in flight {c['llm_max_in_flight']}"
        )
        out.append(
            Figure(
                f"{c['mentions']} simultaneous mentions, 2 s LLM: all answered",
                c["all_answered_seconds"],
                "s",
                3.0,
                note=note,
            )
        )
    if d.get("idle_rss_kb"):
        idle = max(d["idle_rss_kb"]) / 1024
        note = f"max of {len(d['idle_rss_kb'])} fresh processes, 1 s after subscribing"
        out.append(Figure("RSS idle", idle, "MiB", 45.0, note=note))
    if "memory" in d:
        m = d["memory"]
        after = (m["rss_after_kb"] or 0) / 1024
        note = (
            f"{m['messages']:,} msgs / {m['users']:,} users at {m['publisher_rate_target']:,.0f}/s"
            f"; peak {(m['rss_peak_kb'] or 0) / 1024:.1f} MiB; "
            + (_loss_text(m) + ": figure not valid" if m["lost"] else "none lost")
        )
        out.append(
            Figure(
                f"RSS after {m['messages']:,} messages",
                None if m["lost"] else after,
                "MiB",
                80.0,
                note=note,
            )
        )
    if d.get("startup_all_seconds"):
        samples = d["startup_all_seconds"]
        note = f"median of {len(samples)} starts; all: " + ", ".join(f"{s:.3f}" for s in samples)
        out.append(
            Figure("process start -> subscribed", statistics.median(samples), "s", 0.5, note=note)
        )
    if scale.name != "full":
        for figure in out:
            figure.note = (figure.note + "; quick scale").lstrip("; ")
    return out


def figure_records(figs: list[Figure]) -> list[dict[str, Any]]:
    """The figures as JSON objects, verdict included: for `--json` and `results.json`."""
    return [asdict(f) | {"passed": f.passed} for f in figs]


def _loss_text(flood: dict[str, Any]) -> str:
    causes = [f"{name} x{n}" for name, n in flood["loss_log_lines"].items() if n]
    if not flood["answered"]:
        causes.append("final mention unanswered")
    return "LOSS: " + (", ".join(causes) or "flood tail missing from prompt")


def table(figs: list[Figure]) -> str:
    rows = [("figure", "measured", "target", "result", "notes")]
    for f in figs:
        value = "n/a" if f.value is None else f"{f.value:,.{_digits(f.unit)}f} {f.unit}"
        target = f"{'>=' if f.higher_is_better else '<='} {f.target:,g} {f.unit}"
        rows.append((f.name, value, target, "PASS" if f.passed else "FAIL", f.note))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        lines.append(" | ".join([*cells, row[4]]))
        if index == 0:
            lines.append("-+-".join("-" * w for w in widths) + "-+-" + "-" * 20)
    return "\n".join(lines)


def _digits(unit: str) -> int:
    return {"ms": 2, "s": 3, "MiB": 1}.get(unit, 0)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "load_average_1min": os.getloadavg()[0],
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="kryten-llm benchmark (see the docstring)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller numbers: a ~1 min smoke run")
    size.add_argument("--full", action="store_true", help="the documented figures (the default)")
    parser.add_argument(
        "--only",
        default="startup,overhead,throughput,concurrent,memory,api",
        help="comma-separated subset of: startup,overhead,throughput,concurrent,memory,api",
    )
    parser.add_argument(
        "--variant",
        metavar="NAME[,NAME...]",
        help="prototype change(s) applied through benchmarks.service_variant: "
        f"{', '.join(VARIANTS)}; or `floor`: run benchmarks.floor (bare nats-py + aiohttp) "
        "instead of the service",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=JSON",
        help="override one service config field (repeatable), to measure a proposed change",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each flood with py-spy (pip install py-spy) into DIR and summarise it",
    )
    parser.add_argument(
        "--rates",
        help="comma-separated throughput ladder in msg/s (default 22000,30000,40000,50000,65000)",
    )
    parser.add_argument(
        "--memory-rate", type=float, help="msg/s for the 1M-message memory run (default 12000)"
    )
    parser.add_argument("--json", type=Path, help="also write every detail here as JSON")
    parser.add_argument("--log-dir", type=Path, help="keep each service's log and config here")
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="do not record a standard run in benchmarks/results.json and docs/BENCHMARKS.md",
    )
    return parser.parse_args(argv)


ALL_MEASUREMENTS = frozenset({"startup", "overhead", "throughput", "concurrent", "memory", "api"})


def standard_run(args: argparse.Namespace) -> bool:
    """A run whose figures stand for the code as it is: all of them, nothing changed."""
    only = frozenset(s.strip() for s in args.only.split(",") if s.strip())
    return (
        only == ALL_MEASUREMENTS
        and not args.variant
        and not args.set
        and not args.rates
        and not args.memory_rate
        and args.profile is None
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.rates:
        rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
        scale = dataclasses.replace(scale, flood_rates_per_second=rates)
    if args.memory_rate:
        scale = dataclasses.replace(scale, memory_rate_per_second=args.memory_rate)
    only = frozenset(s.strip() for s in args.only.split(",") if s.strip())
    if args.variant and args.variant != FLOOR:
        unknown = [n for n in args.variant.split(",") if n not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; known: {[*VARIANTS, FLOOR]}")
    if args.profile is not None and py_spy() is None:
        raise SystemExit("--profile needs py-spy: `pip install py-spy` into the venv")
    options = Options(only, args.variant, tuple(args.set), args.log_dir, args.profile)
    info = machine()
    print(
        f"kryten-llm benchmark ({scale.name}{', variant ' + args.variant if args.variant else ''})"
        f" on {info['nproc']} x {info['cpu_model']}, Python {info['python']}",
        flush=True,
    )
    if info["load_average_1min"] > BUSY_LOAD_AVERAGE:
        print(
            f"note: load average {info['load_average_1min']:.2f} before starting: other work on "
            "this machine will inflate the timings",
            flush=True,
        )
    measured_commit = results.commit()
    started = time.monotonic()
    report = asyncio.run(run(scale, options))
    wall_seconds = time.monotonic() - started
    print(table(report.figures))
    print(f"wall time {results.duration(wall_seconds)}", flush=True)
    if standard_run(args) and not args.no_record:
        run_entry = results.entry(
            figure_records(report.figures), info, wall_seconds, measured_commit
        )
        results.update_doc(results.record(scale.name, run_entry))
        print("recorded in benchmarks/results.json; docs/BENCHMARKS.md regenerated", flush=True)
    if args.profile is not None:
        for path in sorted(args.profile.glob("*.txt")):
            print("\n" + summarise(path))
    if args.json:
        payload = {
            "scale": asdict(scale),
            "variant": args.variant,
            "overrides": args.set,
            "machine": info,
            "figures": figure_records(report.figures),
            "details": report.details,
        }
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0 if all(f.passed for f in report.figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
