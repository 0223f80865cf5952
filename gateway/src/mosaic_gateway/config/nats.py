"""The `nats` section: the connection every NATS-backed feature shares."""

from __future__ import annotations

from pydantic import Field

from mosaic_gateway.config.base import Duration, Spec


class NatsSpec(Spec):
    """`nats`: needed by API keys, JWT, NATS discovery, cache invalidation, shared limits."""

    url: str = Field(
        description="NATS server(s), comma-separated: API key checks, JWKS, revocations, "
        "discovery, cache invalidation and shared rate limits go through it."
    )
    connect_timeout: Duration = Field(2.0, gt=0)
    max_wait: Duration = Field(
        30.0, gt=0, description="How long a starting worker retries its first connection."
    )
