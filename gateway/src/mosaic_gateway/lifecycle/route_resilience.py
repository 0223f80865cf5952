"""A route's retries and circuit breakers: its backend's, with what the route overrides.

The merge itself is `config.overlay` (fields the route gives replace the backend's). Retries
only change the route's `RetryPolicy`; a route's `breaker:` (even `{}`) gives it breakers of its
own on every backend it calls, through a view of each (`upstream.route_scope.RouteBackend`).
An aggregate route's overrides apply to each of its calls, over that call's backend's settings.
"""

from __future__ import annotations

from mosaic_gateway.config import BreakerSpec, GatewayConfig, RetriesSpec, RouteSpec, overlay
from mosaic_gateway.upstream.balancer import Backend
from mosaic_gateway.upstream.breaker import CircuitBreaker
from mosaic_gateway.upstream.route_scope import BreakerFactory, RouteBackend


def circuit_breaker(spec: BreakerSpec, name: str) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=spec.failure_threshold,
        open_for=spec.open_for,
        # A route may raise `open_for` above the backend's cap (or the other way round): the cap
        # then is the open time itself rather than an error.
        max_open_for=max(spec.max_open_for, spec.open_for),
        backoff=spec.backoff,
        half_open_probes=spec.half_open_probes,
        name=name,
    )


def route_retries(config: GatewayConfig, route: RouteSpec, backend: str) -> RetriesSpec:
    """The retry settings of `route`'s requests to `backend`."""
    return overlay(config.backends[backend].retries, route.retries)


def route_backends(
    config: GatewayConfig, route: RouteSpec, backends: dict[str, Backend]
) -> dict[str, Backend]:
    """The backends as `route` uses them: the shared ones, or views with the route's breakers."""
    if route.breaker is None:
        return backends
    names = (
        [call.backend for call in route.aggregate.backends]
        if route.aggregate is not None
        else [route.backend]
    )
    scoped = dict(backends)
    for name in dict.fromkeys(names):
        if name is None:
            continue
        spec = overlay(config.backends[name].breaker, route.breaker)
        scoped[name] = RouteBackend(
            backends[name], route.path, ",".join(route.methods), _factory(spec)
        )
    return scoped


def _factory(spec: BreakerSpec) -> BreakerFactory:
    return lambda url: circuit_breaker(spec, url)
