"""Which provider answers, and what happens when one fails: selection, retries, breakers, streams.

One reply walks an ordered list of candidate providers:

- order: the trigger's `preferred` provider first (if enabled), then providers by `priority`
  (lower first, then name); every provider is followed at once by its explicit `fallback`
  chain (depth first). Each provider appears once; disabled or unknown names are skipped.
- one overall deadline per reply (`reply_deadline_seconds`); each attempt gets its provider's
  `timeout_seconds` (or `attempt_timeout_seconds`), shortened so that, while other candidates
  remain, `fallback_reserve_seconds` of the deadline is left for them: a hanging provider
  cannot eat the fallback's time.
- retries only for retryable failures (timeouts, connection errors, 408, 409, 429, 5xx,
  `stream_cut` before any text), with exponential backoff and jitter. `Retry-After` is obeyed
  if it fits under `retry_after_cap_seconds` and the deadline; otherwise the next provider is
  tried at once. 400/401/403/404, `bad_json`, `empty` and `blocked` move on without retry.
- a circuit breaker per provider (`breaker.py`): open when the failure rate is at least
  `breaker_failure_rate` over at least `breaker_min_calls`; an open provider is skipped for
  `breaker_cooldown_seconds`, then one half-open probe decides.

`complete()` and the stream both run the same explicit loop over a `_Walk`:
`while (slot := await walk.next_attempt()) is not None: <call the provider>`; the walk picks
each next attempt (retry after backoff, or the next provider) from how the last one ended.
Every attempt (and every skip) is recorded as an `Attempt` and logged with its reason; the
caller gets them on the result, or in `LLMUnavailable` when nothing answered.

Streaming: `stream()` returns a `StreamHandle`. Fallback and retries apply only until the first
non-blank delta reaches the caller. A stream that breaks after that ends *cleanly*: iteration
stops, `handle.result` holds the partial text, `handle.interrupted` names the failure kind and
the failed attempt is in `handle.result.attempts`. A caller that has enough calls
`handle.stop()`: the request is closed and the text so far is the result (`stopped`).
Providers configured with `stream: false` are asked with `complete()` and their whole answer
arrives as one delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from kryten_llm.config import LLMSettings, ProviderSettings, provider_order
from kryten_llm.llm.breaker import BreakerPolicy, CircuitBreaker, Ticket
from kryten_llm.llm.providers import Provider, ProviderError, StreamUsage, build_provider
from kryten_llm.types import Attempt, LLMRequest, LLMResult

log = logging.getLogger(__name__)

MIN_ATTEMPT_SECONDS = 0.1
"""An attempt with less time than this left before the deadline is not started."""
TIMEOUT_GRACE_SECONDS = 0.5
"""Slack on top of a provider's own timeout before the manager cuts the call itself."""
MAX_BLANK_PREFIX_CHARS = 4096
"""Leading whitespace of a stream kept at most; more (a model streaming only blanks until the
deadline) is dropped rather than buffered."""
NOT_HEALTH_KINDS = frozenset({"blocked"})
"""Failures that say something about the prompt, not the provider: ignored by breakers."""

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class AvailabilityCheck:
    """One provider's start-up availability check (`LLMManager.check_all`)."""

    ok: bool
    detail: str
    at: float
    """Wall-clock time, comparable with the breaker's `last_success_at`."""


class LLMUnavailable(Exception):
    """No provider produced a reply; `attempts` says who was tried and how each failed."""

    def __init__(self, attempts: tuple[Attempt, ...], reason: str) -> None:
        self.attempts = attempts
        self.reason = reason
        super().__init__(reason)


# --- one reply's walk through the providers ----------------------------------------------------


@dataclass
class _Slot:
    """One attempt: which provider, with how long, its breaker ticket, and (after) its outcome."""

    provider: Provider
    ticket: Ticket
    timeout_seconds: float
    error: ProviderError | None = None
    done: bool = False


@dataclass
class _Walk:
    """One reply's walk along the candidate order: deadline, attempts and retry decisions.

    The caller drives it with an explicit loop::

        while (slot := await walk.next_attempt()) is not None:
            ... call slot.provider, then walk.succeeded(slot) or walk.failed(slot, error)
            (or walk.abandoned(slot) if the call was given up without an outcome) ...

    `next_attempt` reads how the previous attempt ended to choose what comes next: the same
    provider again after a backoff (a retryable failure with retries and time left), or the
    next provider whose breaker admits a call. It returns None when an attempt succeeded or
    nothing is left to try; `reason` then says why (for `LLMUnavailable`).
    """

    manager: LLMManager
    request: LLMRequest
    order: list[Provider]
    deadline: float
    started: float
    attempts: list[Attempt] = field(default_factory=list)
    reason: str = ""
    _index: int = 0
    """Position in `order` of the provider being tried."""
    _retry: int = 0
    """Retries of that provider so far (0 for its first attempt)."""
    _last: _Slot | None = None

    def remaining(self) -> float:
        return self.deadline - self.manager.clock()

    async def next_attempt(self) -> _Slot | None:
        """The next attempt to make (after any backoff sleep), or None when the walk is over."""
        last = self._last
        if last is not None:
            if last.error is None:  # it succeeded (or never finished): nothing more to try
                return None
            delay = self.retry_delay(last.error, self._retry)
            if delay is None or self.manager.breaker(last.provider.name).state == "open":
                self._next_provider()
            else:
                await self.manager.sleep(delay)
                self._retry += 1
        return self._admit()

    def _next_provider(self) -> None:
        self._index += 1
        self._retry = 0

    def _admit(self) -> _Slot | None:
        """A slot for the current provider, or the first later one whose breaker admits it."""
        cfg = self.manager.llm
        if not self.order:
            self.reason = "no enabled provider"
            return None
        while self._index < len(self.order):
            provider = self.order[self._index]
            ticket = self.manager.breaker(provider.name).admit()
            if ticket is None:
                if self._retry == 0:  # a retry refused by its breaker just moves on
                    self.skip(provider.name, "breaker_open", "circuit breaker open")
                self._next_provider()
                continue
            remaining = self.remaining()
            if remaining < MIN_ATTEMPT_SECONDS:
                ticket.released()
                self.reason = f"deadline of {cfg.reply_deadline_seconds:g}s exceeded"
                return None
            more_after = self._index < len(self.order) - 1
            timeout = self.attempt_timeout(provider, remaining, more_after)
            self._last = _Slot(provider, ticket, timeout)
            return self._last
        if not self.reason:
            self.reason = self.summary()
        return None

    def attempt_timeout(self, provider: Provider, remaining: float, more_after: bool) -> float:
        cfg = self.manager.llm
        timeout = min(provider.settings.timeout_seconds or cfg.attempt_timeout_seconds, remaining)
        reserved = remaining - cfg.fallback_reserve_seconds
        if more_after and reserved >= MIN_ATTEMPT_SECONDS:
            timeout = min(timeout, reserved)
        return timeout

    def retry_delay(self, error: ProviderError, retry: int) -> float | None:
        """Seconds to wait before retrying the same provider, or None to move on."""
        cfg = self.manager.llm
        if not error.retryable or retry >= cfg.max_retries:
            return None
        remaining = self.remaining()
        if error.retry_after_seconds is not None:
            wait = error.retry_after_seconds
            if wait > cfg.retry_after_cap_seconds or wait > remaining - MIN_ATTEMPT_SECONDS:
                log.warning(
                    "LLM provider %s asked to retry after %gs (cap %gs, %.1fs left): "
                    "moving to the next provider",
                    error.provider,
                    wait,
                    cfg.retry_after_cap_seconds,
                    remaining,
                )
                return None
            return wait
        backoff = min(cfg.backoff_max_seconds, cfg.backoff_base_seconds * 2**retry)
        jitter = 1.0 - cfg.jitter_fraction + 2 * cfg.jitter_fraction * self.manager.rng.random()
        delay = min(cfg.backoff_max_seconds, backoff * jitter)
        return delay if delay < remaining - MIN_ATTEMPT_SECONDS else None

    def succeeded(self, slot: _Slot, latency_ms: float) -> None:
        slot.done = True
        self.attempts.append(Attempt(slot.provider.name, "ok", round(latency_ms, 1)))
        slot.ticket.succeeded()

    def failed(self, slot: _Slot, error: ProviderError, latency_ms: float) -> None:
        slot.done = True
        slot.error = error
        name = slot.provider.name
        self.attempts.append(Attempt(name, error.kind, round(latency_ms, 1)))
        if error.kind in NOT_HEALTH_KINDS:
            state = slot.ticket.released()
        else:
            state = slot.ticket.failed(error.kind)
        # A redirect is the operator's to fix (base_url), not a passing fault: say it loudly.
        log.log(
            logging.ERROR if error.kind == "redirect" else logging.WARNING,
            "LLM attempt failed: provider=%s outcome=%s latency_ms=%.0f retryable=%s "
            "breaker=%s detail=%s",
            name,
            error.kind,
            latency_ms,
            error.retryable,
            state,
            error.detail,
        )

    def abandoned(self, slot: _Slot, latency_ms: float, outcome: str = "abandoned") -> None:
        """The caller went away mid-attempt: recorded, but no verdict on the provider."""
        if slot.done:
            return
        slot.done = True
        self.attempts.append(Attempt(slot.provider.name, outcome, round(latency_ms, 1)))
        slot.ticket.released()

    def skip(self, name: str, outcome: str, why: str) -> None:
        self.attempts.append(Attempt(name, outcome, 0.0))
        log.warning("LLM provider %s skipped: %s", name, why)

    def summary(self) -> str:
        tried = ", ".join(f"{a.provider}={a.outcome}" for a in self.attempts)
        return f"all providers failed ({tried})"

    def unavailable(self) -> LLMUnavailable:
        reason = self.reason or self.summary()
        log.warning("LLM: no reply: %s", reason)
        return LLMUnavailable(tuple(self.attempts), reason)

    def elapsed_ms(self) -> float:
        return (self.manager.clock() - self.started) * 1000.0

    def finished(self, result: LLMResult) -> LLMResult:
        """`result` with the whole reply's latency and every attempt made for it."""
        return dataclasses.replace(
            result, latency_ms=round(self.elapsed_ms(), 1), attempts=tuple(self.attempts)
        )


# --- streaming handle --------------------------------------------------------------------------


class StreamHandle:
    """`async for delta in handle` yields text; afterwards `handle.result` is the LLMResult.

    Iteration raises `LLMUnavailable` only if no provider produced any text. A stream that
    fails after text has been yielded just stops: `result.text` is the partial text and
    `interrupted` holds the failure kind (`stream_cut`, `timeout`, `deadline`, ...).
    """

    def __init__(self, manager: LLMManager, request: LLMRequest, preferred: str | None) -> None:
        self._manager = manager
        self._request = request
        self._preferred = preferred
        self._iterator: AsyncGenerator[str, None] | None = None
        self._result: LLMResult | None = None
        self.interrupted: str | None = None
        self.first_delta_ms: float | None = None
        self.stopping = False
        """Set by `stop()`: the caller ends the stream but keeps what arrived."""

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is not None:
            raise RuntimeError("a StreamHandle can be iterated only once")
        self._iterator = self._manager._stream_reply(self, self._request, self._preferred)
        return self._iterator

    @property
    def result(self) -> LLMResult:
        if self._result is None:
            raise RuntimeError("the stream has not finished")
        return self._result

    @property
    def done(self) -> bool:
        return self._result is not None

    async def aclose(self) -> None:
        """Stop early (the caller lost interest); the in-flight request is closed."""
        if self._iterator is not None:
            await self._iterator.aclose()

    async def stop(self) -> None:
        """Stop reading and close the in-flight request, keeping what arrived as the result.

        For a caller that has what it needs (or more than it can use): unlike `aclose`, the
        handle is then `done`, `result.text` is the text received so far, `interrupted` is
        `stopped`, and the attempt is recorded as `stopped` (no verdict on the provider). The
        result carries the provider and model, so the reply can still be accounted for.
        Without any text received, or after the stream ended, it is just `aclose`.
        """
        self.stopping = True
        await self.aclose()

    def _finish(self, result: LLMResult, interrupted: str | None) -> None:
        self._result = result
        self.interrupted = interrupted


# --- the manager -------------------------------------------------------------------------------


class LLMManager:
    """Asks providers for replies: ordering, deadlines, retries, breakers and streams."""

    def __init__(
        self,
        providers: dict[str, ProviderSettings],
        llm: LLMSettings,
        session: aiohttp.ClientSession,
        *,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.session = session
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.clock = clock
        self.llm = llm
        self._providers: dict[str, Provider] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._checks: dict[str, AvailabilityCheck] = {}
        """The last availability check of each provider (`check_all`), kept for health."""
        self._policy = BreakerPolicy.of(llm)
        self.reconfigure(providers, llm)

    # --- configuration and health ---

    def reconfigure(self, providers: dict[str, ProviderSettings], llm: LLMSettings) -> None:
        """Hot reload: new provider objects; breakers survive for names that still exist."""
        self.llm = llm
        self._policy = BreakerPolicy.of(llm)
        old = {name: p.settings for name, p in self._providers.items()}
        self._providers = {name: build_provider(name, s) for name, s in providers.items()}
        # A check says something only about the settings it was made with.
        self._checks = {n: c for n, c in self._checks.items() if old.get(n) == providers.get(n)}
        self._breakers = {
            name: self._breakers.get(name) or CircuitBreaker(self._policy, self.clock)
            for name in providers
        }
        for breaker in self._breakers.values():
            breaker.reconfigure(self._policy)
        for name, settings in providers.items():
            unknown = [f for f in settings.fallback if f not in providers]
            if unknown:
                log.warning("LLM provider %s: unknown fallback provider(s) %s", name, unknown)

    def breaker(self, name: str) -> CircuitBreaker:
        """The provider's breaker; a throwaway one if a reload removed it mid-reply."""
        found = self._breakers.get(name)
        return found if found is not None else CircuitBreaker(self._policy, self.clock)

    def breaker_states(self) -> dict[str, dict[str, object]]:
        """Per provider: `state` (closed/open/half_open), failure rate, last success/failure."""
        return {name: b.snapshot() for name, b in self._breakers.items()}

    def provider_status(self) -> dict[str, dict[str, object]]:
        """Per provider: the breaker snapshot, plus `enabled`, `key` (its status, never its
        value), `check` (the last availability check), and whether it is `usable` now, with
        the reason it is not (`unusable`). Cheap: health reads it at every heartbeat."""
        status: dict[str, dict[str, object]] = {}
        for name, provider in self._providers.items():
            snapshot = self.breaker(name).snapshot()
            check = self._checks.get(name)
            problem = self.unusable_reason(name, snapshot)
            snapshot.update(
                enabled=provider.settings.enabled,
                key=provider.settings.key_status().describe(),
                usable=problem is None,
            )
            if check is not None:
                snapshot["check"] = "ok" if check.ok else f"failed: {check.detail}"
            if problem is not None:
                snapshot["unusable"] = problem
            status[name] = snapshot
        return status

    def unusable_reason(self, name: str, snapshot: dict[str, object] | None = None) -> str | None:
        """Why a reply cannot use this provider now, or None when it can.

        Unusable: disabled; its `api_key_env` names an unset variable; its breaker is open;
        or its last availability check failed and no call has succeeded since.
        """
        provider = self._providers[name]
        settings = provider.settings
        state = snapshot if snapshot is not None else self.breaker(name).snapshot()
        if not settings.enabled:
            return "disabled"
        key = settings.key_status()
        if key.missing:
            return f"API key variable {key.variable} is not set"
        if state.get("state") == "open":
            return "circuit breaker open"
        check = self._checks.get(name)
        last_success = state.get("last_success_at")
        if check is not None and not check.ok:
            recovered = isinstance(last_success, float) and last_success >= check.at
            if not recovered:
                return f"availability check failed ({check.detail})"
        return None

    async def check_all(self) -> dict[str, tuple[bool, str]]:
        """Probe every enabled provider's models endpoint and log the result; never raises."""
        enabled = [p for p in self._providers.values() if p.settings.enabled]
        results = await asyncio.gather(*(self._check(p) for p in enabled))
        return {p.name: r for p, r in zip(enabled, results, strict=True)}

    async def _check(self, provider: Provider) -> tuple[bool, str]:
        timeout = self.llm.health_check_timeout_seconds
        try:
            async with asyncio.timeout(timeout + TIMEOUT_GRACE_SECONDS):
                ok, detail = await provider.check_availability(self.session, timeout)
        except TimeoutError:
            ok, detail = False, f"timeout: no answer within {timeout:g}s"
        self._checks[provider.name] = AvailabilityCheck(ok, detail, time.time())
        level = logging.INFO if ok else logging.WARNING
        log.log(
            level,
            "LLM provider %s (%s %s, model %s): %s",
            provider.name,
            provider.settings.type,
            provider.settings.base_url,
            provider.model,
            ("available, " if ok else "UNAVAILABLE, ") + detail,
        )
        return ok, detail

    def order(self, preferred: str | None = None) -> list[str]:
        """Candidate names for one reply: preferred, then by priority, fallbacks after each."""
        settings = {name: p.settings for name, p in self._providers.items()}
        if preferred is not None and not (preferred in settings and settings[preferred].enabled):
            log.warning("LLM: preferred provider %r is unknown or disabled", preferred)
        return provider_order(settings, preferred)

    def _walk(self, request: LLMRequest, preferred: str | None) -> _Walk:
        now = self.clock()
        return _Walk(
            manager=self,
            request=request,
            order=[self._providers[n] for n in self.order(preferred)],
            deadline=now + self.llm.reply_deadline_seconds,
            started=now,
        )

    # --- complete ---

    async def complete(self, request: LLMRequest, preferred: str | None = None) -> LLMResult:
        """The first good reply along the candidate order; raises LLMUnavailable."""
        walk = self._walk(request, preferred)
        while (slot := await walk.next_attempt()) is not None:
            result = await self._attempt_complete(walk, slot)
            if result is not None:
                return walk.finished(result)
        raise walk.unavailable()

    async def _attempt_complete(self, walk: _Walk, slot: _Slot) -> LLMResult | None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(slot.timeout_seconds + TIMEOUT_GRACE_SECONDS):
                result = await slot.provider.complete(
                    self.session, walk.request, slot.timeout_seconds
                )
        except ProviderError as exc:
            walk.failed(slot, exc, _ms_since(started))
            return None
        except TimeoutError:
            walk.failed(slot, _timeout_error(slot), _ms_since(started))
            return None
        except Exception as exc:  # a provider bug must not take the reply down with it
            walk.failed(slot, _internal_error(slot, exc), _ms_since(started))
            return None
        else:
            walk.succeeded(slot, _ms_since(started))
            return result
        finally:
            walk.abandoned(slot, _ms_since(started))

    # --- stream ---

    def stream(self, request: LLMRequest, preferred: str | None = None) -> StreamHandle:
        """A handle to iterate for text deltas; see `StreamHandle`."""
        return StreamHandle(self, request, preferred)

    async def _stream_reply(
        self, handle: StreamHandle, request: LLMRequest, preferred: str | None
    ) -> AsyncGenerator[str, None]:
        walk = self._walk(request, preferred)
        while (slot := await walk.next_attempt()) is not None:
            attempt = _StreamAttempt(self, walk, slot, handle)
            try:
                async with contextlib.aclosing(attempt.run()) as deltas:
                    async for delta in deltas:
                        if handle.first_delta_ms is None:
                            handle.first_delta_ms = round(walk.elapsed_ms(), 1)
                        yield delta
            except GeneratorExit:
                # The caller closed the handle; `stop()` keeps what arrived (the attempt is
                # already recorded as `stopped`: closing `deltas` recorded it).
                if handle.stopping and attempt.parts:
                    handle._finish(walk.finished(attempt.as_result()), "stopped")
                raise
            if attempt.result is not None:
                handle._finish(walk.finished(attempt.result), attempt.interrupted)
                return
        raise walk.unavailable()


class _StreamAttempt:
    """One streaming call to one provider; owns the partial text and the outcome."""

    def __init__(self, manager: LLMManager, walk: _Walk, slot: _Slot, handle: StreamHandle) -> None:
        self.manager = manager
        self.walk = walk
        self.slot = slot
        self.handle = handle
        self.parts: list[str] = []
        self.usage: StreamUsage | None = None
        self.result: LLMResult | None = None
        self.interrupted: str | None = None

    async def run(self) -> AsyncGenerator[str, None]:
        """Yield deltas; leading blank deltas are held back so fallback stays possible."""
        started = time.perf_counter()
        provider = self.slot.provider
        if provider.settings.stream:
            # The provider's read bound is the looser of the two phases (a model may be slow
            # to start); the bound of each phase is enforced here, per delta.
            read_timeout = max(
                self.slot.timeout_seconds, self.manager.llm.stream_idle_timeout_seconds
            )
            items = provider.stream(self.manager.session, self.walk.request, read_timeout)
        else:
            items = provider.stream_via_complete(
                self.manager.session, self.walk.request, self.slot.timeout_seconds
            )
        held: list[str] = []  # leading blank deltas, all whitespace
        held_chars = 0
        yielded = False
        try:
            while True:
                wait = self._wait_seconds(yielded)
                try:
                    async with asyncio.timeout(wait):
                        item = await anext(items)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise self._silence_error(wait) from None
                if isinstance(item, StreamUsage):
                    self.usage = item
                    continue
                if yielded:
                    self.parts.append(item)
                    yield item
                elif item.strip():  # `held` is blank: only the new delta can hold text
                    yielded = True
                    self.parts.append(item)
                    yield "".join(held) + item
                elif held_chars < MAX_BLANK_PREFIX_CHARS:
                    held.append(item)
                    held_chars += len(item)
                    self.parts.append(item)
            if not yielded:
                raise ProviderError(provider.name, "empty", "stream carried no text")
        except ProviderError as exc:
            self._fail(exc, started, yielded)
        except Exception as exc:  # a provider bug ends this attempt, not the reply
            self._fail(_internal_error(self.slot, exc), started, yielded)
        else:
            self.walk.succeeded(self.slot, _ms_since(started))
            self.result = self.as_result()
        finally:
            await _aclose(items)
            outcome = "stopped" if self.handle.stopping else "abandoned"
            self.walk.abandoned(self.slot, _ms_since(started), outcome)

    def _wait_seconds(self, yielded: bool) -> float:
        """Before the first delta the attempt timeout applies; after it, the idle timeout."""
        remaining = max(self.walk.remaining(), 0.0)
        limit = (
            self.manager.llm.stream_idle_timeout_seconds if yielded else self.slot.timeout_seconds
        )
        return min(limit, remaining) + (TIMEOUT_GRACE_SECONDS if not yielded else 0.0)

    def _silence_error(self, wait: float) -> ProviderError:
        if self.walk.remaining() <= 0:
            return ProviderError(self.slot.provider.name, "deadline", "reply deadline reached")
        return ProviderError(
            self.slot.provider.name, "timeout", f"no data for {wait:g}s", retryable=True
        )

    def _fail(self, error: ProviderError, started: float, yielded: bool) -> None:
        self.walk.failed(self.slot, error, _ms_since(started))
        if yielded:
            # Text already reached the caller: no fallback, keep what we have.
            self.interrupted = error.kind
            self.result = self.as_result()
            log.warning(
                "LLM stream from %s broke after %d chars (%s): reply ends early",
                self.slot.provider.name,
                len("".join(self.parts)),
                error.kind,
            )

    def as_result(self) -> LLMResult:
        """The text so far, with the usage the stream reported (if it got that far)."""
        provider = self.slot.provider
        usage = self.usage or StreamUsage(None, None, None)
        return LLMResult(
            text="".join(self.parts),
            provider=provider.name,
            model=usage.model or provider.model,
            latency_ms=0.0,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            anomalies=usage.anomalies,
        )


# --- helpers -----------------------------------------------------------------------------------


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _timeout_error(slot: _Slot) -> ProviderError:
    return ProviderError(
        slot.provider.name,
        "timeout",
        f"no answer within {slot.timeout_seconds:g}s",
        retryable=True,
    )


def _internal_error(slot: _Slot, exc: Exception) -> ProviderError:
    # Only the class name: an unexpected exception's text may carry request details.
    return ProviderError(slot.provider.name, "internal", exc.__class__.__name__)


async def _aclose(items: AsyncIterator[object]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # closing a broken stream must not mask the real outcome
            log.debug("closing a provider stream failed", exc_info=True)
