"""The `server` section: where the gateway listens, its default timeouts and limits, and the
admin listener."""

from __future__ import annotations

from pydantic import Field

from mosaic_gateway.config.base import ByteSize, Duration, Spec


class TimeoutsSpec(Spec):
    """`server.timeouts`: defaults that backends and routes may override."""

    connect: Duration = Field(2.0, gt=0, description="Default upstream connect timeout.")
    request: Duration = Field(
        30.0, gt=0, description="Default time from forwarding a request to its response headers."
    )
    keep_alive: Duration = Field(60.0, gt=0, description="Idle client connections close after.")
    header: Duration = Field(10.0, gt=0, description="A request's head must arrive within.")
    shutdown_grace: Duration = Field(10.0, ge=0, description="In-flight requests finish within.")


class LimitsSpec(Spec):
    """`server.limits`: request sizes."""

    max_body_bytes: ByteSize = Field(
        1024 * 1024, description="Default request body limit; 0 = none."
    )
    max_header_bytes: ByteSize = Field(32 * 1024, gt=0, description="Request line + headers.")


class AdminSpec(Spec):
    """`server.admin`: the listener of /healthz, /readyz, /admin/* and /metrics."""

    listen: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class ServerSpec(Spec):
    """`server`: the public listener and its workers."""

    listen: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int | None = Field(None, ge=1, le=256, description="Processes; default CPU count.")
    trust_forwarded_headers: bool = Field(
        False,
        description="Append to a client's X-Forwarded-For (behind a trusted proxy) "
        "instead of replacing it.",
    )
    watch_interval: Duration = Field(
        1.0,
        ge=0.1,
        le=3600,
        description="How often the configuration file is checked for a change "
        "(serve without --no-watch).",
    )
    admin: AdminSpec | None = None
    timeouts: TimeoutsSpec = TimeoutsSpec()
    limits: LimitsSpec = LimitsSpec()
