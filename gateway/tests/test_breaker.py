"""The circuit breaker: every transition, the permits, and the growth and cap of the open time."""

from __future__ import annotations

import pytest

from mosaic_gateway.upstream.breaker import (
    ADMITTED,
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBE,
    REJECTED,
    STATE_CODES,
    CircuitBreaker,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def tripped(clock: Clock, **options: float) -> CircuitBreaker:
    """A breaker opened by `failure_threshold` consecutive failures."""
    breaker = CircuitBreaker(clock=clock, **options)  # type: ignore[arg-type]
    for _ in range(breaker.failure_threshold):
        breaker.failure(breaker.acquire())
    assert breaker.state == OPEN
    return breaker


def test_closed_admits_and_counts_only_consecutive_failures(clock: Clock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=clock)
    assert breaker.state == CLOSED
    for _ in range(10):
        breaker.failure(breaker.acquire())
        breaker.failure(breaker.acquire())
        # A success in between resets the count: two failures in a row never open it.
        breaker.success(breaker.acquire())
    assert breaker.state == CLOSED
    assert breaker.acquire() == ADMITTED
    assert breaker.times_opened == 0


def test_threshold_of_consecutive_failures_opens(clock: Clock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_for=2.0, clock=clock)
    breaker.failure(ADMITTED)
    breaker.failure(ADMITTED)
    assert breaker.state == CLOSED
    breaker.failure(ADMITTED)
    assert breaker.state == OPEN
    assert breaker.opened_at == clock.now
    assert breaker.open_for == 2.0
    assert breaker.retry_at == clock.now + 2.0
    assert breaker.times_opened == 1


def test_open_rejects_until_open_time_is_over(clock: Clock) -> None:
    breaker = tripped(clock, failure_threshold=2, open_for=5.0)
    clock.now += 4.99
    assert breaker.acquire() == REJECTED
    assert breaker.state == OPEN
    clock.now += 0.01
    assert breaker.state == HALF_OPEN


def test_half_open_admits_a_limited_number_of_probes(clock: Clock) -> None:
    breaker = tripped(clock, failure_threshold=1, open_for=1.0, half_open_probes=2)
    clock.now += 1.0
    assert breaker.acquire() == PROBE
    assert breaker.acquire() == PROBE
    assert breaker.acquire() == REJECTED
    # A probe ending without a verdict frees its slot for another.
    breaker.release(PROBE)
    assert breaker.state == HALF_OPEN
    assert breaker.acquire() == PROBE
    assert breaker.acquire() == REJECTED


def test_probe_success_closes_and_resets_open_time(clock: Clock) -> None:
    breaker = tripped(clock, failure_threshold=1, open_for=1.0, backoff=2.0)
    clock.now += 1.0
    breaker.failure(breaker.acquire())  # reopen: open time doubles
    assert breaker.open_for == 2.0
    clock.now += 2.0
    permit = breaker.acquire()
    assert permit == PROBE
    breaker.success(permit)
    assert breaker.state == CLOSED
    assert breaker.open_for == 1.0
    assert breaker.opened_at is None
    assert breaker.consecutive_failures == 0
    assert breaker.acquire() == ADMITTED
    # Next trip starts from the base open time again.
    breaker.failure(ADMITTED)
    assert breaker.state == OPEN
    assert breaker.open_for == 1.0


def test_probe_failure_reopens_with_growing_then_capped_open_time(clock: Clock) -> None:
    breaker = tripped(clock, failure_threshold=1, open_for=1.0, backoff=2.0, max_open_for=5.0)
    seen = []
    for _ in range(5):
        clock.now += breaker.open_for
        permit = breaker.acquire()
        assert permit == PROBE
        breaker.failure(permit)
        assert breaker.state == OPEN
        assert breaker.retry_at == clock.now + breaker.open_for
        seen.append(breaker.open_for)
    assert seen == [2.0, 4.0, 5.0, 5.0, 5.0]
    assert breaker.times_opened == 6


def test_results_of_requests_admitted_before_opening_are_ignored(clock: Clock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_for=1.0, clock=clock)
    slow = breaker.acquire()  # sent while closed, answers late
    breaker.failure(breaker.acquire())
    breaker.failure(breaker.acquire())
    assert breaker.state == OPEN
    breaker.success(slow)
    assert breaker.state == OPEN, "a stale success must not close an open breaker"
    clock.now += 1.0
    probe = breaker.acquire()
    assert probe == PROBE
    breaker.failure(slow)
    assert breaker.state == HALF_OPEN, "a stale failure is no verdict on the probe"
    assert breaker.open_for == 1.0
    breaker.success(probe)
    assert breaker.state == CLOSED


def test_late_probe_failure_after_reopen_does_not_grow_twice(clock: Clock) -> None:
    breaker = tripped(clock, failure_threshold=1, open_for=1.0, half_open_probes=2)
    clock.now += 1.0
    first, second = breaker.acquire(), breaker.acquire()
    breaker.failure(first)
    assert breaker.open_for == 2.0
    breaker.failure(second)  # arrives while already open again
    assert breaker.state == OPEN
    assert breaker.open_for == 2.0


def test_probes_that_never_report_do_not_wedge_half_open(clock: Clock) -> None:
    breaker = tripped(clock, failure_threshold=1, open_for=1.0, probe_timeout=10.0)
    clock.now += 1.0
    assert breaker.acquire() == PROBE
    clock.now += 9.0
    assert breaker.acquire() == REJECTED
    clock.now += 1.0
    assert breaker.acquire() == PROBE


def test_state_changes_are_reported(clock: Clock) -> None:
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        failure_threshold=1,
        open_for=1.0,
        clock=clock,
        on_change=lambda b, old, new: changes.append((old, new)),
        name="blog@10.0.0.1:8001",
    )
    breaker.failure(breaker.acquire())
    clock.now += 1.0
    breaker.failure(breaker.acquire())
    clock.now += 2.0
    breaker.success(breaker.acquire())
    assert changes == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


def test_snapshot_for_admin_and_metrics(clock: Clock) -> None:
    breaker = tripped(clock, failure_threshold=2, open_for=3.0)
    clock.now += 1.0
    snap = breaker.snapshot()
    assert snap["state"] == OPEN
    assert snap["retry_in"] == pytest.approx(2.0)
    assert snap["opened_seconds_ago"] == pytest.approx(1.0)
    assert snap["open_for"] == 3.0
    assert snap["times_opened"] == 1
    assert STATE_CODES[breaker.state] > STATE_CODES[HALF_OPEN] > STATE_CODES[CLOSED]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"failure_threshold": 0}, "at least 1"),
        ({"half_open_probes": 0}, "at least 1"),
        ({"open_for": 0}, "positive"),
        ({"open_for": 10, "max_open_for": 5}, "at least open_for"),
        ({"backoff": 0.5}, "backoff"),
    ],
)
def test_rejects_nonsense_settings(options: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        CircuitBreaker(**options)  # type: ignore[arg-type]
