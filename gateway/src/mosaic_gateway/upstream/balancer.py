"""Choosing an instance of a backend, and keeping broken instances out of the choice.

Two policies: smooth weighted round robin (nginx's: weights spread evenly, never bursts of one
instance) and least outstanding requests (per unit of weight, ties rotated so idle instances
share the load). Both pick among `available` instances only: those the active health check
considers healthy and that passive ejection has not benched. That list is recomputed when an
instance changes state, never per request.

When no instance is available the backend is in "panic" (Envoy's term): it spreads over all
instances rather than refusing every request, since checks and ejections can be wrong all at
once (a shared dependency blipped, a single instance restarted) and the instances are then the
best judges. Failing fast on a backend known to be down is the circuit breaker's job.

Each instance also has a circuit breaker (`breaker.CircuitBreaker`), and the two are kept on
purpose: ejection is a *rotation hint* (take a failing instance out while others can serve, fall
back to panic when all are out), the breaker is the *hard stop* (an open breaker is never sent a
request, even in panic; after its open time one probe at a time decides whether it closes, and
the open time grows while the instance stays down). With the defaults ejection acts first (3
failures) and keeps the breaker closed while other instances serve; the breaker opens when the
traffic still reaches a failing instance, typically a backend whose instances all fail, where it
turns a timeout or an error per request into an immediate 503. `pick` asks the chosen instance's
breaker for a permit (an attribute compare while closed) and leaves it in `permit` for the
caller, which hands it back with the outcome. A route with a `breaker:` of its own picks through
a view of the backend (`route_scope.RouteBackend`, listed in `scopes`) that swaps in the route's
breakers and shares everything else here.

Retries draw on a budget per backend (and worker): every request deposits `retry_ratio` tokens,
a retry spends one, and a small allowance per second lets low traffic retry too. So retries
add at most about `retry_ratio` to the load on a backend that fails everywhere.

State is per worker process: each worker sees its own traffic, ejects on its own evidence and
runs its own health checks.

The set of instances may change while requests are in flight (discovery, `update_instances`):
instances that stay keep their objects, so their ejection, breaker and health state and their
pools carry on; new ones are added; removed ones leave the choice at once but their pools
*drain*: idle connections are closed, busy ones finish their exchange, and the pool is closed
once no request holds the instance any more (checked by `sweep`, every second).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mosaic_gateway.upstream.breaker import REJECTED, CircuitBreaker
from mosaic_gateway.upstream.connection import Pool
from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    from mosaic_gateway.upstream.route_scope import RouteBackend

_log = get_logger("mosaic_gateway.upstream.balancer")


@dataclass(frozen=True, slots=True)
class Address:
    """Where an instance is reached; `url` identifies it across updates."""

    url: str
    host: str
    port: int
    weight: int = 1


# Makes the pool and breaker of a new instance (set by the runtime from the backend's settings).
InstanceParts = Callable[[Address], tuple[Pool, CircuitBreaker]]


class Instance:
    __slots__ = (
        "_current",
        "_readmit",
        "backend",
        "bad_checks",
        "breaker",
        "ejected",
        "failures",
        "good_checks",
        "healthy",
        "host",
        "outstanding",
        "pool",
        "port",
        "url",
        "weight",
    )

    def __init__(
        self,
        backend: Backend,
        url: str,
        host: str,
        port: int,
        weight: int,
        pool: Pool,
        breaker: CircuitBreaker,
    ):
        self.backend = backend
        self.breaker = breaker
        self.url = url
        self.host = host
        self.port = port
        self.weight = weight
        self.pool = pool
        self.outstanding = 0
        self.failures = 0  # consecutive
        self.ejected = False
        self.healthy = True  # until a health check says otherwise
        self.good_checks = 0
        self.bad_checks = 0
        self._current = 0  # smooth weighted round robin state
        self._readmit: asyncio.TimerHandle | None = None

    @property
    def available(self) -> bool:
        return self.healthy and not self.ejected

    def snapshot(self) -> dict[str, object]:
        return {
            "url": self.url,
            "weight": self.weight,
            "healthy": self.healthy,
            "ejected": self.ejected,
            "outstanding": self.outstanding,
            "consecutive_failures": self.failures,
            "breaker": self.breaker.snapshot(),
            "connections": {"open": self.pool.open, "idle": len(self.pool.idle)},
        }


class Backend:
    """The instances of one service and how to pick one."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        *,
        policy: str,
        eject_after: int,
        eject_for: float,
        failure_statuses: Sequence[int],
        retry_ratio: float = 0.0,
        retry_min_per_second: int = 0,
    ) -> None:
        self.loop = loop
        self.name = name
        self.policy = policy
        self.eject_after = eject_after
        self.eject_for = eject_for
        self.failure_statuses = frozenset(failure_statuses)
        self.retry_ratio = retry_ratio
        self.retry_min_per_second = retry_min_per_second
        # A bucket of ten seconds' worth at 100 requests/s: a burst after a quiet spell can
        # retry, a backend failing for long cannot bank retries without bound.
        self._retry_cap = max(1.0, retry_ratio * 1000)
        self._retry_tokens = 0.0
        self._retry_second = -1
        self._retry_second_used = 0
        self.permit = REJECTED  # the breaker permit of the last `pick`; read at once by the caller
        self.instances: list[Instance] = []
        self.available: list[Instance] = []
        # Removed instances whose pools still serve requests that picked them before.
        self.draining: list[Instance] = []
        self.make_parts: InstanceParts | None = None
        # What the admin view says about where the instances come from (set by discovery).
        self.source: dict[str, object] = {"kind": "static"}
        self.panic = False
        # Views of routes with breakers of their own (route_scope.py); told of instance changes.
        self.scopes: list[RouteBackend] = []
        self._equal_weights = True
        self._next = 0
        self._total_weight = 0
        self._choose = (
            self._pick_least_outstanding if policy == "least_outstanding" else self._pick_rr
        )

    def add_instance(
        self,
        url: str,
        host: str,
        port: int,
        weight: int,
        pool: Pool,
        breaker: CircuitBreaker | None = None,
    ) -> Instance:
        if breaker is None:
            breaker = CircuitBreaker(name=url)
        breaker.on_change = self._breaker_changed
        instance = Instance(self, url, host, port, weight, pool, breaker)
        self.instances.append(instance)
        self._refresh()
        return instance

    def update_instances(self, addresses: Sequence[Address]) -> tuple[list[str], list[str]]:
        """Make the instances be `addresses` (matched by URL); returns (added, removed) URLs.

        Instances that stay keep their state; a changed weight is applied in place."""
        wanted = {address.url: address for address in addresses}
        current = {instance.url: instance for instance in self.instances}
        removed = [url for url in current if url not in wanted]
        added = [url for url in wanted if url not in current]
        changed = bool(added or removed)
        for url in removed:
            self._retire(current[url])
        for url, address in wanted.items():
            instance = current.get(url)
            if instance is not None and instance.weight != address.weight:
                instance.weight = address.weight
                changed = True
        for url in added:
            instance = self._revive(url)
            if instance is None:
                instance = self._new_instance(wanted[url])
            instance.weight = wanted[url].weight
            self.instances.append(instance)
        if changed:
            self._refresh()
        return added, removed

    def _revive(self, url: str) -> Instance | None:
        """An instance removed a moment ago and back: it keeps its pool and its state."""
        for instance in self.draining:
            if instance.url == url:
                self.draining.remove(instance)
                return instance
        return None

    def _new_instance(self, address: Address) -> Instance:
        make_parts = self.make_parts
        assert make_parts is not None, "a backend updated at run time needs make_parts"
        pool, breaker = make_parts(address)
        breaker.on_change = self._breaker_changed
        return Instance(
            self, address.url, address.host, address.port, address.weight, pool, breaker
        )

    def _retire(self, instance: Instance) -> None:
        # Its readmission timer (if ejected) is left to run: should the instance come back
        # before it has drained, it comes back with its state, ejection included.
        self.instances.remove(instance)
        instance.pool.sweep(float("inf"))  # the idle connections go now
        self.draining.append(instance)

    def sweep(self, now: float) -> None:
        """Close connections idle too long; finish draining removed instances (every second)."""
        for instance in self.instances:
            instance.pool.sweep(now)
        if self.draining:
            still: list[Instance] = []
            for instance in self.draining:
                pool = instance.pool
                pool.sweep(float("inf"))
                if instance.outstanding > 0:
                    still.append(instance)
                    continue
                if instance._readmit is not None:
                    instance._readmit.cancel()
                    instance._readmit = None
                pool.close()
                _log.info("instance_drained", backend=self.name, instance=instance.url)
            if len(still) != len(self.draining):
                self.draining = still
                for scope in self.scopes:
                    scope.follow()

    # --- picking ----------------------------------------------------------------------------

    def pick(self) -> Instance | None:
        """An instance whose breaker admits a request (its permit in `permit`), or None when
        every breaker refuses. Counts the request as outstanding on the instance."""
        chosen = self._choose()
        if chosen is None:
            return None
        permit = chosen.breaker.acquire()
        if permit == REJECTED:
            return self.pick_other(chosen)
        self.permit = permit
        chosen.outstanding += 1
        return chosen

    def pick_other(self, exclude: Instance | None) -> Instance | None:
        """Like `pick`, preferring any instance but `exclude` (a retry, or an open breaker);
        `exclude` itself only if it is the one that admits. A linear scan: this path is rare."""
        fallback: Instance | None = None
        for group in (self.available, self.instances):
            count = len(group)
            # Start after `exclude`, so successive retries walk the instances in turn instead
            # of bouncing between the first two broken ones.
            start = group.index(exclude) + 1 if exclude in group else self._next
            for offset in range(count):
                instance = group[(start + offset) % count]
                if instance is exclude:
                    fallback = instance
                    continue
                permit = instance.breaker.acquire()
                if permit != REJECTED:
                    self.permit = permit
                    instance.outstanding += 1
                    return instance
        if fallback is not None:
            permit = fallback.breaker.acquire()
            if permit != REJECTED:
                self.permit = permit
                fallback.outstanding += 1
                return fallback
        return None

    def deposit_retry_token(self) -> None:
        """One request arrived: it earns `retry_ratio` of a retry."""
        tokens = self._retry_tokens + self.retry_ratio
        self._retry_tokens = tokens if tokens < self._retry_cap else self._retry_cap

    def take_retry_token(self) -> bool:
        """Whether the budget allows one more retry now (and spend it if so)."""
        if self._retry_tokens >= 1.0:
            self._retry_tokens -= 1.0
            return True
        second = int(self.loop.time())
        if second != self._retry_second:
            self._retry_second = second
            self._retry_second_used = 0
        if self._retry_second_used < self.retry_min_per_second:
            self._retry_second_used += 1
            return True
        return False

    def _pick_rr(self) -> Instance | None:
        available = self.available
        count = len(available)
        if count == 1:
            chosen = available[0]
        elif count == 0:
            return None
        elif self._equal_weights:
            self._next = (self._next + 1) % count
            chosen = available[self._next]
        else:
            # Smooth WRR: every instance gains its weight, the richest is chosen and pays the
            # total. Over `total` picks each instance is chosen `weight` times, interleaved.
            chosen = available[0]
            best = -(1 << 62)
            for instance in available:
                instance._current += instance.weight
                if instance._current > best:
                    best = instance._current
                    chosen = instance
            chosen._current -= self._total_weight
        return chosen

    def _pick_least_outstanding(self) -> Instance | None:
        available = self.available
        count = len(available)
        if count == 0:
            return None
        # Start the scan one further each time, so equal loads are spread, not piled on one.
        start = self._next = (self._next + 1) % count
        chosen = available[start]
        best = chosen.outstanding / chosen.weight
        for offset in range(1, count):
            instance = available[(start + offset) % count]
            load = instance.outstanding / instance.weight
            if load < best:
                best = load
                chosen = instance
        return chosen

    # --- outcomes ---------------------------------------------------------------------------

    def succeeded(self, instance: Instance, permit: int) -> None:
        instance.outstanding -= 1
        instance.failures = 0
        instance.breaker.success(permit)

    def finished(self, instance: Instance, permit: int) -> None:
        """The exchange ended with no verdict on the instance (e.g. the client went away)."""
        instance.outstanding -= 1
        instance.breaker.release(permit)

    def failed(self, instance: Instance, permit: int, reason: str) -> None:
        instance.breaker.failure(permit)
        self.count_failure(instance, reason)

    def count_failure(self, instance: Instance, reason: str) -> None:
        """A failed exchange, apart from the breaker: its end, and the count that ejects."""
        instance.outstanding -= 1
        instance.failures += 1
        if instance.failures >= self.eject_after and not instance.ejected:
            instance.ejected = True
            _log.warning(
                "instance_ejected",
                backend=self.name,
                instance=instance.url,
                failures=instance.failures,
                reason=reason,
                seconds=self.eject_for,
            )
            instance._readmit = self.loop.call_later(self.eject_for, self._readmit, instance)
            self._refresh()

    def _breaker_changed(self, breaker: CircuitBreaker, old: str, new: str) -> None:
        log = _log.warning if new == "open" else _log.info
        log("breaker_" + new, backend=self.name, instance=breaker.name, previous=old)

    def _readmit(self, instance: Instance) -> None:
        instance._readmit = None
        instance.ejected = False
        instance.failures = 0
        _log.info("instance_readmitted", backend=self.name, instance=instance.url)
        self._refresh()

    def check_result(
        self, instance: Instance, ok: bool, *, healthy_after: int, unhealthy_after: int
    ) -> None:
        """Apply one active health check result, with hysteresis both ways."""
        if ok:
            instance.bad_checks = 0
            instance.good_checks += 1
            if not instance.healthy and instance.good_checks >= healthy_after:
                instance.healthy = True
                _log.info("instance_healthy", backend=self.name, instance=instance.url)
                self._refresh()
        else:
            instance.good_checks = 0
            instance.bad_checks += 1
            if instance.healthy and instance.bad_checks >= unhealthy_after:
                instance.healthy = False
                _log.warning("instance_unhealthy", backend=self.name, instance=instance.url)
                self._refresh()

    def _refresh(self) -> None:
        available = [instance for instance in self.instances if instance.available]
        panic = not available and bool(self.instances)
        if panic != self.panic:
            self.panic = panic
            log = _log.warning if panic else _log.info
            log("backend_panic" if panic else "backend_recovered", backend=self.name)
        self.available = available or list(self.instances)
        weights = {instance.weight for instance in self.available}
        self._equal_weights = len(weights) <= 1
        self._total_weight = sum(instance.weight for instance in self.available)
        for instance in self.instances:
            instance._current = 0
        if self.available:
            self._next %= len(self.available)
        else:
            self._next = 0
        for scope in self.scopes:
            scope.follow()

    def close(self) -> None:
        for instance in self.instances + self.draining:
            if instance._readmit is not None:
                instance._readmit.cancel()
                instance._readmit = None
            instance.pool.close()

    def snapshot(self) -> dict[str, object]:
        return {
            "balancing": self.policy,
            "source": self.source,
            "available": 0 if self.panic else len(self.available),
            "panic": self.panic,
            "instances": [instance.snapshot() for instance in self.instances],
            "draining": [instance.snapshot() for instance in self.draining],
            # Routes with a `breaker:` of their own: theirs, per instance (by URL).
            "route_breakers": {
                scope.label: {i.url: i.breaker.snapshot() for i in scope.instances}
                for scope in self.scopes
            },
        }
