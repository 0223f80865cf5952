"""The whole configuration file: `GatewayConfig`, the root that holds every section."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from mosaic_gateway.config.backends import BackendSpec, check_backend_name
from mosaic_gateway.config.base import Spec
from mosaic_gateway.config.cache import CacheBoundsSpec
from mosaic_gateway.config.docs import DocsSpec
from mosaic_gateway.config.nats import NatsSpec
from mosaic_gateway.config.observability import ObservabilitySpec
from mosaic_gateway.config.routes import RouteDefaultsSpec, RouteSpec
from mosaic_gateway.config.security import RateLimitsSpec, SecuritySpec
from mosaic_gateway.config.server import ServerSpec


class GatewayConfig(Spec):
    """The gateway's configuration file (docs/gateway.md): its backends, the routes to them, and
    how it serves them."""

    server: ServerSpec = ServerSpec()
    nats: NatsSpec | None = Field(None, description="Needed by every NATS-backed feature.")
    security: SecuritySpec = SecuritySpec()
    rate_limits: RateLimitsSpec = RateLimitsSpec()
    defaults: RouteDefaultsSpec = RouteDefaultsSpec()
    cache: CacheBoundsSpec = CacheBoundsSpec()
    observability: ObservabilitySpec = ObservabilitySpec()
    docs: DocsSpec | None = None
    backends: dict[str, BackendSpec]
    routes: list[RouteSpec]

    @field_validator("backends")
    @classmethod
    def _check_backend_names(cls, backends: dict[str, BackendSpec]) -> dict[str, BackendSpec]:
        for name in backends:
            check_backend_name(name)
        return backends

    def worker_count(self) -> int:
        if self.server.workers is not None:
            return self.server.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
