"""`kryten-llm check`: a live probe of everything the service needs, before it is started.

`--validate-config` stays offline; this goes out and asks. It checks:

- **the bus**: each configured server is reachable and accepts our credentials (the probe
  the service itself makes at start, `daemon/connect.py`), JetStream, and the KV buckets
  the service reads where they are present: the bridge's user list and playlist per channel,
  and the durable-state buckets (`state.bucket_prefix`). An absent bucket is normal (the
  bridge or the service creates it); one that is present but cannot be read is a failure.
- **every provider**: one tiny real completion (a few tokens, no retries, no fallback), so
  a wrong key, model or URL shows as the provider's own answer. A provider whose
  `api_key_env` names an unset variable is not called: its row names the variable.

It prints a table (provider, type, model, key, result, latency, error class), then each chain
a reply can walk with its first provider's verdict. Exit 0 only when the bus works and the
first provider of every chain answered; 1 otherwise; 2 for an invalid config.

Nothing secret is printed: keys appear as their status (`set (VAR)`, `unset: VAR`), error
details pass the redactor, and text from servers is made terminal-safe.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiohttp
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient

from kryten_llm.config import ConfigError, ProviderSettings, Settings, load_settings
from kryten_llm.config import provider_order as chain_of
from kryten_llm.context import playlist_bucket
from kryten_llm.daemon.connect import BusProbe, probe_bus
from kryten_llm.daemon.service import configured_secrets
from kryten_llm.decide.ranks import userlist_bucket
from kryten_llm.llm.providers import ProviderError, build_provider
from kryten_llm.logsetup import setup_logging
from kryten_llm.redact import redact_text, set_secrets
from kryten_llm.tools._tables import safe, table
from kryten_llm.types import ChatMessage, LLMRequest

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
KV_TIMEOUT_SECONDS = 3.0
"""Timeout of each JetStream call the bus check makes."""
CHECK_MAX_TOKENS = 32
"""The completion asked of each provider: enough for a word or two from any model."""
DETAIL_CHARS = 160
CHECK_REQUEST = LLMRequest(
    system="You are a connectivity check. Answer with one short word.",
    messages=(ChatMessage("user", "Say OK."),),
    max_tokens=CHECK_MAX_TOKENS,
)


@dataclass
class BucketCheck:
    """One KV bucket the service reads: present or not, and readable when present."""

    name: str
    purpose: str
    present: bool
    error: str = ""


@dataclass
class BusCheck:
    probe: BusProbe
    latency_ms: float
    jetstream: str = ""
    """`available`, or why not (JetStream is optional: state then stays in memory)."""
    buckets: list[BucketCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.probe.ok and not any(b.error for b in self.buckets)


@dataclass
class ProviderCheck:
    name: str
    settings: ProviderSettings
    result: str
    """`ok`, `FAILED`, `skipped` (key unset) or `disabled`."""
    latency_ms: float | None = None
    error_class: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result == "ok"


# --- the bus --------------------------------------------------------------------------------


async def check_bus(settings: Settings) -> BusCheck:
    started = time.perf_counter()
    probe = await probe_bus(settings.nats, keep_open=True)
    check = BusCheck(probe, (time.perf_counter() - started) * 1000.0)
    connection = probe.connection
    if connection is None:
        return check
    try:
        await _check_kv(connection, settings, check)
    finally:
        await connection.close()
    return check


async def _check_kv(nc: NatsClient, settings: Settings, check: BusCheck) -> None:
    js = nc.jetstream(timeout=KV_TIMEOUT_SECONDS)
    try:
        await js.account_info()
    except (nats.errors.Error, TimeoutError) as exc:
        check.jetstream = f"not available ({type(exc).__name__}): no KV buckets to check"
        return
    check.jetstream = "available"
    wanted: list[tuple[str, str]] = []
    for channel in settings.channels:
        room = f"{channel.domain}/{channel.channel}"
        wanted.append((userlist_bucket(channel.channel), f"the bridge's ranks for {room}"))
        wanted.append((playlist_bucket(channel.channel), f"the bridge's video for {room}"))
    if settings.state.enabled:
        wanted += [(name, "durable state") for name in await _state_buckets(js, settings)]
    for name, purpose in wanted:
        check.buckets.append(await _check_bucket(js, name, purpose))


async def _state_buckets(js: nats.js.JetStreamContext, settings: Settings) -> list[str]:
    """The durable-state buckets present (`KV_<prefix>...` streams); the service creates them."""
    prefix = "KV_" + settings.state.bucket_prefix
    try:
        async with asyncio.timeout(KV_TIMEOUT_SECONDS * 2):
            streams = await js.streams_info()
    except (nats.errors.Error, TimeoutError):
        return []
    names = [s.config.name for s in streams if s.config.name]
    return sorted(n.removeprefix("KV_") for n in names if n.startswith(prefix))


async def _check_bucket(js: nats.js.JetStreamContext, name: str, purpose: str) -> BucketCheck:
    try:
        async with asyncio.timeout(KV_TIMEOUT_SECONDS):
            kv = await js.key_value(name)
            await kv.status()
    except nats.js.errors.BucketNotFoundError:
        return BucketCheck(name, purpose, present=False)
    except nats.js.errors.InvalidBucketNameError:
        return BucketCheck(name, purpose, present=False, error="not a valid bucket name")
    except TimeoutError:
        return BucketCheck(name, purpose, present=True, error="timed out")
    except nats.errors.Error as exc:
        return BucketCheck(name, purpose, present=True, error=type(exc).__name__)
    return BucketCheck(name, purpose, present=True)


# --- the providers --------------------------------------------------------------------------


async def check_provider(
    session: aiohttp.ClientSession, name: str, settings: ProviderSettings, timeout_seconds: float
) -> ProviderCheck:
    """One tiny real completion; never raises."""
    if not settings.enabled:
        return ProviderCheck(name, settings, "disabled")
    key = settings.key_status()
    if key.missing:
        return ProviderCheck(
            name,
            settings,
            "skipped",
            error_class="key_unset",
            detail=f"{key.variable} is not set in this environment",
        )
    provider = build_provider(name, settings)
    timeout = settings.timeout_seconds or timeout_seconds
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout + 1.0):
            await provider.complete(session, CHECK_REQUEST, timeout)
    except ProviderError as exc:
        return _failed(name, settings, started, exc.kind, exc.detail)
    except TimeoutError:
        return _failed(name, settings, started, "timeout", f"no answer within {timeout:g}s")
    except Exception as exc:  # a provider bug is a failed check, not a crashed command
        return _failed(name, settings, started, "internal", type(exc).__name__)
    return ProviderCheck(name, settings, "ok", _ms(started))


def _failed(
    name: str, settings: ProviderSettings, started: float, kind: str, detail: str
) -> ProviderCheck:
    return ProviderCheck(name, settings, "FAILED", _ms(started), kind, redact_text(detail))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


async def check_providers(settings: Settings) -> list[ProviderCheck]:
    timeout = settings.llm_manager.attempt_timeout_seconds
    async with aiohttp.ClientSession() as session:
        return list(
            await asyncio.gather(
                *(
                    check_provider(session, name, provider, timeout)
                    for name, provider in settings.llm_providers.items()
                )
            )
        )


def chains(settings: Settings) -> list[tuple[str, list[str]]]:
    """Every chain a reply can walk: the default, each trigger's, the budget's fallback."""
    providers = settings.llm_providers
    found = [("default (mentions, triggers without a provider)", chain_of(providers))]
    for trigger in settings.triggers:
        if trigger.enabled and trigger.provider:
            found.append((f"trigger {trigger.name!r}", chain_of(providers, trigger.provider)))
    usage = settings.usage
    if usage.on_budget_exhausted == "cheaper_provider" and usage.cheaper_provider:
        cheaper = chain_of(providers, usage.cheaper_provider)
        found.append(("budget spent (usage.cheaper_provider)", cheaper))
    return found


# --- the report ----------------------------------------------------------------------------


@dataclass
class CheckReport:
    source: str
    settings: Settings
    bus: BusCheck
    providers: list[ProviderCheck]
    chains: list[tuple[str, list[str]]]

    def problems(self) -> list[str]:
        """What makes the check fail: the bus, or a chain whose first provider did not answer."""
        found: list[str] = []
        if not self.bus.probe.ok:
            found.append(f"the bus: {self.bus.probe.kind} ({self.bus.probe.detail})")
        found += [f"KV bucket {b.name}: {b.error}" for b in self.bus.buckets if b.error]
        by_name = {p.name: p for p in self.providers}
        for label, chain in self.chains:
            first = by_name.get(chain[0]) if chain else None
            if first is None:
                found.append(f"chain {label}: no enabled provider")
            elif not first.ok:
                why = f"{first.error_class}: {first.detail}" if first.detail else first.result
                found.append(f"chain {label}: its first provider {first.name} failed ({why})")
        return found


def _bus_lines(bus: BusCheck, settings: Settings) -> list[str]:
    probe = bus.probe
    if probe.ok:
        head = f"{probe.url} as {probe.who}: reachable, authorised ({bus.latency_ms:.0f} ms)"
    elif probe.kind == "auth":
        head = f"{probe.url} as {probe.who}: REFUSED ({probe.detail})"
    else:
        head = f"{probe.url}: NOT REACHABLE ({probe.detail})"
    lines = ["Bus", f"  {head}"]
    if bus.jetstream:
        lines.append(f"  JetStream: {bus.jetstream}")
    for bucket in bus.buckets:
        if bucket.error:
            state = f"ERROR ({bucket.error})"
        elif bucket.present:
            state = "present, readable"
        else:
            state = "absent (created when first needed)"
        lines.append(f"  KV {safe(bucket.name, 64)} ({bucket.purpose}): {state}")
    no_state = not any(b.purpose == "durable state" for b in bus.buckets)
    if probe.ok and bus.jetstream == "available" and settings.state.enabled and no_state:
        prefix = settings.state.bucket_prefix
        lines.append(f"  KV {prefix}* (durable state): none yet (the service creates them)")
    return lines


def _provider_rows(providers: list[ProviderCheck]) -> list[list[str]]:
    rows = []
    for p in providers:
        latency = f"{p.latency_ms:.0f} ms" if p.latency_ms is not None else "-"
        rows.append(
            [
                p.name,
                p.settings.type,
                safe(p.settings.model, 40),
                p.settings.key_status().describe(),
                p.result,
                latency,
                p.error_class or "-",
            ]
        )
    return rows


def format_report(report: CheckReport) -> str:
    lines = [f"kryten-llm check of {report.source}", ""]
    lines += _bus_lines(report.bus, report.settings)
    lines += ["", "Providers (one tiny real completion each)"]
    lines += table(
        ["provider", "type", "model", "key", "result", "latency", "error class"],
        _provider_rows(report.providers),
        text_columns=7,
    )
    details = [p for p in report.providers if p.detail]
    for p in details:
        lines.append(f"  {p.name}: {safe(p.detail, DETAIL_CHARS)}")
    lines += ["", "Chains (the first provider of each must answer)"]
    by_name = {p.name: p for p in report.providers}
    for label, chain in report.chains:
        first = by_name.get(chain[0]) if chain else None
        verdict = "no provider" if first is None else f"{first.name} {first.result}"
        lines.append(f"  {label}: {' -> '.join(chain) or '(empty)'}: {verdict}")
    problems = report.problems()
    lines.append("")
    if problems:
        lines.append("FAILED:")
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append("OK: the bus works and the first provider of every chain answered")
    return "\n".join(lines) + "\n"


async def run_checks(settings: Settings, source: str) -> CheckReport:
    """The bus and every provider, checked at the same time."""
    set_secrets(configured_secrets(settings))
    bus, providers = await asyncio.gather(check_bus(settings), check_providers(settings))
    return CheckReport(source, settings, bus, providers, chains(settings))


def run_check(config: Path | None, log_level: str | None = None, out: TextIO | None = None) -> int:
    """`kryten-llm check`: print the report; 0 all good, 1 something fails, 2 bad config."""
    out = out or sys.stdout
    setup_logging(log_level or "WARNING")
    logging.getLogger("kryten_llm.llm").setLevel(logging.ERROR)
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_CONFIG
    report = asyncio.run(run_checks(settings, str(config) if config else "(embedded defaults)"))
    out.write(format_report(report))
    return EXIT_FAILURE if report.problems() else EXIT_OK
