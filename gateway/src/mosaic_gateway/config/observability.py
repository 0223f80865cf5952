"""The `observability` section: the access log, the metrics and tracing."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from mosaic_gateway.config.base import Spec

_DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class AccessLogSpec(Spec):
    """`observability.access_log`: one JSON line per request."""

    enabled: bool = Field(False, description="One JSON line per request.")
    path: str | None = Field(
        None, description="Append the lines to this file; default: standard error, with the logs."
    )


class MetricsSpec(Spec):
    """`observability.metrics`: Prometheus metrics on the admin listener."""

    enabled: bool = Field(
        True, description="Prometheus text at `/metrics` on the admin listener (needs `admin`)."
    )
    buckets: tuple[float, ...] = Field(
        _DEFAULT_BUCKETS, description="Upper bounds (seconds) of the request duration histogram."
    )
    max_clients: int = Field(
        100,
        ge=0,
        le=10_000,
        description="Client application ids a worker uses as the `client` label of "
        "`gateway_requests_total`; those seen after these many read `other`.",
    )

    @field_validator("buckets")
    @classmethod
    def _check_buckets(cls, buckets: tuple[float, ...]) -> tuple[float, ...]:
        if not buckets or len(buckets) > 30:
            raise ValueError("give 1 to 30 bucket bounds")
        if any(bound <= 0 for bound in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError("bucket bounds are positive and strictly increasing")
        return buckets


class TracingSpec(Spec):
    """`observability.tracing`: W3C trace context and OTLP/HTTP export of spans."""

    enabled: bool = Field(
        False,
        description="A span per request: the upstream gets the gateway's span as parent. Off: "
        "an incoming `traceparent` is forwarded unchanged.",
    )
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces recorded (a caller's decision wins)."
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP collector base URL; spans are exported only when set."
    )
    service_name: str = Field("mosaic-gateway", min_length=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("an OTLP/HTTP endpoint is an http:// or https:// URL")
        return endpoint

    @model_validator(mode="after")
    def _endpoint_needs_enabled(self) -> TracingSpec:
        if self.otlp_endpoint is not None and not self.enabled:
            raise ValueError("`otlp_endpoint` is set but tracing is not `enabled`")
        return self


class ObservabilitySpec(Spec):
    """`observability`: access log, metrics and tracing."""

    access_log: AccessLogSpec = AccessLogSpec()
    metrics: MetricsSpec = MetricsSpec()
    tracing: TracingSpec = TracingSpec()
