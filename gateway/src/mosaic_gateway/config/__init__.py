"""The gateway's declarative configuration: one YAML file, validated before anything serves.

A module per section holds its schema (`*Spec` models, strict: a misspelt field is an error) and
the checks across fields it needs (`check_*`, run by the loader once the file is structurally
valid): server.py, nats.py, backends.py, routes.py, security.py, cache.py, aggregate.py,
observability.py, docs.py; document.py is the root, loader.py reads a file and reports every
problem at once as `file:line:column: field: message`, schema.py is the JSON Schema for editors.
This module is the package's public surface.
"""

from __future__ import annotations

from mosaic_gateway.config.aggregate import (
    AggregateCallSpec,
    AggregateSpec,
    Placeholder,
    parse_call_path,
)
from mosaic_gateway.config.backends import (
    BackendSpec,
    BreakerSpec,
    DiscoverySpec,
    DnsDiscoverySpec,
    EjectionSpec,
    HealthCheckSpec,
    InstanceSpec,
    NatsDiscoverySpec,
    PoolSpec,
    RetriesSpec,
    RouteRetriesSpec,
    overlay,
)
from mosaic_gateway.config.base import ByteSize, Duration, Spec
from mosaic_gateway.config.cache import CACHEABLE_STATUSES, CacheBoundsSpec, RouteCacheSpec
from mosaic_gateway.config.docs import DocsSpec
from mosaic_gateway.config.document import GatewayConfig
from mosaic_gateway.config.loader import ConfigError, ConfigIssue, load_config, parse_config
from mosaic_gateway.config.nats import NatsSpec
from mosaic_gateway.config.observability import (
    AccessLogSpec,
    MetricsSpec,
    ObservabilitySpec,
    TracingSpec,
)
from mosaic_gateway.config.routes import (
    AllowListSpec,
    Claims,
    CorsSpec,
    HeaderAllowListSpec,
    RateLimitRuleSpec,
    RewriteSpec,
    RouteAuthSpec,
    RouteDefaultsSpec,
    RouteSpec,
    ScopesSpec,
    Switch,
)
from mosaic_gateway.config.schema import json_schema, render_json_schema
from mosaic_gateway.config.security import ApiKeysSpec, JwtSpec, RateLimitsSpec, SecuritySpec
from mosaic_gateway.config.server import AdminSpec, LimitsSpec, ServerSpec, TimeoutsSpec

__all__ = [
    "CACHEABLE_STATUSES",
    "AccessLogSpec",
    "AdminSpec",
    "AggregateCallSpec",
    "AggregateSpec",
    "AllowListSpec",
    "ApiKeysSpec",
    "BackendSpec",
    "BreakerSpec",
    "ByteSize",
    "CacheBoundsSpec",
    "Claims",
    "ConfigError",
    "ConfigIssue",
    "CorsSpec",
    "DiscoverySpec",
    "DnsDiscoverySpec",
    "DocsSpec",
    "Duration",
    "EjectionSpec",
    "GatewayConfig",
    "HeaderAllowListSpec",
    "HealthCheckSpec",
    "InstanceSpec",
    "JwtSpec",
    "LimitsSpec",
    "MetricsSpec",
    "NatsDiscoverySpec",
    "NatsSpec",
    "ObservabilitySpec",
    "Placeholder",
    "PoolSpec",
    "RateLimitRuleSpec",
    "RateLimitsSpec",
    "RetriesSpec",
    "RewriteSpec",
    "RouteAuthSpec",
    "RouteCacheSpec",
    "RouteDefaultsSpec",
    "RouteRetriesSpec",
    "RouteSpec",
    "ScopesSpec",
    "SecuritySpec",
    "ServerSpec",
    "Spec",
    "Switch",
    "TimeoutsSpec",
    "TracingSpec",
    "json_schema",
    "load_config",
    "overlay",
    "parse_call_path",
    "parse_config",
    "render_json_schema",
]
