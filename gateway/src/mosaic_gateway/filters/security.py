"""Admission per route: CORS, API key, JWT and roles, rate limits, header and query allow-lists.

A route's settings (its own, else `defaults`) compile once per configuration into a
`RoutePolicy`, whose `admit(exchange)` the proxy calls for every request of the route. When every
answer is in memory (the usual case: a known API key, a token verified before, a local rate
limit) admission is synchronous: a few dict lookups, then the request goes on in the same call.
Only an answer that needs I/O (auth asked about a new API key, a token's first signature check,
a shared rate-limit count) makes `admit` return an awaitable, and the proxy continues when it
resolves.

Order, each step able to answer the request itself:

1. CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`): answered 204 or
   403 from the route's `cors` settings; never forwarded.
2. Rate limit `by: address` (cheap, and before any work is spent on a flood).
3. API key (`x-api-key`): 401 when required and missing, 403 when auth refuses it, 503 when auth
   cannot answer. Cached answers are dropped by `auth.apikey.revoked` events (apikeys.py).
4. JWT (`Authorization: Bearer`), verified locally from auth's JWKS with the kit's
   `TokenVerifier` and the revocation feed (`auth.session.revoked`, role removals, disabled
   users): 401 with the reason; then roles (any of), 403.
5. Rate limits `by: api_key` / `by: user` (a request without that identity counts against its
   address).
6. What goes upstream: the client's headers filtered by the allow-list, the query string
   filtered, and the caller's chosen claims added as headers. CORS response headers for the
   client are prepared too.

Identity headers (`x-user-id`, `x-user-roles` and every header a claim is forwarded as on *any*
route of the configuration, in any spelling) are taken out of every request here, whatever the
route: a route with nothing else to check gets an `IdentityStrip` admission that does only that.
Admission runs before anything builds an upstream request (proxy, aggregation, cache fill), so
no client can claim an identity through a route without auth, nor through a route whose backend
trusts a header another route sets.

The verifiers are per worker (`SecurityServices`, on the `WorkerContext`) and outlive
configuration reloads: caches and revocation state are not rebuilt when routes change.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from mosaic_gateway.config import (
    CorsSpec,
    GatewayConfig,
    RateLimitRuleSpec,
    RateLimitsSpec,
    RouteAuthSpec,
    RouteSpec,
    SecuritySpec,
)
from mosaic_gateway.filters.apikeys import (
    ApiKeyError,
    ApiKeyIdentity,
    ApiKeyMissing,
    ApiKeyVerifier,
)
from mosaic_gateway.filters.headers import (
    CORS_FORBIDDEN,
    DEFAULT_CLAIM_HEADERS,
    IDENTITY_HEADERS,
    CorsPolicy,
    HeaderPolicy,
    QueryPolicy,
    identity_spellings,
    render_lines,
    strip_identity,
)
from mosaic_gateway.filters.ratelimit import (
    RATE_LIMITED,
    LocalRateLimiter,
    NatsKvWindowCounter,
    RateLimit,
    RedisWindowCounter,
    SharedRateLimiter,
    WindowCounter,
    retry_after_header,
)
from mosaic_gateway.http.problems import GatewayProblem
from mosaic_kit.jwks import JwksCache
from mosaic_kit.logging import get_logger
from mosaic_kit.nats.keys import NatsKeySource
from mosaic_kit.nats.revocation import RevocationFeed, follow_revocations
from mosaic_kit.problem import Problem
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.tokens import Principal, TokenVerifier

if TYPE_CHECKING:
    from mosaic_gateway.filters.context import WorkerContext
    from mosaic_gateway.http.server import Exchange

__all__ = ["IdentityStrip", "RoutePolicy", "SecurityServices", "build_policy"]

_log = get_logger("mosaic_gateway.filters.security")

_BEARER = b"bearer "
_CHALLENGE = ((b"www-authenticate", b"Bearer"),)
_RENDERED_MAX = 10_000

ROLE_MISSING_CODE = "auth.forbidden"
TOKEN_MISSING = GatewayProblem(401, "auth.token_missing", "A bearer token is required")
TOKEN_MALFORMED = GatewayProblem(
    401, "auth.token_invalid", "The Authorization header is not a bearer token"
)


class SecurityServices:
    """A worker's API key verifier and token verifier, created on first use by a route."""

    def __init__(self, context: WorkerContext, settings: SecuritySpec) -> None:
        self._context = context
        self._settings = settings
        self._api_keys: ApiKeyVerifier | None = None
        self._tokens: TokenVerifier | None = None
        self._jwks: JwksCache | None = None
        self._feed: RevocationFeed | None = None
        self._started_keys = False
        self._started_tokens = False
        self.counters: dict[str, WindowCounter] = {}

    @property
    def api_keys(self) -> ApiKeyVerifier:
        if self._api_keys is None:
            spec = self._settings.api_keys
            self._api_keys = ApiKeyVerifier(
                self._context.nats,
                ttl=spec.ttl,
                negative_ttl=spec.negative_ttl,
                max_entries=spec.max_entries,
                timeout=spec.timeout,
            )
        return self._api_keys

    @property
    def tokens(self) -> TokenVerifier:
        if self._tokens is None:
            spec = self._settings.jwt
            self._jwks = JwksCache(NatsKeySource(self._context.nats, timeout=2.0))
            self._tokens = TokenVerifier(
                self._jwks,
                revocations=RevocationSet(max_token_ttl=timedelta(seconds=spec.max_token_ttl)),
                issuer=spec.issuer,
                audience=spec.audience,
                leeway=spec.leeway,
                cache_size=spec.cache_size,
            )
        return self._tokens

    def counter(self, spec: RateLimitsSpec) -> WindowCounter:
        """The shared-limit store (one per worker)."""
        name = spec.store or ""
        found = self.counters.get(name)
        if found is None:
            if spec.store == "redis":
                assert spec.redis_url is not None  # checked with the configuration
                found = RedisWindowCounter.from_url(spec.redis_url, timeout=spec.timeout)
            else:
                found = NatsKvWindowCounter(self._context.js, bucket=spec.bucket)
            self.counters[name] = found
        return found

    async def start(self) -> None:
        """Follow the revocation feeds of whatever verifier routes use (idempotent)."""
        if self._api_keys is not None and not self._started_keys:
            self._started_keys = True
            await self._api_keys.start(self._context.js)
        if self._tokens is not None and not self._started_tokens:
            self._started_tokens = True
            assert self._jwks is not None
            try:
                await self._jwks.refresh()
            except Exception as exc:  # auth may start later; keys are fetched on first use
                _log.warning("jwks_not_loaded_at_start", error=type(exc).__name__)
            self._feed = await follow_revocations(
                self._context.js,
                self._tokens.revocations,
                since=timedelta(seconds=self._settings.jwt.max_token_ttl),
            )

    async def stop(self) -> None:
        if self._api_keys is not None:
            await self._api_keys.stop()
        if self._feed is not None:
            await self._feed.stop()
        if self._jwks is not None:
            await self._jwks.aclose()
        for counter in self.counters.values():
            await counter.close()
        self.counters.clear()


@dataclass(frozen=True, slots=True)
class _Limiter:
    by: str  # "address" | "api_key" | "user"
    local: LocalRateLimiter | None
    shared: SharedRateLimiter | None


class _Refused(Exception):  # noqa: N818 - control flow: the request was answered
    pass


class RoutePolicy:
    """One route's admission; see the module docstring for the order of the checks."""

    __slots__ = (
        "_claims_rendered",
        "_forbidden",
        "api_key",
        "cors",
        "headers",
        "jwt",
        "keys",
        "limiter",
        "query",
        "roles",
        "tokens",
    )

    def __init__(
        self,
        *,
        api_key: str,
        jwt: str,
        roles: frozenset[str],
        headers: HeaderPolicy | None,
        query: QueryPolicy | None,
        cors: CorsPolicy | None,
        limiter: _Limiter | None,
        keys: ApiKeyVerifier | None,
        tokens: TokenVerifier | None,
    ) -> None:
        self.api_key = api_key
        self.jwt = jwt
        self.roles = roles
        self.headers = headers
        self.query = query
        self.cors = cors
        self.limiter = limiter
        self.keys = keys
        self.tokens = tokens
        self._forbidden = GatewayProblem(
            403, ROLE_MISSING_CODE, "This requires one of the roles: " + ", ".join(sorted(roles))
        )
        self._claims_rendered: dict[tuple[Principal | None, ApiKeyIdentity | None], bytes] = {}

    # --- the request path -------------------------------------------------------------------

    def admit(self, exchange: Exchange) -> bool | Awaitable[bool]:
        key: bytes | None = None
        authorization: bytes | None = None
        origin: bytes | None = None
        for name, value in exchange.headers:
            if name == b"x-api-key":
                key = value
            elif name == b"authorization":
                authorization = value
            elif name == b"origin":
                origin = value
        cors = self.cors
        if cors is not None:
            if exchange.method == b"OPTIONS" and origin is not None and self.preflight(exchange):
                return False
            exchange.response_extra = cors.response_lines(origin)
        try:
            limiter = self.limiter
            if limiter is not None and limiter.by == "address":
                waiting = self._limit(exchange, limiter, exchange.conn.peer)
                if waiting is not None:
                    return self._finish_later(exchange, waiting, None, None, authorization)
            identity: ApiKeyIdentity | None = None
            if self.api_key != "off":
                if key is None:
                    if self.api_key == "required":
                        raise _refuse(exchange, ApiKeyMissing.problem)
                else:
                    assert self.keys is not None
                    try:
                        identity = self.keys.peek(key)
                    except ApiKeyError as exc:
                        raise _refuse(exchange, exc.problem) from None
                    if identity is None:
                        return self._finish_later(exchange, None, key, None, authorization)
            principal = self._principal_cached(exchange, authorization)
            if principal is _PENDING:
                return self._finish_later(exchange, None, None, identity, authorization)
            assert not isinstance(principal, _Pending)
            return self._complete(exchange, identity, principal)
        except _Refused:
            return False

    def preflight(self, exchange: Exchange) -> bool:
        """Answer a CORS preflight; False when the request is not one (so it is routed on)."""
        cors = self.cors
        if cors is None:
            return False
        origin = method = requested = None
        for name, value in exchange.headers:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                method = value
            elif name == b"access-control-request-headers":
                requested = value
        if origin is None or method is None:
            return False
        answer = cors.preflight(origin, method.strip().upper(), requested)
        if answer is None:
            exchange.send_problem(CORS_FORBIDDEN)
        else:
            exchange.respond(204, b"", b"text/plain", answer)
        return True

    def _principal_cached(
        self, exchange: Exchange, authorization: bytes | None
    ) -> Principal | _Pending | None:
        if self.jwt == "off":
            return None
        token = _bearer(exchange, authorization, required=self.jwt == "required")
        if token is None:
            return None
        assert self.tokens is not None
        try:
            principal = self.tokens.verify_cached(token)
        except Problem as problem:
            raise _refuse(exchange, _problem(problem), _CHALLENGE) from None
        return _PENDING if principal is None else principal

    def _complete(
        self, exchange: Exchange, identity: ApiKeyIdentity | None, principal: Principal | None
    ) -> bool | Awaitable[bool]:
        """Roles, the identity-based rate limit, then what goes upstream."""
        if self.roles and (principal is None or principal.roles.isdisjoint(self.roles)):
            if principal is None:
                raise _refuse(exchange, TOKEN_MISSING, _CHALLENGE)
            raise _refuse(exchange, self._forbidden)
        limiter = self.limiter
        if limiter is not None and limiter.by != "address":
            client: str | bytes = exchange.conn.peer
            if limiter.by == "api_key" and identity is not None:
                client = identity.id
            elif limiter.by == "user" and principal is not None:
                client = principal.user_id
            waiting = self._limit(exchange, limiter, client)
            if waiting is not None:
                return self._after_shared_limit(exchange, waiting, identity, principal)
        self._prepare_upstream(exchange, identity, principal)
        return True

    def _limit(
        self, exchange: Exchange, limiter: _Limiter, client: str | bytes
    ) -> Awaitable[float] | None:
        """None: admitted now. Refuses (429) when known to be over; an awaitable when the
        shared store must count this request."""
        if limiter.local is not None:
            wait = limiter.local.hit(client)
        else:
            assert limiter.shared is not None
            wait = limiter.shared.blocked(client)
            if wait <= 0:
                return limiter.shared.hit(client)
        if wait > 0:
            raise _refuse(exchange, RATE_LIMITED, (retry_after_header(wait),))
        return None

    def _prepare_upstream(
        self, exchange: Exchange, identity: ApiKeyIdentity | None, principal: Principal | None
    ) -> None:
        headers = self.headers
        if headers is not None:
            exchange.headers = headers.filter_request(exchange.headers)
            if principal is not None or identity is not None:
                owner = (principal, identity)
                rendered = self._claims_rendered.get(owner)
                if rendered is None:
                    rendered = render_lines(headers.identity_headers(principal, identity))
                    if len(self._claims_rendered) >= _RENDERED_MAX:
                        self._claims_rendered.clear()
                    self._claims_rendered[owner] = rendered
                exchange.upstream_headers = rendered
        if principal is not None:
            exchange.user_id = principal.user_id
        query = self.query
        if query is not None and exchange.query is not None:
            exchange.query = query.filter(exchange.query)

    # --- when an answer needs I/O -----------------------------------------------------------

    async def _finish_later(
        self,
        exchange: Exchange,
        address_wait: Awaitable[float] | None,
        key: bytes | None,
        identity: ApiKeyIdentity | None,
        authorization: bytes | None,
    ) -> bool:
        """The rest of `admit` from the first step that had to wait."""
        try:
            if address_wait is not None:
                wait = await address_wait
                if wait > 0:
                    raise _refuse(exchange, RATE_LIMITED, (retry_after_header(wait),))
                if self.api_key != "off":
                    key = _header(exchange, b"x-api-key")
                    if key is None and self.api_key == "required":
                        raise _refuse(exchange, ApiKeyMissing.problem)
            if key is not None:
                assert self.keys is not None
                try:
                    identity = await self.keys.verify(key)
                except ApiKeyError as exc:
                    raise _refuse(exchange, exc.problem) from None
            principal: Principal | None = None
            if self.jwt != "off":
                token = _bearer(exchange, authorization, required=self.jwt == "required")
                if token is not None:
                    assert self.tokens is not None
                    try:
                        principal = await self.tokens.verify(token)
                    except Problem as problem:
                        raise _refuse(exchange, _problem(problem), _CHALLENGE) from None
            if exchange.finished:  # the client left while we waited
                return False
            result = self._complete(exchange, identity, principal)
            if result is True or result is False:
                return result
            return await result
        except _Refused:
            return False

    async def _after_shared_limit(
        self,
        exchange: Exchange,
        waiting: Awaitable[float],
        identity: ApiKeyIdentity | None,
        principal: Principal | None,
    ) -> bool:
        wait = await waiting
        if exchange.finished:
            return False
        if wait > 0:
            exchange.send_problem(RATE_LIMITED, (retry_after_header(wait),))
            return False
        self._prepare_upstream(exchange, identity, principal)
        return True


class IdentityStrip:
    """The admission of a route with nothing to check or filter: the identity headers go, the
    rest of the request is left alone (the fast path: one scan of the header names)."""

    __slots__ = ("names",)

    def __init__(self, names: frozenset[bytes]) -> None:
        self.names = names

    def admit(self, exchange: Exchange) -> bool:
        exchange.headers = strip_identity(exchange.headers, self.names)
        return True

    def preflight(self, exchange: Exchange) -> bool:
        return False


class _Pending:
    pass


_PENDING = _Pending()


def _refuse(
    exchange: Exchange,
    problem: GatewayProblem,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> _Refused:
    """Answer with `problem` (the response carries the CORS lines a browser needs to read it)."""
    exchange.send_problem(problem, headers)
    return _Refused()


_PROBLEMS: dict[tuple[int, str, str], GatewayProblem] = {}


def _problem(problem: Problem) -> GatewayProblem:
    """The gateway's rendering of a kit problem (token rejected), memoised: few distinct ones."""
    key = (problem.status, problem.code, problem.detail)
    found = _PROBLEMS.get(key)
    if found is None:
        found = GatewayProblem(problem.status, problem.code, problem.detail)
        if len(_PROBLEMS) < 256:
            _PROBLEMS[key] = found
    return found


def _header(exchange: Exchange, wanted: bytes) -> bytes | None:
    for name, value in exchange.headers:
        if name == wanted:
            return value
    return None


def _bearer(exchange: Exchange, authorization: bytes | None, *, required: bool) -> str | None:
    """The bearer token, None when there is none and none is required; refuses otherwise."""
    if authorization is None:
        if required:
            raise _refuse(exchange, TOKEN_MISSING, _CHALLENGE)
        return None
    if authorization[:7].lower() != _BEARER:
        raise _refuse(exchange, TOKEN_MALFORMED, _CHALLENGE)
    token = authorization[7:].strip()
    if not token or b" " in token:
        raise _refuse(exchange, TOKEN_MALFORMED, _CHALLENGE)
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        raise _refuse(exchange, TOKEN_MALFORMED, _CHALLENGE) from None


# --- compiling -------------------------------------------------------------------------------


def _merged_auth(route: RouteSpec, config: GatewayConfig) -> tuple[str, str, frozenset[str]]:
    mine = route.auth or RouteAuthSpec()
    default = config.defaults.auth or RouteAuthSpec()
    api_key = mine.api_key or default.api_key or "off"
    jwt = mine.jwt or default.jwt or "off"
    roles = mine.roles if mine.roles is not None else (default.roles or [])
    if roles:
        jwt = "required"
    return api_key, jwt, frozenset(roles)


def _allow(
    mine: list[str] | None, default: list[str] | None, extra: tuple[str, ...] = ()
) -> list[str] | None:
    """A route's allow-list is the defaults' plus its own; None when neither says anything."""
    if mine is None and default is None:
        return None
    return [*(default or ()), *(mine or ()), *extra]


def identity_header_names(config: GatewayConfig) -> list[str]:
    """The headers the gateway sets from a credential anywhere in `config`: the defaults and
    every claim header of the defaults and of each route. Every route strips them all."""
    names = set(IDENTITY_HEADERS)
    for claims in (config.defaults.claims, *(route.claims for route in config.routes)):
        names.update((claims or {}).values())
    return sorted(names)


def build_policy(
    route: RouteSpec, config: GatewayConfig, context: WorkerContext, name: str
) -> RoutePolicy | IdentityStrip:
    """The route's admission; `IdentityStrip` when it has nothing else to check or filter."""
    identity = identity_header_names(config)
    api_key, jwt, roles = _merged_auth(route, config)
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
    if header_allow is None:
        header_allow = list(implied)
    if query_allow is None:
        query_allow = []
    claims = route.claims if route.claims is not None else defaults.claims
    cors_spec: CorsSpec | None = route.cors or defaults.cors
    limit_spec: RateLimitRuleSpec | None = route.rate_limit or defaults.rate_limit
    if (
        api_key == "off"
        and jwt == "off"
        and "*" in header_allow
        and "*" in query_allow
        and cors_spec is None
        and limit_spec is None
    ):
        return IdentityStrip(identity_spellings(identity))
    security = _services(context, config)
    headers = HeaderPolicy(
        allow=header_allow,
        strip=identity,
        forward_claims=DEFAULT_CLAIM_HEADERS if claims is None else claims,
    )
    return RoutePolicy(
        api_key=api_key,
        jwt=jwt,
        roles=roles,
        headers=headers,
        query=QueryPolicy(query_allow),
        cors=_cors(cors_spec),
        limiter=_limiter(limit_spec, config, security, name),
        keys=security.api_keys if api_key != "off" else None,
        tokens=security.tokens if jwt != "off" else None,
    )


def _services(context: WorkerContext, config: GatewayConfig) -> SecurityServices:
    if context.security is None:
        context.security = SecurityServices(context, config.security)
    return context.security


def _cors(spec: CorsSpec | None) -> CorsPolicy | None:
    if spec is None:
        return None
    return CorsPolicy(
        origins=spec.origins,
        methods=spec.methods,
        headers=spec.headers,
        expose_headers=spec.expose_headers,
        max_age=None if spec.max_age is None else int(spec.max_age),
        credentials=spec.credentials,
    )


def _limiter(
    spec: RateLimitRuleSpec | None, config: GatewayConfig, security: SecurityServices, name: str
) -> _Limiter | None:
    if spec is None:
        return None
    limit = RateLimit(spec.requests, spec.per, spec.burst)
    if not spec.shared:
        return _Limiter(spec.by, LocalRateLimiter(limit), None)
    counter = security.counter(config.rate_limits)
    shared = SharedRateLimiter(counter, limit, name=name, timeout=config.rate_limits.timeout)
    return _Limiter(spec.by, None, shared)
