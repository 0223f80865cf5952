"""The gateway configuration `mosaic up` writes, generated from the services' own OpenAPI.

Every operation a service exposes carries its gateway policy as `x-mosaic-gateway`
(`mosaic_kit.gateway_policy`, declared beside the route with
`mosaic_kit.fastapi.gateway.through_gateway`): who may call it, which headers and query parameters
reach the service (deny by default), how big its body may be, whether its answers are cached, its
rate limit. `gateway_config()` turns the services' documents into the document
`mosaic-gateway serve --config` reads, one route per path and policy; `render()` dumps it as YAML
after the gateway's own validation has accepted it, so a configuration the gateway would refuse
never reaches disk. What stays here is the gateway's own business: listeners, NATS, defaults, how
instances are found and treated, the shared rate-limit store, observability.

How the gateway finds the instances (NATS discovery) is isolated in `backend_section()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mosaic_kit.gateway_policy import JSON_BODY, GatewayPolicy, exposed_operations

IDENTITY = "auth"
"""The service the gateway verifies API keys and tokens with; no gateway without it."""

# Headers every route forwards. The gateway forwards its own (x-request-id, x-forwarded-*,
# traceparent, content-length...) regardless; `x-api-key` goes on because the services scope
# Idempotency-Key records by the caller, and the API key is the caller of a public route.
BASE_HEADERS = ("accept", "content-type", "x-api-key")

# The store of the limits that say `shared: true` (sign-up's, per client address for the whole
# cluster): every worker and gateway replica counts in one NATS KV bucket.
SHARED_RATE_LIMITS: dict[str, Any] = {"store": "nats", "bucket": "gateway_rate_limits"}


def route_section(
    path: str, methods: list[str], backend: str, policy: GatewayPolicy
) -> dict[str, Any]:
    """One route of the gateway's schema (docs/gateway.md) from an operation's policy."""
    route: dict[str, Any] = {"path": path, "methods": methods, "backend": backend}
    auth: dict[str, Any] = {}
    if policy.api_key == "off":
        auth["api_key"] = "off"
    if policy.jwt != "off":
        auth["jwt"] = policy.jwt
    if policy.roles:
        auth["roles"] = list(policy.roles)
    if policy.scopes is not None:
        auth["scopes"] = policy.scopes.model_dump(mode="json", exclude_none=True)
    if auth:
        route["auth"] = auth
    route["headers"] = {"allow": list(dict.fromkeys([*BASE_HEADERS, *policy.headers]))}
    route["query"] = {"allow": list(policy.query)}
    route["max_body_bytes"] = policy.max_body_bytes
    if policy.rate_limit is not None:
        route["rate_limit"] = dict(policy.rate_limit)
    if policy.cache is not None:
        route["cache"] = dict(policy.cache)
    return route


def routes_of(backend: str, document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The gateway routes of one service's OpenAPI document: the methods of a path that share a
    policy share a route, in the document's order."""
    # Policies hold mappings (cache, rate limit), so they are grouped by their JSON form.
    grouped: dict[tuple[str, str], tuple[GatewayPolicy, list[str]]] = {}
    for path, method, policy in exposed_operations(document):
        key = (path, policy.model_dump_json())
        grouped.setdefault(key, (policy, []))[1].append(method)
    return [
        route_section(path, methods, backend, policy)
        for (path, _), (policy, methods) in grouped.items()
    ]


def backend_section(name: str) -> dict[str, Any]:
    """How the gateway finds and treats the instances of one service.

    Found through NATS: every instance announces itself as a `nats.micro` service named after
    its service, with its HTTP URL in the metadata (`mosaic_kit.nats.rpc.discovery_metadata`), and
    the gateway asks `$SRV.INFO.<name>` every couple of seconds. So replicas started or
    restarted later are found without a new configuration. (A static list would be
    `{"instances": [url, ...]}` here.)
    """
    return {
        "discovery": {"nats": {"service": name}},
        "balancing": "least_outstanding",
        "health_check": {"path": "/readyz", "interval": "2s", "timeout": "1s"},
        **INSTANCE_FAILURES,
    }


# A replica that lost its database or NATS answers 503 (with Retry-After): counted against it,
# and an idempotent request is tried once more elsewhere. So is one a hung replica holds with no
# answer for 3 s, well before the 15 s request timeout (docs/operations.md).
INSTANCE_FAILURES: dict[str, Any] = {
    "ejection": {"statuses": [502, 503, 504]},
    "retries": {"attempts": 1, "on": ["connect_error", 503], "per_try_timeout": "3s"},
}


@dataclass(frozen=True)
class GatewaySettings:
    listen: str
    port: int
    admin_port: int
    workers: int
    nats_url: str
    shutdown_grace: float = 5.0
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    otlp_endpoint: str | None = None
    """Where spans go, as for the services (OTEL_EXPORTER_OTLP_ENDPOINT); none: no tracing."""
    nats_user: str | None = None
    nats_password_file: str | None = None
    """Where the gateway reads its NATS password; the password itself never enters the file."""
    nats_inbox_prefix: str | None = None


def nats_section(settings: GatewaySettings) -> dict[str, Any]:
    section: dict[str, Any] = {"url": settings.nats_url}
    if settings.nats_user is not None:
        section["user"] = settings.nats_user
    if settings.nats_password_file is not None:
        section["password_file"] = settings.nats_password_file
    if settings.nats_inbox_prefix is not None:
        section["inbox_prefix"] = settings.nats_inbox_prefix
    return section


def gateway_config(
    settings: GatewaySettings, documents: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The configuration document fronting every service of `documents` (service name -> its
    OpenAPI document) that exposes an operation."""
    routes = {name: routes_of(name, document) for name, document in documents.items()}
    backends = [name for name, found in routes.items() if found]
    jwt: dict[str, Any] = {}
    if settings.jwt_issuer:
        jwt["issuer"] = settings.jwt_issuer
    if settings.jwt_audience:
        jwt["audience"] = settings.jwt_audience
    return {
        "server": {
            "listen": settings.listen,
            "port": settings.port,
            "workers": settings.workers,
            "admin": {"listen": "127.0.0.1", "port": settings.admin_port},
            "timeouts": {"request": "15s", "shutdown_grace": settings.shutdown_grace},
            "limits": {"max_body_bytes": JSON_BODY},
        },
        "nats": nats_section(settings),
        **({"security": {"jwt": jwt}} if jwt else {}),
        "rate_limits": dict(SHARED_RATE_LIMITS),
        "observability": observability_section(settings),
        # The services' OpenAPI documents, merged into one at /docs (no API key needed).
        "docs": {"path": "/docs", "sources": dict.fromkeys(backends, "/openapi.json")},
        "defaults": {
            "auth": {"api_key": "required", "jwt": "off"},
            "headers": {"allow": list(BASE_HEADERS)},
            "query": {"allow": []},
        },
        "backends": {name: backend_section(name) for name in backends},
        "routes": [route for name in backends for route in routes[name]],
    }


def observability_section(settings: GatewaySettings) -> dict[str, Any]:
    """An access log line per request (into the gateway's log, beside the services' own) and
    Prometheus metrics on the admin port; spans when the services export theirs too."""
    tracing: dict[str, Any] = {"enabled": False}
    if settings.otlp_endpoint:
        tracing = {"enabled": True, "otlp_endpoint": settings.otlp_endpoint}
    return {
        "access_log": {"enabled": True},
        "metrics": {"enabled": True},
        "tracing": tracing,
    }


class GatewayConfigError(ValueError):
    pass


UP_HEADER = (
    "# The gateway in front of the services, written by `mosaic up` at every start from\n"
    "# their OpenAPI documents (x-mosaic-gateway): the running gateway reloads an edit, the\n"
    "# next `mosaic up` overwrites it.\n"
    "# Schema: docs/gateway.md; what this file sets and why: docs/operations.md.\n"
)


def render(config: Mapping[str, Any], file: str, header: str = UP_HEADER) -> str:
    """The document as YAML under `header` (which says who writes it), once the gateway's own
    validation accepts it (else the issues)."""
    import yaml

    from mosaic_gateway.config import ConfigError, parse_config

    class Dumper(yaml.SafeDumper):
        pass

    def short_lists(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
        # `methods: [GET, PATCH]` rather than one line per item: the file is read by people.
        flow = all(not isinstance(item, dict | list) for item in items)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)

    Dumper.add_representer(list, short_lists)
    body = yaml.dump(dict(config), Dumper=Dumper, sort_keys=False, width=100)
    text = header + body
    try:
        parse_config(text, file)
    except ConfigError as exc:
        raise GatewayConfigError(
            f"the generated gateway configuration is invalid:\n{exc}"
        ) from None
    return text
