"""Turn the service's live state into one health verdict: `healthy`, `degraded` or `failing`.

The service implements `StatusSource` (a handful of cheap, synchronous getters); heartbeats,
the HTTP `/health` route and the `health` control endpoint all ask one `HealthMonitor`, so they
always agree, and a change of the overall state is logged exactly once per change.

Rules (each component gets `ok`, `degraded` or `failing`; the overall state is the worst):

- **nats**: the nats-py link really connected (`_bus.really_connected`, not kryten-py's
  sticky flag) -> `ok`, otherwise `failing`: the bot hears nothing and can say nothing, and a
  publish is only buffered.
- **provider.<name>**: circuit breaker `closed` -> `ok`; `half_open` (probing after a cool-down)
  or `open` -> `degraded`; an unreadable state -> `degraded`. A closed breaker is still
  `degraded` when the provider is not usable (`unusable`: its `api_key_env` names an unset
  variable, or its availability check failed and no call has succeeded since). A disabled
  provider is `ok` (it is deliberate) and listed as such.
- **llm**: per channel, the chain of providers a reply walks (`provider_chains`); a channel
  whose chain holds no usable provider -> `degraded`, naming the channels and why each provider
  is unusable. Even with no provider usable anywhere the overall state is only `degraded`: a key
  can be set and a reload applied, breakers re-probe by themselves and a restart would not
  help, while `failing` means the process itself cannot work.
- **rate_limiter**: highest saturation across channels (replies / budget) at or above
  `LIMITER_DEGRADED_SATURATION` -> `degraded` (replies are about to be, or are being, held back).
- **queue**: events waiting at or above `QUEUE_DEGRADED_FRACTION` of capacity -> `degraded`
  (the bot is falling behind; at capacity new events are dropped).
- **channels**: paused channels are listed but do not change the verdict: a pause is deliberate.
- **response_log**: records written, dropped (queue full) and lost (the disk refused them) are
  listed; while writing fails (a full disk) -> `degraded`, and `ok` again as soon as a write
  works. Lost records stay counted, so the count tells an operator what the outage cost.
- **state**: durable state (memories, personas, opt-outs, history in JetStream KV): configured
  on but not available (JetStream off, unreachable, timing out) -> `degraded`, with the
  reason; the bot keeps working with state in memory. Off by configuration -> `ok`.
- A getter that raises makes its component `degraded` with the exception class named (never its
  text), so a bug in a status getter cannot crash a heartbeat or hide the rest of the report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

Overall = Literal["healthy", "degraded", "failing"]
ComponentStatus = Literal["ok", "degraded", "failing"]

LIMITER_DEGRADED_SATURATION = 0.9
QUEUE_DEGRADED_FRACTION = 0.8

_RANK: dict[ComponentStatus, int] = {"ok": 0, "degraded": 1, "failing": 2}
_OVERALL: dict[int, Overall] = {0: "healthy", 1: "degraded", 2: "failing"}
OVERALL_CODE: dict[Overall, int] = {"healthy": 0, "degraded": 1, "failing": 2}
"""Numeric form for the Prometheus gauge (0 healthy, 1 degraded, 2 failing)."""


class ChannelLike(Protocol):
    """A configured channel (`ChannelSettings` fits)."""

    @property
    def domain(self) -> str: ...

    @property
    def channel(self) -> str: ...


class StatusSource(Protocol):
    """What the service exposes for health, heartbeats, metrics and the control endpoints.

    Every method must be cheap, synchronous and non-blocking: they run at scrape and heartbeat
    time on the event loop.
    """

    def nats_connected(self) -> bool:
        """The nats-py link is up right now (`kryten_llm._bus.really_connected`)."""
        ...

    def provider_states(self) -> Mapping[str, Mapping[str, Any]]:
        """`LLMManager.provider_status()`: per provider the breaker `state`,
        `last_success_at`, ..., and `usable` with the reason (`unusable`) when it is not."""
        ...

    def provider_chains(self) -> Mapping[str, Sequence[str]]:
        """Per channel (`domain/channel`), the providers a reply there tries, in order."""
        ...

    def limiter_saturation(self) -> float:
        """Highest reply-budget use across channels, 0..1 (1 = budget spent)."""
        ...

    def queue_depth(self) -> int:
        """Events and reply jobs waiting (inbound queue plus reply queue)."""
        ...

    def queue_capacity(self) -> int:
        """The sum of those queues' bounds."""
        ...

    def channels(self) -> Sequence[ChannelLike]:
        """The configured channels."""
        ...

    def paused_channels(self) -> Collection[str]:
        """Channels currently paused through the control endpoint."""
        ...

    def response_log_status(self) -> Mapping[str, Any]:
        """`ResponseLog.stats()` (written, dropped, lost, ...) plus `error`: the errno name
        while writing fails (`ENOSPC`), else None."""
        ...

    def state_status(self) -> Mapping[str, Any]:
        """Durable state: `enabled` (configured), `available` (JetStream KV in use), `reason`
        (why not), and the state writes `pending_writes`, `dropped_writes`, `failed_writes`."""
        ...


@dataclass(frozen=True)
class Component:
    """One component's verdict and the facts behind it (JSON-ready)."""

    status: ComponentStatus
    detail: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"status": self.status, **self.detail}
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class HealthReport:
    """The overall verdict, every component, and the reasons for anything not `ok`."""

    status: Overall
    components: dict[str, Component]

    @property
    def reasons(self) -> list[str]:
        return [f"{name}: {c.reason}" for name, c in self.components.items() if c.reason]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reasons": self.reasons,
            "components": {name: c.to_dict() for name, c in self.components.items()},
        }


# --- the rules -----------------------------------------------------------------------------


def _probe_failed(name: str, exc: Exception) -> Component:
    log.error("health: reading %s failed (%s)", name, exc.__class__.__name__, exc_info=exc)
    return Component("degraded", reason=f"status unavailable ({exc.__class__.__name__})")


def nats_component(source: StatusSource) -> Component:
    try:
        connected = bool(source.nats_connected())
    except Exception as exc:
        return _probe_failed("nats", exc)
    if connected:
        return Component("ok", {"connected": True})
    return Component("failing", {"connected": False}, "not connected to NATS")


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def provider_component(state: Mapping[str, Any] | Any) -> Component:
    """One provider from its breaker snapshot; anything malformed is reported, not trusted."""
    if not isinstance(state, Mapping):
        return Component("degraded", reason="breaker state unreadable")
    breaker = state.get("state")
    detail: dict[str, Any] = {
        "breaker": breaker if isinstance(breaker, str) else None,
        "last_success_at": _timestamp(state.get("last_success_at")),
        "last_failure_at": _timestamp(state.get("last_failure_at")),
    }
    last_error = state.get("last_error")
    if isinstance(last_error, str):
        detail["last_error"] = last_error[:80]
    for name in ("key", "check"):
        value = state.get(name)
        if isinstance(value, str):
            detail[name] = value[:160]
    if state.get("enabled") is False:
        return Component("ok", {**detail, "enabled": False})
    unusable = state.get("unusable")
    if breaker == "closed" and state.get("usable") is False:
        why = unusable[:160] if isinstance(unusable, str) else "not usable"
        return Component("degraded", detail, why)
    if breaker == "closed":
        return Component("ok", detail)
    if breaker == "half_open":
        return Component("degraded", detail, "circuit breaker half-open (probing)")
    if breaker == "open":
        return Component("degraded", detail, "circuit breaker open")
    return Component("degraded", detail, "breaker state unreadable")


def provider_components(source: StatusSource) -> dict[str, Component]:
    try:
        states = dict(source.provider_states())
    except Exception as exc:
        return {"providers": _probe_failed("providers", exc)}
    if not states:
        return {"providers": Component("degraded", reason="no provider configured")}
    return {f"provider.{name}": provider_component(state) for name, state in states.items()}


def usable(state: Mapping[str, Any] | Any) -> bool:
    """Whether a reply can use a provider: its own verdict, else a breaker that is not open."""
    if not isinstance(state, Mapping):
        return False
    verdict = state.get("usable")
    if isinstance(verdict, bool):
        return verdict
    return state.get("state") in ("closed", "half_open")


def chain_component(source: StatusSource) -> Component:
    """`degraded` when some channel's chain holds no usable provider (see the module doc)."""
    try:
        chains = {str(k): [str(n) for n in v] for k, v in source.provider_chains().items()}
        states = dict(source.provider_states())
    except Exception as exc:
        return _probe_failed("llm", exc)
    stranded: dict[tuple[str, ...], list[str]] = {}
    for channel, chain in chains.items():
        if not any(usable(states.get(name)) for name in chain):
            stranded.setdefault(tuple(chain), []).append(channel)
    detail: dict[str, Any] = {"chains": chains}
    if not stranded:
        return Component("ok", detail)
    reasons = []
    for members, channels in stranded.items():
        why = "; ".join(f"{name}: {_why_unusable(states.get(name))}" for name in members)
        reasons.append(f"{', '.join(channels)} ({why or 'no provider in the chain'})")
    return Component("degraded", detail, "no usable provider for " + " / ".join(reasons))


def _why_unusable(state: Mapping[str, Any] | Any) -> str:
    if not isinstance(state, Mapping):
        return "unknown provider"
    reason = state.get("unusable")
    if isinstance(reason, str):
        return reason[:160]
    return f"circuit breaker {state.get('state')}"


def limiter_component(source: StatusSource) -> Component:
    try:
        saturation = float(source.limiter_saturation())
    except Exception as exc:
        return _probe_failed("rate_limiter", exc)
    if not math.isfinite(saturation):
        return Component("degraded", reason="saturation unreadable")
    detail = {"saturation": round(saturation, 3)}
    if saturation >= LIMITER_DEGRADED_SATURATION:
        return Component("degraded", detail, f"reply budget {saturation:.0%} used")
    return Component("ok", detail)


def queue_component(source: StatusSource) -> Component:
    try:
        depth, capacity = int(source.queue_depth()), int(source.queue_capacity())
    except Exception as exc:
        return _probe_failed("queue", exc)
    detail = {"depth": depth, "capacity": capacity}
    if capacity > 0 and depth >= capacity * QUEUE_DEGRADED_FRACTION:
        return Component("degraded", detail, f"{depth} of {capacity} queue slots in use")
    return Component("ok", detail)


def channels_component(source: StatusSource) -> Component:
    try:
        configured = [f"{c.domain}/{c.channel}" for c in source.channels()]
        paused = sorted(str(c) for c in source.paused_channels())
    except Exception as exc:
        return _probe_failed("channels", exc)
    return Component("ok", {"configured": configured, "paused": paused})


RESPONSE_LOG_COUNTS = ("written", "dropped", "lost")


def response_log_component(source: StatusSource) -> Component:
    try:
        state = dict(source.response_log_status())
    except Exception as exc:
        return _probe_failed("response_log", exc)
    detail = {name: _count(state.get(name)) for name in RESPONSE_LOG_COUNTS}
    error = state.get("error")
    if error:
        why = f"cannot write ({str(error)[:40]}); {detail['lost']} record(s) lost so far"
        return Component("degraded", detail, why)
    return Component("ok", detail)


STATE_COUNTS = ("pending_writes", "dropped_writes", "failed_writes")


def state_component(source: StatusSource) -> Component:
    try:
        state = dict(source.state_status())
    except Exception as exc:
        return _probe_failed("state", exc)
    detail: dict[str, Any] = {"kv": bool(state.get("available"))}
    detail.update({name: _count(state.get(name)) for name in STATE_COUNTS})
    if state.get("enabled") and not state.get("available"):
        why = str(state.get("reason") or "unknown")[:200]
        return Component(
            "degraded", detail, f"durable state off, memory only until it is back: {why}"
        )
    return Component("ok", detail)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def assess(source: StatusSource) -> HealthReport:
    """Apply the rules in the module docstring; never raises."""
    components: dict[str, Component] = {"nats": nats_component(source)}
    components.update(provider_components(source))
    components["llm"] = chain_component(source)
    components["rate_limiter"] = limiter_component(source)
    components["queue"] = queue_component(source)
    components["channels"] = channels_component(source)
    components["response_log"] = response_log_component(source)
    components["state"] = state_component(source)
    worst = max(_RANK[c.status] for c in components.values())
    return HealthReport(_OVERALL[worst], components)


class HealthMonitor:
    """Assesses on demand and logs each change of the overall state once."""

    def __init__(self, source: StatusSource) -> None:
        self._source = source
        self.last: HealthReport | None = None

    def check(self) -> HealthReport:
        report = assess(self._source)
        previous = self.last.status if self.last is not None else None
        self.last = report
        if report.status != previous:
            self._log_change(previous, report)
        return report

    @staticmethod
    def _log_change(previous: Overall | None, report: HealthReport) -> None:
        why = "; ".join(report.reasons) or "all components ok"
        level = logging.INFO if report.status == "healthy" else logging.WARNING
        if previous is None:
            log.log(level, "health: %s (%s)", report.status, why)
        else:
            log.log(level, "health changed: %s -> %s (%s)", previous, report.status, why)
