"""The JWT filter: `Authorization: Bearer`, verified locally, then the route's roles or scopes.

Tokens are verified from auth's JWKS by the kit's `TokenVerifier`, with the revocation feed
applied on every request, cached or not (`auth.session.revoked`, role removals, disabled users;
for client applications `auth.client.disabled` and `auth.client.token_revoked`); a token verified
before is a cache hit, answered in the same call (no task). 401 with the reason and a
`WWW-Authenticate: Bearer` challenge; 403 when a user has none of the route's roles (any of).

Two kinds of token (the kit tells them apart: `Principal` has a `sub`, `ClientPrincipal` a
`client_id` and no `sub`):

* a user's, governed by `auth.jwt` and `auth.roles` as always;
* a third-party application's (OAuth2 client credentials), accepted only on a route with
  `auth.scopes` (one *open to client applications*): its scopes must satisfy the rule (scopes.py,
  else 403 `auth.scope_missing`), and it then stands for the calling application **in place of
  the API key**. On any other route it is refused (401 `auth.token_invalid`, "not accepted
  here": `TokenVerifier.verify` is user-only).

Order. Because a client token replaces `x-api-key`, the API key filter must know whether one was
verified before it decides that a missing key is a 401. So on a route open to clients this filter
runs *before* the API key filter (pipeline.py), which then treats a verified client as the
caller and the key as optional; elsewhere it runs after it, as before (a missing key is refused
before any signature is checked). This is the cheaper of the two designs considered: a combined
"API key or client token" filter would duplicate both filters' cache fast paths, while moving
this one costs nothing (a token sent without a key is checked in either design, since it may be
the credential).

Where the route takes no user token (`jwt: off`, a public read) a request with an `x-api-key` is
the API key's business alone: its `Authorization` is not looked at, as on any route with
`jwt: off` (browsers and SDKs send a stale token everywhere), nor forwarded. Without a key, a
bearer token must be a valid client token (a user's token does not replace the key: the API key
filter then answers 401). Where the route takes user tokens too, every token sent is checked.

A verified client is noted as `caller.CLIENT` (identity headers `x-client-id` / `x-client-scopes`,
`rate_limit.by: client`, the access log and metrics); its `Authorization`
header is never forwarded (upstream_headers.py): services verify bearer tokens as users' tokens.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable

import orjson

from mosaic_gateway.filters.caller import CLIENT, USER
from mosaic_gateway.filters.scopes import ScopeRule
from mosaic_gateway.http.problems import GatewayProblem
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.routing.chain import Step
from mosaic_kit.problem import Problem
from mosaic_kit.tokens import CLIENT_TOKEN_TYPE, AnyPrincipal, ClientPrincipal, TokenVerifier

_BEARER = b"bearer "
_CHALLENGE = ((b"www-authenticate", b"Bearer"),)
_CLIENT_TYPES = frozenset({CLIENT_TOKEN_TYPE, "application/" + CLIENT_TOKEN_TYPE})

ROLE_MISSING_CODE = "auth.forbidden"
TOKEN_MISSING = GatewayProblem(401, "auth.token_missing", "A bearer token is required")
TOKEN_MALFORMED = GatewayProblem(
    401, "auth.token_invalid", "The Authorization header is not a bearer token"
)
CLIENT_TOKEN_NOT_HERE = GatewayProblem(
    401, "auth.token_invalid", "A client application's token is not accepted here"
)


class JwtFilter:
    __slots__ = (
        "forbidden",
        "required",
        "roles",
        "scope_challenge",
        "scopes",
        "tokens",
        "users",
        "verify",
        "verify_cached",
    )

    def __init__(
        self,
        tokens: TokenVerifier,
        *,
        required: bool,
        roles: frozenset[str],
        scopes: ScopeRule | None = None,
        users: bool = True,
    ) -> None:
        self.tokens = tokens
        self.required = required or bool(roles)
        self.roles = roles
        self.scopes = scopes
        # False on a route open to clients with `jwt: off`: a user's token is not its credential.
        self.users = users
        self.forbidden = GatewayProblem(
            403, ROLE_MISSING_CODE, "This requires one of the roles: " + ", ".join(sorted(roles))
        )
        self.verify_cached: Callable[[str], AnyPrincipal | None]
        self.verify: Callable[[str], Awaitable[AnyPrincipal]]
        if scopes is None:
            # User-only: a client token raises the kit's 401 "not accepted here".
            self.verify_cached, self.verify = tokens.verify_cached, tokens.verify
            self.scope_challenge = _CHALLENGE
        else:
            self.verify_cached, self.verify = tokens.verify_cached_any, tokens.verify_any
            # RFC 6750 §3.1: the scope a client must ask for.
            needed = " ".join(sorted(scopes.scopes)).encode()
            self.scope_challenge = (
                (b"www-authenticate", b'Bearer error="insufficient_scope", scope="%b"' % needed),
            )

    def on_request(self, exchange: Exchange) -> Step:
        if not self.users and exchange.api_key is not None:
            return True  # an API-key request to a public read: the token is not looked at
        token = _bearer(exchange, exchange.authorization, self.required)
        if token is None:
            return self._admit(exchange, None)
        if not token:
            return False  # refused
        try:
            principal = self.verify_cached(token)
        except Problem as problem:
            exchange.send_problem(_problem(problem), _CHALLENGE)
            return False
        if principal is None:
            return self._verify(exchange, token)
        return self._admit(exchange, principal)

    async def _verify(self, exchange: Exchange, token: str) -> bool:
        try:
            principal = await self.verify(token)
        except Problem as problem:
            if not exchange.finished:
                exchange.send_problem(_problem(problem), _CHALLENGE)
            return False
        if exchange.finished:  # the client left while we waited
            return False
        return self._admit(exchange, principal)

    def _admit(self, exchange: Exchange, principal: AnyPrincipal | None) -> bool:
        if principal is None:
            if self.roles:
                exchange.send_problem(TOKEN_MISSING, _CHALLENGE)
                return False
            return True
        if isinstance(principal, ClientPrincipal):
            scopes = self.scopes
            assert scopes is not None  # verify_cached/verify refuse client tokens otherwise
            if not scopes.admits(principal.scopes):
                exchange.send_problem(scopes.problem, self.scope_challenge)
                return False
            exchange.put(CLIENT, principal)
            return True
        if not self.users:
            return True
        if self.roles and principal.roles.isdisjoint(self.roles):
            exchange.send_problem(self.forbidden)
            return False
        exchange.put(USER, principal)
        return True


def is_client_token(authorization: bytes) -> bool:
    """Whether an `Authorization` value is a bearer token whose (unverified) JOSE header says
    `typ: at+jwt`. Only to word a refusal (pipeline's API key filter on a route closed to
    clients): never to admit anything."""
    if authorization[:7].lower() != _BEARER:
        return False
    segment = authorization[7:].strip().partition(b".")[0]
    if not segment or len(segment) > 1024:
        return False
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return False
    typ = header.get("typ") if isinstance(header, dict) else None
    return isinstance(typ, str) and typ.lower() in _CLIENT_TYPES


def _bearer(exchange: Exchange, authorization: bytes | None, required: bool) -> str | None:
    """The bearer token; None when there is none and none is required; "" when refused."""
    if authorization is None:
        if required:
            exchange.send_problem(TOKEN_MISSING, _CHALLENGE)
            return ""
        return None
    token = authorization[7:].strip()
    if authorization[:7].lower() != _BEARER or not token or b" " in token:
        exchange.send_problem(TOKEN_MALFORMED, _CHALLENGE)
        return ""
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        exchange.send_problem(TOKEN_MALFORMED, _CHALLENGE)
        return ""


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
