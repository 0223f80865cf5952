"""What a worker holds across configurations: its event loop and its NATS connection.

A runtime (routes, backends, policies) is rebuilt when the configuration changes; the
connections it uses are not: they belong to the worker and are handed to each new runtime.
Features that talk to NATS (API keys, JWKS and revocations, discovery, cache invalidation,
shared rate limits) find the connection here, and fail at build time with a clear message
when the configuration uses them without a `nats:` section.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.js import JetStreamContext

from mosaic_gateway.config import GatewayConfig
from mosaic_kit.nats.connection import connect

if TYPE_CHECKING:
    from mosaic_gateway.filters.security import SecurityServices


class NatsRequiredError(RuntimeError):
    """A feature needs NATS and the configuration has no `nats:` section."""


@dataclass
class WorkerContext:
    loop: asyncio.AbstractEventLoop
    nc: Client | None = None
    _js: JetStreamContext | None = field(default=None, repr=False)
    # API key and token verifiers with their caches and revocation feeds (filters/security.py):
    # created by the first runtime whose routes need them, kept across reloads.
    security: SecurityServices | None = None

    @property
    def nats(self) -> Client:
        if self.nc is None:
            raise NatsRequiredError("this configuration needs a `nats:` section")
        return self.nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nats.jetstream()
        return self._js

    async def open(self, config: GatewayConfig) -> None:
        spec = config.nats
        if spec is not None and self.nc is None:
            self.nc = await connect(
                spec.url,
                "mosaic-gateway",
                connect_timeout=spec.connect_timeout,
                max_wait=spec.max_wait,
                credentials=spec.credentials(),
            )

    async def close(self) -> None:
        if self.security is not None:
            await self.security.stop()
            self.security = None
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()
        self.nc = None
        self._js = None
