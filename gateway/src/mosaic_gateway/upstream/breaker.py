"""A circuit breaker per upstream instance: stop sending requests to an instance that keeps failing.

States:

* **closed** -- requests pass. `failure_threshold` *consecutive* failures open the breaker. A
  consecutive count (rather than a failure ratio over a sliding window) was chosen because it is
  one integer per instance, costs nothing per request beyond a store, needs no clock while closed,
  and reacts to an instance that died outright (the case that matters for a gateway) after
  exactly N requests, whatever the traffic volume. Its blind spot, an instance that fails one
  request in three, is left to the balancer's passive ejection and the active health checks.
* **open** -- requests are refused at once (the data path answers 503 or picks another
  instance) for `open_for` seconds.
* **half-open** -- once the open time is over, up to `half_open_probes` requests at a time go
  through as probes. A probe that succeeds closes the breaker (and resets the open time to its
  base); a probe that fails opens it again for `backoff` times longer, capped at `max_open_for`,
  so an instance that stays down is probed less and less often.

Callers take a *permit* with `acquire()` and report the outcome with `success`, `failure` or
`release` (no verdict: the client went away, a 4xx). The permit tells a probe from a request
admitted while closed, so a slow request sent before the breaker opened cannot close it again.

The closed path is an attribute compare in `acquire` and a store in `success`; the clock is read
only when the breaker is not closed. The open-to-half-open transition is lazy (on `acquire` or
on reading `state`); a balancer that takes open instances out of its rotation can schedule its
own re-check at `retry_at` using `on_change`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from mosaic_gateway.http.problems import GatewayProblem

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

# For a Prometheus gauge (`gateway_breaker_state`): numbers sort the way severity does.
STATE_CODES: Final = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

# Permits: what `acquire` returns and the outcome methods take back.
REJECTED: Final = 0
ADMITTED: Final = 1
PROBE: Final = 2

CIRCUIT_OPEN = GatewayProblem(
    503, "gateway.circuit_open", "The service is failing; requests are paused for a moment"
)

StateListener = Callable[["CircuitBreaker", str, str], None]


class CircuitBreaker:
    """One instance's breaker; see the module docstring. Not thread-safe (one per event loop)."""

    __slots__ = (
        "_backoff",
        "_base_open_for",
        "_clock",
        "_failures",
        "_max_open_for",
        "_max_probes",
        "_probe_started",
        "_probe_timeout",
        "_probes",
        "_state",
        "failure_threshold",
        "name",
        "on_change",
        "open_for",
        "opened_at",
        "retry_at",
        "times_opened",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_for: float = 1.0,
        max_open_for: float = 60.0,
        backoff: float = 2.0,
        half_open_probes: int = 1,
        probe_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateListener | None = None,
        name: str = "",
    ) -> None:
        if failure_threshold < 1 or half_open_probes < 1:
            raise ValueError("failure_threshold and half_open_probes must be at least 1")
        if open_for <= 0 or max_open_for < open_for:
            raise ValueError("open_for must be positive and max_open_for at least open_for")
        if backoff < 1.0 or probe_timeout <= 0:
            raise ValueError("backoff must be >= 1 and probe_timeout positive")
        self.name = name
        self.failure_threshold = failure_threshold
        self._base_open_for = open_for
        self._max_open_for = max_open_for
        self._backoff = backoff
        self._max_probes = half_open_probes
        self._probe_timeout = probe_timeout
        self._clock = clock
        self.on_change = on_change
        self._state: str = CLOSED
        self._failures = 0
        self._probes = 0
        self._probe_started = 0.0
        # Public for metrics and the admin view; in the units of `clock`.
        self.opened_at: float | None = None
        self.open_for = open_for
        self.retry_at = 0.0
        self.times_opened = 0

    # --- reading ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """`closed`, `open` or `half_open` (an open breaker whose time is up reads half-open)."""
        if self._state == OPEN and self._clock() >= self.retry_at:
            self._set_state(HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def snapshot(self) -> dict[str, object]:
        """The breaker for the admin view; times as seconds relative to now."""
        state = self.state
        now = self._clock()
        return {
            "state": state,
            "consecutive_failures": self._failures,
            "open_for": self.open_for,
            "opened_seconds_ago": None if self.opened_at is None else now - self.opened_at,
            "retry_in": max(0.0, self.retry_at - now) if state == OPEN else 0.0,
            "probes_in_flight": self._probes,
            "times_opened": self.times_opened,
        }

    # --- the request path -------------------------------------------------------------------

    def acquire(self) -> int:
        """`ADMITTED` or `PROBE` if a request may go to the instance, else `REJECTED`."""
        state = self._state
        if state == CLOSED:
            return ADMITTED
        now = self._clock()
        if state == OPEN:
            if now < self.retry_at:
                return REJECTED
            self._set_state(HALF_OPEN)
        if self._probes >= self._max_probes:
            if now - self._probe_started < self._probe_timeout:
                return REJECTED
            # The probes out there never reported back (a bug in a caller, or a request stuck
            # far beyond any route timeout): do not stay half-open and refusing forever.
            self._probes = 0
        self._probes += 1
        self._probe_started = now
        return PROBE

    def success(self, permit: int) -> None:
        """The instance answered well."""
        if self._state == CLOSED:
            self._failures = 0
            return
        if permit == PROBE:
            self._probe_done()
            if self._state == HALF_OPEN:
                self._close()
        # A request admitted before the breaker opened says nothing about the instance now.

    def failure(self, permit: int) -> None:
        """The instance failed (connection error, timeout, a status counted as failure)."""
        state = self._state
        if state == CLOSED:
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self._open(self._base_open_for)
            return
        if permit == PROBE:
            self._probe_done()
            if state == HALF_OPEN:
                self._failures += 1
                self._open(min(self.open_for * self._backoff, self._max_open_for))

    def release(self, permit: int) -> None:
        """The exchange ended with no verdict on the instance; frees a probe slot."""
        if permit == PROBE:
            self._probe_done()

    # --- transitions ------------------------------------------------------------------------

    def _probe_done(self) -> None:
        if self._probes > 0:
            self._probes -= 1

    def _open(self, open_for: float) -> None:
        now = self._clock()
        self.open_for = open_for
        self.opened_at = now
        self.retry_at = now + open_for
        self.times_opened += 1
        self._probes = 0
        self._set_state(OPEN)

    def _close(self) -> None:
        self._failures = 0
        self._probes = 0
        self.open_for = self._base_open_for
        self.opened_at = None
        self._set_state(CLOSED)

    def _set_state(self, new: str) -> None:
        old = self._state
        if old == new:
            return
        self._state = new
        if self.on_change is not None:
            self.on_change(self, old, new)
