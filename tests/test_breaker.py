"""The circuit breaker on its own: window, minimum calls, cool-down, the single half-open probe."""

from __future__ import annotations

from kryten_llm.config import LLMSettings
from kryten_llm.llm.breaker import BreakerPolicy, CircuitBreaker, Ticket

POLICY = BreakerPolicy(window=10, failure_rate=0.5, min_calls=4, cooldown_seconds=30.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(breaker: CircuitBreaker) -> Ticket:
    ticket = breaker.admit()
    assert ticket is not None, f"refused while {breaker.state}"
    return ticket


def fail(breaker: CircuitBreaker, times: int, kind: str = "http_500") -> None:
    for _ in range(times):
        admitted(breaker).failed(kind)


def opened(clock: Clock) -> CircuitBreaker:
    breaker = CircuitBreaker(POLICY, clock)
    fail(breaker, POLICY.min_calls)
    assert breaker.state == "open"
    return breaker


def test_policy_comes_from_the_llm_settings() -> None:
    llm = LLMSettings(
        breaker_window=7,
        breaker_failure_rate=0.25,
        breaker_min_calls=3,
        breaker_cooldown_seconds=12,
    )
    assert BreakerPolicy.of(llm) == BreakerPolicy(7, 0.25, 3, 12.0)


def test_stays_closed_below_min_calls_even_if_all_fail() -> None:
    breaker = CircuitBreaker(POLICY, Clock())
    fail(breaker, POLICY.min_calls - 1)
    assert breaker.state == "closed"
    assert breaker.snapshot()["failure_rate"] == 1.0


def test_opens_at_the_failure_rate_over_min_calls() -> None:
    breaker = CircuitBreaker(POLICY, Clock())
    admitted(breaker).succeeded()
    admitted(breaker).succeeded()
    fail(breaker, 1)
    assert breaker.state == "closed"  # 1 of 3: too few calls and too low a rate
    fail(breaker, 1)
    assert breaker.state == "open"  # 2 of 4 = 0.5
    snapshot = breaker.snapshot()
    assert snapshot["calls"] == 4 and snapshot["last_error"] == "http_500"
    assert snapshot["last_success_at"] is not None and snapshot["last_failure_at"] is not None


def test_a_rate_below_the_threshold_keeps_it_closed() -> None:
    breaker = CircuitBreaker(BreakerPolicy(10, 0.6, 4, 30.0), Clock())
    for ok in (False, True, False, True, True):
        ticket = admitted(breaker)
        ticket.succeeded() if ok else ticket.failed("timeout")
    assert breaker.state == "closed" and breaker.snapshot()["calls"] == 5


def test_the_window_forgets_old_verdicts() -> None:
    breaker = CircuitBreaker(BreakerPolicy(4, 0.5, 4, 30.0), Clock())
    fail(breaker, 1)
    for _ in range(4):
        admitted(breaker).succeeded()  # the failure slides out of the window
    fail(breaker, 1)
    assert breaker.state == "closed" and breaker.snapshot()["failure_rate"] == 0.25


def test_open_refuses_until_the_cool_down_has_passed() -> None:
    clock = Clock()
    breaker = opened(clock)
    assert breaker.admit() is None
    clock.now += POLICY.cooldown_seconds - 0.01
    assert breaker.admit() is None
    assert breaker.state == "open"
    clock.now += 0.01
    assert admitted(breaker).probe
    assert breaker.state == "half_open"


def test_half_open_admits_exactly_one_probe() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.now += POLICY.cooldown_seconds
    probe = admitted(breaker)
    assert probe.probe
    assert [breaker.admit() for _ in range(5)] == [None] * 5
    clock.now += 10 * POLICY.cooldown_seconds  # time alone never admits a second probe
    assert breaker.admit() is None


def test_probe_success_closes_with_an_empty_window() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.now += POLICY.cooldown_seconds
    assert admitted(breaker).succeeded() == "closed"
    assert breaker.snapshot()["calls"] == 0
    ticket = admitted(breaker)
    assert not ticket.probe


def test_probe_failure_reopens_for_another_cool_down() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.now += POLICY.cooldown_seconds
    assert admitted(breaker).failed("timeout") == "open"
    assert breaker.admit() is None
    clock.now += POLICY.cooldown_seconds - 1
    assert breaker.admit() is None  # the cool-down counts from the re-opening
    clock.now += 1
    assert admitted(breaker).probe


def test_a_probe_released_without_verdict_lets_the_next_call_probe() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.now += POLICY.cooldown_seconds
    assert admitted(breaker).released() == "half_open"
    second = admitted(breaker)
    assert second.probe
    assert breaker.admit() is None


def test_a_ticket_counts_once() -> None:
    clock = Clock()
    breaker = opened(clock)
    clock.now += POLICY.cooldown_seconds
    probe = admitted(breaker)
    probe.succeeded()
    # Settling again (e.g. a release in a `finally`) changes nothing.
    assert probe.released() == "closed" and probe.failed("timeout") == "closed"
    assert breaker.snapshot()["calls"] == 0
    closed = admitted(breaker)
    closed.failed("timeout")
    closed.failed("timeout")
    assert breaker.snapshot()["calls"] == 1


def test_a_stale_call_does_not_decide_a_half_open_breaker() -> None:
    """A call admitted while closed but ending during the probe is not the probe's verdict."""
    clock = Clock()
    breaker = CircuitBreaker(POLICY, clock)
    slow = admitted(breaker)  # started while all was well
    fail(breaker, POLICY.min_calls)
    clock.now += POLICY.cooldown_seconds
    probe = admitted(breaker)
    slow.succeeded()
    assert breaker.state == "half_open"
    assert breaker.admit() is None  # the probe is still the only one
    probe.failed("http_503")
    assert breaker.state == "open"


def test_released_tickets_are_no_verdict() -> None:
    breaker = CircuitBreaker(POLICY, Clock())
    for _ in range(10):
        admitted(breaker).released()
    assert breaker.state == "closed" and breaker.snapshot()["calls"] == 0


def test_reconfigure_keeps_state_and_resizes_the_window() -> None:
    clock = Clock()
    breaker = opened(clock)
    breaker.reconfigure(BreakerPolicy(window=2, failure_rate=0.5, min_calls=1, cooldown_seconds=5))
    assert breaker.state == "open" and breaker.snapshot()["calls"] == 2
    clock.now += 5  # the new cool-down applies at once
    assert admitted(breaker).probe
