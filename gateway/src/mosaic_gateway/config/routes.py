"""The `routes` section and the `defaults` routes inherit: matching (path, methods), where a
request goes (backend, rewrite), and what it must carry (auth, allow-lists, claims, CORS, rate
limit). A route's `cache` and `aggregate` have their own modules."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from mosaic_gateway.config.aggregate import AggregateSpec
from mosaic_gateway.config.backends import BreakerSpec, RouteRetriesSpec, known_backends
from mosaic_gateway.config.base import HEADER_NAME, ByteSize, Duration, Problem, Spec
from mosaic_gateway.config.cache import RouteCacheSpec
from mosaic_gateway.config.ip_restriction import IpRestrictionSpec
from mosaic_gateway.routing.router import (
    RouteConflictError,
    RouteEntry,
    Router,
    TemplateError,
    parse_template,
)

if TYPE_CHECKING:
    from mosaic_gateway.config.document import GatewayConfig

_METHOD = re.compile(r"[A-Z]+")
_PREFIX = re.compile(r"(/[A-Za-z0-9\-._~!$&'()+,;=:@%]+)+")


class RewriteSpec(Spec):
    """`rewrite`: how the path is changed on its way upstream."""

    strip_prefix: str | None = Field(None, description="Removed from the start of the path.")
    add_prefix: str | None = Field(None, description="Put in front of the (stripped) path.")

    @field_validator("strip_prefix", "add_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str | None) -> str | None:
        if prefix is not None and not _PREFIX.fullmatch(prefix):
            raise ValueError("a prefix is '/segment[/segment...]' with no trailing '/'")
        return prefix


Switch = Literal["required", "optional", "off"]
_ROLE = re.compile(r"[A-Z][A-Z0-9_]*")
SCOPE = re.compile(r"[a-z]+:[a-z]+")


class ScopesSpec(Spec):
    """`auth.scopes`: the route is open to client applications (OAuth2 client credentials) whose
    token grants these scopes: any one of `any_of`, or every one of `all_of` (exactly one given)."""

    any_of: list[str] | None = Field(None, description="Any one of these scopes admits.")
    all_of: list[str] | None = Field(None, description="Every one of these scopes is needed.")

    @field_validator("any_of", "all_of")
    @classmethod
    def _check_scopes(cls, scopes: list[str] | None) -> list[str] | None:
        if scopes is None:
            return None
        if not scopes:
            raise ValueError("list at least one scope")
        for scope in scopes:
            if not SCOPE.fullmatch(scope):
                raise ValueError(
                    f"{scope!r} is not a scope name (resource:action, e.g. blogs:read)"
                )
        if len(set(scopes)) != len(scopes):
            raise ValueError("a scope is listed twice")
        return scopes

    @model_validator(mode="after")
    def _exactly_one(self) -> ScopesSpec:
        if (self.any_of is None) == (self.all_of is None):
            raise ValueError("give exactly one of `any_of` or `all_of`")
        return self

    @property
    def rule(self) -> tuple[Literal["any_of", "all_of"], tuple[str, ...]]:
        """("any_of" | "all_of", the scopes)."""
        if self.any_of is not None:
            return "any_of", tuple(self.any_of)
        assert self.all_of is not None
        return "all_of", tuple(self.all_of)


class RouteAuthSpec(Spec):
    """Who may call a route. Unset fields come from `defaults.auth`, then `off`."""

    api_key: Switch | None = Field(
        None, description="`x-api-key`, verified over NATS `auth.apikeys.verify` (cached)."
    )
    jwt: Switch | None = Field(
        None, description="`Authorization: Bearer`, verified locally from auth's JWKS."
    )
    roles: list[str] | None = Field(
        None, description="Any one of these roles admits (implies `jwt: required`)."
    )
    scopes: ScopesSpec | None = Field(
        None,
        description="Open to client applications: a client token granting these scopes is "
        "accepted in place of `x-api-key` (and of a user token).",
    )

    @field_validator("roles")
    @classmethod
    def _check_roles(cls, roles: list[str] | None) -> list[str] | None:
        for role in roles or ():
            if not _ROLE.fullmatch(role):
                raise ValueError(f"{role!r} is not a role name (upper-case, e.g. AUTHOR)")
        return roles


class AllowListSpec(Spec):
    """`query`: the query parameters forwarded upstream."""

    allow: list[str] = Field(
        default_factory=list, description="Names forwarded; `*` forwards all (deny by default)."
    )


class HeaderAllowListSpec(AllowListSpec):
    """`headers`: the request headers forwarded upstream."""

    @field_validator("allow")
    @classmethod
    def _check_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name != "*" and not HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name")
        return [name.lower() for name in names]


class CorsSpec(Spec):
    """`cors`: which browser origins may call the route; preflights are answered here."""

    origins: list[str] = Field(description="Exact origins (`https://app.example`) or `*`.")
    methods: list[str] = Field(["GET", "HEAD", "POST"], description="Allowed methods, or `*`.")
    headers: list[str] = Field(default_factory=list, description="Allowed request headers, or `*`.")
    expose_headers: list[str] = Field(default_factory=list)
    max_age: Duration | None = Field(600.0, ge=0, description="Preflight cache time.")
    credentials: bool = False


class RateLimitRuleSpec(Spec):
    """`rate_limit`: requests allowed per interval, to whom."""

    requests: int = Field(ge=1, description="Requests allowed per `per`.")
    per: Duration = Field(gt=0)
    by: Literal["api_key", "user", "client", "address"] = Field(
        "address",
        description="Whose budget: the API key's id, the token's user, the client application "
        "(its id; without a client token, the API key's id) or the client address (a request "
        "without that identity falls back to its address).",
    )
    burst: int | None = Field(None, ge=1, description="Local limits only: requests at once.")
    shared: bool = Field(
        False, description="Count across workers and replicas in `rate_limits.store`."
    )


Claims = dict[str, str]


class RouteDefaultsSpec(Spec):
    """Per-route settings that routes inherit unless they set their own."""

    auth: RouteAuthSpec | None = None
    headers: HeaderAllowListSpec | None = None
    query: AllowListSpec | None = None
    claims: Claims | None = None
    cors: CorsSpec | None = None
    rate_limit: RateLimitRuleSpec | None = None


class RouteSpec(Spec):
    """`routes[]`: requests matched by path and method, and where they go."""

    path: str
    methods: list[str]
    backend: str | None = None  # required unless `aggregate` is given
    aggregate: AggregateSpec | None = None
    rewrite: RewriteSpec | None = None
    timeout: Duration | None = Field(None, gt=0, description="Overrides timeouts.request.")
    retries: RouteRetriesSpec | None = Field(
        None, description="Fields given override the backend's `retries` (not its budget)."
    )
    breaker: BreakerSpec | None = Field(
        None,
        description="Fields given override the backend's `breaker`; the route then has a "
        "breaker of its own per instance.",
    )
    max_body_bytes: ByteSize | None = Field(None, description="Overrides limits.max_body_bytes.")
    auth: RouteAuthSpec | None = None
    headers: HeaderAllowListSpec | None = None
    query: AllowListSpec | None = None
    claims: Claims | None = Field(
        None, description="Claims forwarded as headers, e.g. {sub: x-user-id}."
    )
    cors: CorsSpec | None = None
    rate_limit: RateLimitRuleSpec | None = None
    cache: RouteCacheSpec | None = None
    ip_restriction: IpRestrictionSpec | None = None

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        try:
            parse_template(path)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        return path

    @field_validator("methods", mode="before")
    @classmethod
    def _normalise_methods(cls, methods: Any) -> Any:
        if isinstance(methods, list):
            return [m.upper() if isinstance(m, str) else m for m in methods]
        return methods

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("list at least one method")
        for method in methods:
            if not _METHOD.fullmatch(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        if len(set(methods)) != len(methods):
            raise ValueError("a method is listed twice")
        return methods


def route_entries(config: GatewayConfig) -> list[RouteEntry[int]]:
    """The routes as the router sees them, each targeting its index in `routes`."""
    return [
        RouteEntry(parse_template(route.path), route.methods, index)
        for index, route in enumerate(config.routes)
    ]


def check_routes(config: GatewayConfig) -> list[Problem]:
    """Each route names a known backend (unless it aggregates), strips a prefix its path has,
    and matches requests no earlier route matches."""
    problems: list[Problem] = []
    for index, route in enumerate(config.routes):
        if route.aggregate is None and route.backend is None:
            problems.append((("routes", index, "backend"), "Field required"))
        elif route.aggregate is None and route.backend not in config.backends:
            problems.append(
                (
                    ("routes", index, "backend"),
                    f"unknown backend {route.backend!r} (known: {known_backends(config)})",
                )
            )
        strip = route.rewrite.strip_prefix if route.rewrite else None
        if strip is not None:
            literal = parse_template(route.path).literal_prefix()
            if not (literal == strip or literal.startswith(strip + "/")):
                problems.append(
                    (
                        ("routes", index, "rewrite", "strip_prefix"),
                        f"{strip!r} is not a leading run of literal segments of {route.path!r}",
                    )
                )
    try:
        Router.compile(route_entries(config))
    except RouteConflictError as exc:
        problems.append((("routes", exc.index, "path"), str(exc)))
    return problems


def check_route_resilience(config: GatewayConfig) -> list[Problem]:
    """A route's own `per_try_timeout` must be able to cut a try before the route gives up.

    Only one the route gives: a backend's serves routes of different timeouts, and is simply
    not used where it is not shorter."""
    problems: list[Problem] = []
    for index, route in enumerate(config.routes):
        retries = route.retries
        if retries is None or retries.per_try_timeout is None:
            continue
        timeout = route.timeout or config.server.timeouts.request
        bound = "timeout"
        if route.aggregate is not None and route.aggregate.timeout is not None:
            timeout, bound = route.aggregate.timeout, "aggregate.timeout"
        if retries.per_try_timeout >= timeout:
            problems.append(
                (
                    ("routes", index, "retries", "per_try_timeout"),
                    f"{retries.per_try_timeout:g}s is not below the route's {bound} "
                    f"({timeout:g}s): no try would ever be cut short",
                )
            )
    return problems
