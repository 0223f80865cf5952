"""What a worker serves from: the configuration compiled into router, backends and pools.

Built once per configuration. Nothing here is consulted by name on the request path: routes hold
their backend object, backends hold their instances, instances hold their pools.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from mosaic_gateway.config import BackendSpec, GatewayConfig, RetriesSpec, RouteSpec
from mosaic_gateway.filters.cache_invalidation import build_caches
from mosaic_gateway.filters.context import WorkerContext
from mosaic_gateway.filters.pipeline import build_filters, preflight_of, route_settings
from mosaic_gateway.handlers.aggregate import compile_aggregate
from mosaic_gateway.handlers.docs import DocsService
from mosaic_gateway.handlers.forward import Forwarder, Forwarding
from mosaic_gateway.lifecycle.route_resilience import (
    circuit_breaker,
    route_backends,
    route_retries,
)
from mosaic_gateway.routing.chain import Chain, Terminal
from mosaic_gateway.routing.route import CompiledRoute
from mosaic_gateway.routing.router import RouteEntry, Router, parse_template
from mosaic_gateway.upstream.attempt import RetryPolicy
from mosaic_gateway.upstream.balancer import Address, Backend, InstanceParts
from mosaic_gateway.upstream.breaker import CircuitBreaker
from mosaic_gateway.upstream.connection import Pool
from mosaic_gateway.upstream.discovery import DiscoveryWatcher, DnsWatcher, NatsWatcher
from mosaic_gateway.upstream.health import HealthChecker


class Component(Protocol):
    """A part of a runtime with a life of its own (a revocation feed, a discovery watch...)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Runtime:
    config: GatewayConfig
    router: Router[CompiledRoute]
    backends: dict[str, Backend]
    health_checkers: list[HealthChecker] = field(default_factory=list)
    # Started in order after the health checkers, stopped in reverse order.
    components: list[Component] = field(default_factory=list)

    async def start(self) -> None:
        for checker in self.health_checkers:
            checker.start()
        for component in self.components:
            await component.start()

    async def close(self) -> None:
        for component in reversed(self.components):
            await component.stop()
        for checker in self.health_checkers:
            await checker.stop()
        for backend in self.backends.values():
            backend.close()

    def sweep(self, now: float) -> None:
        for backend in self.backends.values():
            backend.sweep(now)

    def routes_snapshot(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for route in self.config.routes:
            out.append(
                {
                    "path": route.path,
                    "methods": route.methods,
                    "backend": route.backend,
                    "rewrite": route.rewrite.model_dump(exclude_none=True)
                    if route.rewrite
                    else None,
                    "timeout": route.timeout or self.config.server.timeouts.request,
                }
            )
            if route.aggregate is not None:
                out[-1]["aggregate"] = route.aggregate.model_dump(exclude_none=True)
        return out

    def backends_snapshot(self) -> dict[str, object]:
        return {name: backend.snapshot() for name, backend in self.backends.items()}


def build_runtime(
    config: GatewayConfig,
    context: WorkerContext,
    forwarder: Forwarder,
    previous: Runtime | None = None,
) -> Runtime:
    timeouts = config.server.timeouts
    backends, checkers, watchers = build_backends(config, context, previous)
    default_limit = config.server.limits.max_body_bytes
    specs = []
    caches, cache_invalidation = build_caches(config, context)
    for route, cache in zip(config.routes, caches, strict=True):
        rewrite = route.rewrite
        backend_name = (  # an aggregate route points at its first call's backend
            route.aggregate.backends[0].backend if route.aggregate is not None else route.backend
        )
        assert backend_name is not None
        # The shared backends, or views of them with the route's own breakers.
        used = route_backends(config, route, backends)
        compiled = CompiledRoute(
            template=route.path,
            backend=used[backend_name],
            timeout=route.timeout or timeouts.request,
            max_body_bytes=default_limit if route.max_body_bytes is None else route.max_body_bytes,
            strip_prefix=(rewrite.strip_prefix or "").encode("ascii") if rewrite else b"",
            add_prefix=(rewrite.add_prefix or "").encode("ascii") if rewrite else b"",
            retry=_route_retry_policy(config, route, backend_name),
        )
        filters = build_filters(route_settings(route, config, context, _limit_name(route), cache))
        terminal: Terminal
        if route.aggregate is not None:
            compiled.retry = None
            terminal = compile_aggregate(
                route,
                used,
                partial(_route_retry_policy, config, route),
                compiled.timeout,
                forwarder,
            )
        else:
            terminal = Forwarding(forwarder, compiled)
        compiled.chain = Chain(context.loop, filters, terminal)
        compiled.preflight = preflight_of(filters)
        specs.append(RouteEntry(parse_template(route.path), route.methods, compiled))
    # The merged OpenAPI documents, answered by the gateway itself (handlers/docs.py)
    docs = None
    if config.docs is not None:
        docs = DocsService(config, config.docs, backends, context.loop)
        specs += docs.route_specs()
    return Runtime(
        config,
        Router.compile(specs),
        backends,
        checkers,
        [
            # Independent of each other: started side by side. Each NATS discovery round waits
            # its whole `timeout` for replies, so in sequence N backends cost N rounds (0.5 s
            # each by default) before the worker serves.
            Concurrently(
                [
                    *watchers,
                    _SecurityFeeds(context),
                    *([cache_invalidation] if cache_invalidation is not None else []),
                ]
            ),
            *([docs] if docs is not None else []),  # after discovery: it fetches from instances
        ],
    )


class Concurrently:
    """Components started together (all started, or the first failure raised and the others'
    starts cancelled); stopped one by one, in reverse."""

    def __init__(self, parts: list[Component]) -> None:
        self.parts = parts

    async def start(self) -> None:
        tasks = [asyncio.ensure_future(part.start()) for part in self.parts]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def stop(self) -> None:
        for part in reversed(self.parts):
            await part.stop()


def _limit_name(route: RouteSpec) -> str:
    # The same on every replica for the same route (shared rate-limit counters are keyed on it).
    return ",".join(route.methods) + " " + route.path


class _SecurityFeeds:
    """Starts the worker's verifiers' revocation feeds; the context stops them, not a reload."""

    def __init__(self, context: WorkerContext) -> None:
        self._context = context

    async def start(self) -> None:
        if self._context.security is not None:
            await self._context.security.start()

    async def stop(self) -> None:
        pass


def _route_retry_policy(
    config: GatewayConfig, route: RouteSpec, backend: str
) -> RetryPolicy | None:
    return _retry_policy(route_retries(config, route, backend))


def _retry_policy(spec: RetriesSpec) -> RetryPolicy | None:
    if spec.attempts == 0:
        return None
    return RetryPolicy(
        attempts=spec.attempts,
        on_connect_error="connect_error" in spec.on,
        statuses=frozenset(item for item in spec.on if isinstance(item, int)),
        per_try_timeout=spec.per_try_timeout,
    )


# --- backends, their instances (static or discovered) and health checks --------------------------


def build_backends(
    config: GatewayConfig, context: WorkerContext, previous: Runtime | None = None
) -> tuple[dict[str, Backend], list[HealthChecker], list[DiscoveryWatcher]]:
    """`previous`: the runtime a reload replaces. A discovered backend starts from the instances
    it had there, so a slow first discovery round cannot leave a reloaded route with none (the
    round then updates them, as any later one does)."""
    loop = context.loop
    connect_default = config.server.timeouts.connect
    backends: dict[str, Backend] = {}
    checkers: list[HealthChecker] = []
    watchers: list[DiscoveryWatcher] = []
    for name, spec in config.backends.items():
        backend = Backend(
            loop,
            name,
            policy=spec.balancing,
            eject_after=spec.ejection.consecutive_failures,
            eject_for=spec.ejection.duration,
            failure_statuses=spec.ejection.statuses,
            retry_ratio=spec.retries.budget,
            retry_min_per_second=spec.retries.min_per_second,
        )
        backend.make_parts = _instance_parts(loop, spec, connect_default)
        if spec.instances is not None:
            backend.update_instances(
                [Address(i.url, i.host, i.port, i.weight) for i in spec.instances]
            )
        discovery = spec.discovery
        known = previous.backends.get(name) if previous is not None else None
        if discovery is not None and known is not None:
            backend.update_instances(
                [Address(i.url, i.host, i.port, i.weight) for i in known.instances]
            )
        if discovery is not None and discovery.dns is not None:
            dns = discovery.dns
            watchers.append(
                DnsWatcher(
                    backend, name=dns.name, port=dns.port, interval=dns.interval, family=dns.family
                )
            )
        elif discovery is not None and discovery.nats is not None:
            found = discovery.nats
            watchers.append(
                NatsWatcher(
                    backend,
                    context.nats,
                    service=found.service,
                    interval=found.interval,
                    timeout=found.timeout,
                    missing_rounds=found.missing_rounds,
                )
            )
        backends[name] = backend
        check = spec.health_check
        if check is not None:
            checkers.append(
                HealthChecker(
                    backend,
                    path=check.path,
                    interval=check.interval,
                    timeout=check.timeout,
                    healthy_after=check.healthy_after,
                    unhealthy_after=check.unhealthy_after,
                )
            )
    return backends, checkers, watchers


def _instance_parts(
    loop: asyncio.AbstractEventLoop, spec: BackendSpec, connect_default: float
) -> InstanceParts:
    """How a backend makes the pool and breaker of each of its instances, now or later."""
    breaker = spec.breaker

    def make(address: Address) -> tuple[Pool, CircuitBreaker]:
        pool = Pool(
            loop,
            address.host,
            address.port,
            max_connections=spec.pool.max_connections,
            idle_timeout=spec.pool.idle_timeout,
            connect_timeout=spec.connect_timeout or connect_default,
        )
        return pool, circuit_breaker(breaker, address.url)

    return make
