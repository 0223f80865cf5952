"""What a worker serves from: the configuration compiled into router, backends and pools.

Built once per configuration. Nothing here is consulted by name on the request path: routes hold
their backend object, backends hold their instances, instances hold their pools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mosaic_gateway.balancer import Backend
from mosaic_gateway.breaker import CircuitBreaker
from mosaic_gateway.config import GatewayConfig, Retries
from mosaic_gateway.context import WorkerContext
from mosaic_gateway.health import HealthChecker
from mosaic_gateway.proxy import CompiledRoute, RetryPolicy
from mosaic_gateway.router import Router, RouteSpec, parse_template
from mosaic_gateway.upstream import Pool


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
            for instance in backend.instances:
                instance.pool.sweep(now)

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
        return out

    def backends_snapshot(self) -> dict[str, object]:
        return {name: backend.snapshot() for name, backend in self.backends.items()}


def build_runtime(config: GatewayConfig, context: WorkerContext) -> Runtime:
    loop = context.loop
    timeouts = config.server.timeouts
    backends: dict[str, Backend] = {}
    checkers: list[HealthChecker] = []
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
        breaker = spec.breaker
        for instance in spec.instances:
            pool = Pool(
                loop,
                instance.host,
                instance.port,
                max_connections=spec.pool.max_connections,
                idle_timeout=spec.pool.idle_timeout,
                connect_timeout=spec.connect_timeout or timeouts.connect,
            )
            backend.add_instance(
                instance.url,
                instance.host,
                instance.port,
                instance.weight,
                pool,
                CircuitBreaker(
                    failure_threshold=breaker.failure_threshold,
                    open_for=breaker.open_for,
                    max_open_for=max(breaker.max_open_for, breaker.open_for),
                    backoff=breaker.backoff,
                    half_open_probes=breaker.half_open_probes,
                    name=instance.url,
                ),
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
    default_limit = config.server.limits.max_body_bytes
    specs = []
    for route in config.routes:
        rewrite = route.rewrite
        compiled = CompiledRoute(
            template=route.path,
            backend=backends[route.backend],
            timeout=route.timeout or timeouts.request,
            max_body_bytes=default_limit if route.max_body_bytes is None else route.max_body_bytes,
            strip_prefix=(rewrite.strip_prefix or "").encode("ascii") if rewrite else b"",
            add_prefix=(rewrite.add_prefix or "").encode("ascii") if rewrite else b"",
            retry=_retry_policy(config.backends[route.backend].retries),
        )
        specs.append(RouteSpec(parse_template(route.path), route.methods, compiled))
    return Runtime(config, Router.compile(specs), backends, checkers)


def _retry_policy(spec: Retries) -> RetryPolicy | None:
    if spec.attempts == 0:
        return None
    return RetryPolicy(
        attempts=spec.attempts,
        on_connect_error="connect_error" in spec.on,
        statuses=frozenset(item for item in spec.on if isinstance(item, int)),
    )
