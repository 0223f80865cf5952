"""A backend as one route sees it: the route's own circuit breaker per instance, all else shared.

A route that sets `breaker:` gets a `RouteBackend`: its failures open only its own circuits,
and the failures of the backend's other routes leave them alone. Everything else stays the
backend's: the instances and their pools, health checks, ejection (which counts every route's
failures, being a judgement on the instance), the balancing rotation and the retry budget.

To forwarding and aggregated fetches a `RouteBackend` is a `Backend`: they pick from it and
report outcomes to `instance.backend`, so the instances it hands out must lead back to it. Each
shared instance therefore has a stand-in per view (`ScopedInstance`): the same address and pool,
the route's breaker, and the instance's counts (requests in flight, failures, ejection, health)
read and written through to the shared instance. Only picking and the breaker differ: the
rotation is the backend's own, so routes with and without a breaker of their own share it.

The stand-ins follow the backend's instance list (the backend calls `follow` whenever it
changes): a discovered instance gets its route breakers at once; a removed one keeps them while
it drains, since it may come back with its state, and loses them once drained.
"""

from __future__ import annotations

from collections.abc import Callable

from mosaic_gateway.upstream.balancer import Backend, Instance
from mosaic_gateway.upstream.breaker import REJECTED, CircuitBreaker
from mosaic_kit.logging import get_logger

_log = get_logger("mosaic_gateway.upstream.route_scope")

# Makes the route's breaker for an instance (by its URL).
BreakerFactory = Callable[[str], CircuitBreaker]


class ScopedInstance(Instance):
    """A shared instance as one route sees it: the route's breaker, the instance's state."""

    __slots__ = ("shared",)

    def __init__(self, view: RouteBackend, shared: Instance, breaker: CircuitBreaker) -> None:
        # Instance.__init__ is not called: the state is `shared`'s (the properties below), only
        # what never changes for an instance is copied, for the request path's reads.
        self.shared = shared
        self.backend = view
        self.breaker = breaker
        self.url = shared.url
        self.host = shared.host
        self.port = shared.port
        self.pool = shared.pool

    @property
    def outstanding(self) -> int:
        return self.shared.outstanding

    @outstanding.setter
    def outstanding(self, value: int) -> None:
        self.shared.outstanding = value

    @property
    def failures(self) -> int:
        return self.shared.failures

    @failures.setter
    def failures(self, value: int) -> None:
        self.shared.failures = value

    @property
    def ejected(self) -> bool:
        return self.shared.ejected

    @ejected.setter
    def ejected(self, value: bool) -> None:
        self.shared.ejected = value

    @property
    def healthy(self) -> bool:
        return self.shared.healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self.shared.healthy = value

    @property
    def weight(self) -> int:
        return self.shared.weight

    @weight.setter
    def weight(self, value: int) -> None:
        self.shared.weight = value


class RouteBackend(Backend):
    """`shared` with the breakers of one route (`route`, `methods`); see the module docstring.

    Only the request path is the view's own (`pick`, `pick_other`, the outcomes, the retry
    budget's tokens); instance updates, health checks, sweeps and the admin view go to the
    shared backend, which lists its views in `scopes`."""

    def __init__(
        self, shared: Backend, route: str, methods: str, make_breaker: BreakerFactory
    ) -> None:
        # Backend.__init__ is not called: what it would set up (the rotation, the budget, the
        # instances' state) is `shared`'s; the view keeps only lists of its stand-ins.
        self.shared = shared
        self.route = route
        self.methods = methods
        self.label = f"{methods} {route}"
        self.loop = shared.loop
        self.name = shared.name
        self.policy = shared.policy
        self.failure_statuses = shared.failure_statuses
        self.source = shared.source
        self.permit = REJECTED
        self.panic = False
        self._next = 0
        self._make_breaker = make_breaker
        self._scoped: dict[Instance, ScopedInstance] = {}
        self.instances: list[Instance] = []
        self.available: list[Instance] = []
        self.draining: list[Instance] = []
        self._choose = self._choose_shared
        shared.scopes.append(self)
        self.follow()

    def follow(self) -> None:
        """Match the stand-ins to the shared backend's instances (called on every change)."""
        shared = self.shared
        known = self._scoped
        kept: dict[Instance, ScopedInstance] = {}
        for instance in (*shared.instances, *shared.draining):
            scoped = known.get(instance)
            if scoped is None:
                breaker = self._make_breaker(instance.url)
                breaker.on_change = self._breaker_changed
                scoped = ScopedInstance(self, instance, breaker)
            kept[instance] = scoped
        self._scoped = kept
        self.instances = [kept[instance] for instance in shared.instances]
        self.available = [kept[instance] for instance in shared.available]
        self.draining = [kept[instance] for instance in shared.draining]
        self.panic = shared.panic

    def _choose_shared(self) -> Instance | None:
        # The backend's own rotation, so that every route moves it along.
        chosen = self.shared._choose()
        return None if chosen is None else self._scoped[chosen]

    def failed(self, instance: Instance, permit: int, reason: str) -> None:
        instance.breaker.failure(permit)
        shared = instance.shared if isinstance(instance, ScopedInstance) else instance
        self.shared.count_failure(shared, reason)

    def deposit_retry_token(self) -> None:
        self.shared.deposit_retry_token()

    def take_retry_token(self) -> bool:
        return self.shared.take_retry_token()

    def _breaker_changed(self, breaker: CircuitBreaker, old: str, new: str) -> None:
        log = _log.warning if new == "open" else _log.info
        log(
            "breaker_" + new,
            backend=self.name,
            route=self.label,
            instance=breaker.name,
            previous=old,
        )
