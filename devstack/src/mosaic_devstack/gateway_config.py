"""The gateway configuration `mosaic up` writes: every public route of the auth and blog APIs.

One row of `ROUTES` per route of the public API (docs/api.md; a test holds the two together):
who may call it, which headers and query parameters reach the service (deny by default), how big
its body may be, whether its answers are cached. `gateway_config()` turns the rows into the
document `mosaic-gateway serve --config` reads; `render()` dumps it as YAML after the gateway's
own validation has accepted it, so a configuration the gateway would refuse never reaches disk.

How the gateway finds the instances (NATS discovery) is isolated in `backend_section()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The services these routes front; `mosaic up` runs the gateway only when both are in its list.
BACKENDS = ("auth", "blog")

PUBLIC = None
"""`roles` of a route anyone may call with an API key (no token)."""
SIGNED_IN: tuple[str, ...] = ()
"""`roles` of a route that needs a token but no particular role."""

# Body limits, per kind of route. A JSON body of the auth API is a few hundred bytes; a blog's
# draft text is up to 50,000 characters, which JSON may escape to six bytes each.
NO_BODY = "1KiB"  # not 0: 0 means "no limit" to the gateway
SMALL_JSON = "16KiB"
BLOG_JSON = "512KiB"

# Headers every route forwards. The gateway forwards its own (x-request-id, x-forwarded-*,
# traceparent, content-length...) regardless; `x-api-key` goes on because the services scope
# Idempotency-Key records by the caller, and the API key is the caller of a public route.
BASE_HEADERS = ("accept", "content-type", "x-api-key")

# Public reads are cached at the gateway and dropped by the events that change what they show:
# the blog's own (publish, update, unpublish, delete) at once. An author's new name reaches the
# blog's read model by an event the gateway sees too, possibly before the blog service has
# applied it, so such a change may show up to one TTL late; hence a short TTL.
PUBLIC_READ_CACHE: dict[str, Any] = {
    "ttl": "10s",
    "vary_headers": ["accept"],
    "invalidate_on": ["blog.blog.*", "auth.user.updated"],
}

# Sign-in is what a password-guessing client hammers: a budget per client address (per gateway
# worker), far above what a person or the end-to-end tests use; auth's own throttle (per account
# and per address, in its database) is what bounds the guesses.
CREDENTIALS_RATE_LIMIT: dict[str, Any] = {"requests": 120, "per": "1m", "by": "address"}
# Sign-up answers 409 auth.email_taken for a registered address (the API contract), which makes
# it an oracle of who has an account. One budget per client address for the whole cluster
# (every worker and gateway replica counts in NATS KV), small for enumeration, ample for people
# (a class signing up behind one NAT included).
SIGNUP_RATE_LIMIT: dict[str, Any] = {"requests": 30, "per": "10m", "by": "address", "shared": True}
SHARED_RATE_LIMITS: dict[str, Any] = {"store": "nats", "bucket": "gateway_rate_limits"}


@dataclass(frozen=True)
class Api:
    path: str
    methods: tuple[str, ...]
    backend: str
    roles: tuple[str, ...] | None = PUBLIC
    query: tuple[str, ...] = ()
    body: str = NO_BODY
    creates: bool = False
    """Accepts `Idempotency-Key`."""
    api_key: bool = True
    cached: bool = False
    rate_limit: Mapping[str, Any] | None = None
    client_headers: tuple[str, ...] = ()
    """Extra headers the service reads (auth records a session's user agent)."""


LIST = ("limit", "cursor")
AGENT = ("user-agent",)

ROUTES: tuple[Api, ...] = (
    # --- auth ----------------------------------------------------------------------------
    Api("/v1/auth/signup", ("POST",), "auth", body=SMALL_JSON, creates=True,
        rate_limit=SIGNUP_RATE_LIMIT, client_headers=AGENT),
    Api("/v1/auth/signin", ("POST",), "auth", body=SMALL_JSON, rate_limit=CREDENTIALS_RATE_LIMIT,
        client_headers=AGENT),
    Api("/v1/auth/refresh", ("POST",), "auth", body=SMALL_JSON, client_headers=AGENT),
    Api("/v1/auth/signout", ("POST",), "auth", roles=SIGNED_IN),
    # The signing keys are public: whoever verifies tokens needs them, API key or not.
    Api("/v1/auth/jwks.json", ("GET",), "auth", api_key=False),
    Api("/v1/users/me", ("GET", "PATCH"), "auth", roles=SIGNED_IN, body=SMALL_JSON),
    Api("/v1/users/me/password", ("PUT",), "auth", roles=SIGNED_IN, body=SMALL_JSON),
    Api("/v1/users", ("GET",), "auth", roles=("ADMIN",), query=("q", *LIST)),
    Api("/v1/users/{id}", ("GET",), "auth"),
    Api("/v1/users/{id}/roles", ("PUT",), "auth", roles=("ADMIN",), body=SMALL_JSON),
    Api("/v1/users/{id}/disable", ("POST",), "auth", roles=("ADMIN",)),
    Api("/v1/users/{id}/enable", ("POST",), "auth", roles=("ADMIN",)),
    Api("/v1/api-keys", ("POST",), "auth", roles=("ADMIN",), body=SMALL_JSON, creates=True),
    Api("/v1/api-keys", ("GET",), "auth", roles=("ADMIN",), query=LIST),
    Api("/v1/api-keys/{id}", ("DELETE",), "auth", roles=("ADMIN",)),
    # --- blog ----------------------------------------------------------------------------
    Api("/v1/blogs", ("GET",), "blog", query=("tag", *LIST), cached=True),
    Api("/v1/blogs/{id}", ("GET",), "blog", cached=True),
    Api("/v1/blogs/by-slug/{slug}", ("GET",), "blog", cached=True),
    Api("/v1/blogs/{id}/similar", ("GET",), "blog", cached=True),
    Api("/v1/author/blogs", ("POST",), "blog", roles=("AUTHOR",), body=BLOG_JSON, creates=True),
    Api("/v1/author/blogs", ("GET",), "blog", roles=("AUTHOR",), query=("state", *LIST)),
    Api("/v1/author/blogs/{id}", ("GET", "PATCH", "DELETE"), "blog", roles=("AUTHOR",),
        body=BLOG_JSON),
    Api("/v1/author/blogs/{id}/submit", ("POST",), "blog", roles=("AUTHOR",)),
    Api("/v1/author/blogs/{id}/withdraw", ("POST",), "blog", roles=("AUTHOR",)),
    Api("/v1/editor/blogs", ("GET",), "blog", roles=("EDITOR",), query=("state", *LIST)),
    Api("/v1/editor/blogs/{id}", ("GET",), "blog", roles=("EDITOR",)),
    Api("/v1/editor/blogs/{id}/publish", ("POST",), "blog", roles=("EDITOR",)),
    Api("/v1/editor/blogs/{id}/unpublish", ("POST",), "blog", roles=("EDITOR",)),
)  # fmt: skip


def route_section(api: Api) -> dict[str, Any]:
    route: dict[str, Any] = {"path": api.path, "methods": list(api.methods), "backend": api.backend}
    auth: dict[str, Any] = {}
    if not api.api_key:
        auth["api_key"] = "off"
    if api.roles is not None:
        auth["jwt"] = "required"
        if api.roles:
            auth["roles"] = list(api.roles)
    if auth:
        route["auth"] = auth
    headers = [*BASE_HEADERS, *api.client_headers]
    if api.roles is not None:
        headers.append("authorization")
    if api.creates:
        headers.append("idempotency-key")
    route["headers"] = {"allow": headers}
    route["query"] = {"allow": list(api.query)}
    route["max_body_bytes"] = api.body
    if api.rate_limit is not None:
        route["rate_limit"] = dict(api.rate_limit)
    if api.cached:
        route["cache"] = dict(PUBLIC_READ_CACHE)
    return route


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


def gateway_config(settings: GatewaySettings) -> dict[str, Any]:
    """The configuration document."""
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
            "limits": {"max_body_bytes": SMALL_JSON},
        },
        "nats": {"url": settings.nats_url},
        **({"security": {"jwt": jwt}} if jwt else {}),
        "rate_limits": dict(SHARED_RATE_LIMITS),
        "observability": observability_section(settings),
        # Both services' OpenAPI documents, merged into one at /docs (no API key needed).
        "docs": {"path": "/docs", "sources": dict.fromkeys(BACKENDS, "/openapi.json")},
        "defaults": {
            "auth": {"api_key": "required", "jwt": "off"},
            "headers": {"allow": list(BASE_HEADERS)},
            "query": {"allow": []},
        },
        "backends": {name: backend_section(name) for name in BACKENDS},
        "routes": [route_section(api) for api in ROUTES],
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


def render(config: Mapping[str, Any], file: str) -> str:
    """The document as YAML, once the gateway's own validation accepts it (else the issues)."""
    import yaml

    from mosaic_gateway.config import ConfigError, parse_config

    header = (
        "# The gateway in front of the auth and blog services, written by `mosaic up` at every\n"
        "# start: the running gateway reloads an edit, the next `mosaic up` overwrites it.\n"
        "# Schema: docs/gateway.md; what this file sets and why: docs/operations.md.\n"
    )

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
