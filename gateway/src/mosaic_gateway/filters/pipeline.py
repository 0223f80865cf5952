"""Which filters a route gets, in which order, compiled from its settings and the defaults.

`FILTERS` is the order of the request path; each entry makes its filter from the route's merged
settings, or None when the route does not use the feature. A new feature is one filter module,
its configuration section, and one entry here.

1. IP restriction (ip_restriction.py): a refused address costs nothing more.
2. CORS: preflights answered, response lines prepared (cors.py).
3. Rate limit `by: address` (rate_limit.py).
4. On a route open to client applications (`auth.scopes`): JWT, then roles or scopes (jwt.py),
   *before* the API key, since a verified client token stands in for the key (jwt.py says why).
5. API key (api_key.py).
6. Elsewhere: JWT, then roles (jwt.py).
7. Rate limit `by: api_key` / `by: user` / `by: client`.
8. What goes upstream: header allow-list and identity headers, or only the identity strip
   (upstream_headers.py); then the query allow-list.
9. Cache (cache.py): last, so that its key holds the request as it is forwarded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mosaic_gateway.config import (
    CorsSpec,
    GatewayConfig,
    RateLimitRuleSpec,
    RouteAuthSpec,
    RouteSpec,
    ScopesSpec,
)
from mosaic_gateway.filters.api_key import ApiKeyFilter
from mosaic_gateway.filters.cache import RouteCache
from mosaic_gateway.filters.context import WorkerContext
from mosaic_gateway.filters.cors import CorsFilter
from mosaic_gateway.filters.headers import (
    DEFAULT_CLAIM_HEADERS,
    IDENTITY_HEADERS,
    CorsPolicy,
    HeaderPolicy,
    QueryPolicy,
    identity_spellings,
)
from mosaic_gateway.filters.ip_restriction import IpRestrictionFilter
from mosaic_gateway.filters.jwt import JwtFilter
from mosaic_gateway.filters.rate_limit import RateLimitFilter
from mosaic_gateway.filters.ratelimit import LocalRateLimiter, RateLimit, SharedRateLimiter
from mosaic_gateway.filters.scopes import ScopeRule
from mosaic_gateway.filters.security import SecurityServices
from mosaic_gateway.filters.upstream_headers import HeaderFilter, IdentityStrip, QueryFilter
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.routing.chain import Filter

__all__ = [
    "FILTERS",
    "RouteSettings",
    "build_filters",
    "identity_header_names",
    "preflight_of",
    "route_settings",
]


@dataclass(frozen=True)
class RouteSettings:
    """A route's settings merged with the defaults: what the filters are made from."""

    route: RouteSpec
    config: GatewayConfig
    context: WorkerContext
    name: str  # the same on every replica (shared rate-limit counters are keyed on it)
    api_key: str  # "off" | "optional" | "required"
    jwt: str
    roles: frozenset[str]
    scopes: ScopeRule | None  # open to client applications
    header_allow: list[str]
    query_allow: list[str]
    cors: CorsSpec | None
    rate_limit: RateLimitRuleSpec | None
    cache: RouteCache | None

    @property
    def security(self) -> SecurityServices:
        context = self.context
        if context.security is None:
            context.security = SecurityServices(context, self.config.security)
        return context.security

    @property
    def checks_nothing(self) -> bool:
        """Nothing to check or filter: only the identity headers go (the fast path)."""
        return (
            self.api_key == "off"
            and self.jwt == "off"
            and self.scopes is None
            and "*" in self.header_allow
            and "*" in self.query_allow
            and self.cors is None
            and self.rate_limit is None
        )


def _ip_restriction(settings: RouteSettings) -> Filter | None:
    spec = settings.route.ip_restriction
    return None if spec is None else IpRestrictionFilter.from_spec(spec)


def _cors(settings: RouteSettings) -> Filter | None:
    spec = settings.cors
    if spec is None:
        return None
    return CorsFilter(
        CorsPolicy(
            origins=spec.origins,
            methods=spec.methods,
            headers=spec.headers,
            expose_headers=spec.expose_headers,
            max_age=None if spec.max_age is None else int(spec.max_age),
            credentials=spec.credentials,
        )
    )


def _rate_limit(settings: RouteSettings, *, by_address: bool) -> Filter | None:
    spec = settings.rate_limit
    if spec is None or (spec.by == "address") != by_address:
        return None
    limit = RateLimit(spec.requests, spec.per, spec.burst)
    if not spec.shared:
        return RateLimitFilter(spec.by, LocalRateLimiter(limit), None)
    stores = settings.config.rate_limits
    counter = settings.security.counter(stores)
    shared = SharedRateLimiter(counter, limit, name=settings.name, timeout=stores.timeout)
    return RateLimitFilter(spec.by, None, shared)


def _api_key(settings: RouteSettings) -> Filter | None:
    if settings.api_key == "off":
        return None
    return ApiKeyFilter(
        settings.security.api_keys,
        required=settings.api_key == "required",
        clients=settings.scopes is not None,
    )


def _jwt(settings: RouteSettings, *, for_clients: bool) -> Filter | None:
    """The JWT filter, at one of its two places: before the API key on a route open to client
    applications, after it elsewhere."""
    if (settings.scopes is not None) != for_clients:
        return None
    if settings.jwt == "off" and settings.scopes is None:
        return None
    # Asking for `tokens` makes the worker follow the revocation feed (SecurityServices.start),
    # which also carries auth.client.disabled / auth.client.token_revoked.
    return JwtFilter(
        settings.security.tokens,
        required=settings.jwt == "required",
        roles=settings.roles,
        scopes=settings.scopes,
        users=settings.jwt != "off",
    )


def _upstream_headers(settings: RouteSettings) -> Filter:
    identity = identity_header_names(settings.config)
    if settings.checks_nothing:
        return IdentityStrip(identity_spellings(identity))
    claims = settings.route.claims
    if claims is None:
        claims = settings.config.defaults.claims
    return HeaderFilter(
        HeaderPolicy(
            allow=settings.header_allow,
            strip=identity,
            forward_claims=DEFAULT_CLAIM_HEADERS if claims is None else claims,
        )
    )


def _query(settings: RouteSettings) -> Filter | None:
    if settings.checks_nothing or "*" in settings.query_allow:
        return None  # every parameter allowed: nothing to filter, no call per request
    return QueryFilter(QueryPolicy(settings.query_allow))


def _cache(settings: RouteSettings) -> Filter | None:
    return settings.cache


FILTERS: tuple[Callable[[RouteSettings], Filter | None], ...] = (
    _ip_restriction,
    _cors,
    lambda settings: _rate_limit(settings, by_address=True),
    lambda settings: _jwt(settings, for_clients=True),
    _api_key,
    lambda settings: _jwt(settings, for_clients=False),
    lambda settings: _rate_limit(settings, by_address=False),
    _upstream_headers,
    _query,
    _cache,
)


def build_filters(settings: RouteSettings) -> list[Filter]:
    return [made for make in FILTERS if (made := make(settings)) is not None]


def preflight_of(filters: list[Filter]) -> Callable[[Exchange], bool] | None:
    """What answers a CORS preflight to the route's path for a method it has no route for."""
    for made in filters:
        if isinstance(made, CorsFilter):
            return made.preflight
    return None


def route_settings(
    route: RouteSpec,
    config: GatewayConfig,
    context: WorkerContext,
    name: str,
    cache: RouteCache | None,
) -> RouteSettings:
    api_key, jwt, roles, scopes = _merged_auth(route, config)
    defaults = config.defaults
    # The services authorise with the token themselves: a route that checks one passes it on.
    implied = ("authorization",) if jwt != "off" else ()
    header_allow = _allow(
        route.headers.allow if route.headers else None,
        defaults.headers.allow if defaults.headers else None,
        implied,
    )
    query_allow = _allow(
        route.query.allow if route.query else None,
        defaults.query.allow if defaults.query else None,
    )
    # Deny by default: a route with no allow-list anywhere forwards only what the data path
    # needs (see headers.ALWAYS_FORWARDED) plus the credentials its own checks consume.
    return RouteSettings(
        route=route,
        config=config,
        context=context,
        name=name,
        api_key=api_key,
        jwt=jwt,
        roles=roles,
        scopes=None if scopes is None else ScopeRule(*scopes.rule),
        header_allow=list(implied) if header_allow is None else header_allow,
        query_allow=[] if query_allow is None else query_allow,
        cors=route.cors or defaults.cors,
        rate_limit=route.rate_limit or defaults.rate_limit,
        cache=cache,
    )


def identity_header_names(config: GatewayConfig) -> list[str]:
    """The headers the gateway sets from a credential anywhere in `config`: the defaults and
    every claim header of the defaults and of each route. Every route strips them all."""
    names = set(IDENTITY_HEADERS)
    for claims in (config.defaults.claims, *(route.claims for route in config.routes)):
        names.update((claims or {}).values())
    return sorted(names)


def _merged_auth(
    route: RouteSpec, config: GatewayConfig
) -> tuple[str, str, frozenset[str], ScopesSpec | None]:
    mine = route.auth or RouteAuthSpec()
    default = config.defaults.auth or RouteAuthSpec()
    api_key = mine.api_key or default.api_key or "off"
    jwt = mine.jwt or default.jwt or "off"
    roles = mine.roles if mine.roles is not None else (default.roles or [])
    scopes = mine.scopes if mine.scopes is not None else default.scopes
    if roles:
        jwt = "required"
    return api_key, jwt, frozenset(roles), scopes


def _allow(
    mine: list[str] | None, default: list[str] | None, extra: tuple[str, ...] = ()
) -> list[str] | None:
    """A route's allow-list is the defaults' plus its own; None when neither says anything."""
    if mine is None and default is None:
        return None
    return [*(default or ()), *(mine or ()), *extra]
