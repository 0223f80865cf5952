"""The JWT filter: `Authorization: Bearer`, verified locally, then the route's roles.

Tokens are verified from auth's JWKS by the kit's `TokenVerifier`, with the revocation feed
(`auth.session.revoked`, role removals, disabled users) applied; a token verified before is a
cache hit, answered in the same call. 401 with the reason and a `WWW-Authenticate: Bearer`
challenge; 403 when the caller has none of the route's roles (any of).
"""

from __future__ import annotations

from mosaic_gateway.filters.caller import caller_for
from mosaic_gateway.http.problems import GatewayProblem
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.routing.chain import Step
from mosaic_kit.problem import Problem
from mosaic_kit.tokens import Principal, TokenVerifier

_BEARER = b"bearer "
_CHALLENGE = ((b"www-authenticate", b"Bearer"),)

ROLE_MISSING_CODE = "auth.forbidden"
TOKEN_MISSING = GatewayProblem(401, "auth.token_missing", "A bearer token is required")
TOKEN_MALFORMED = GatewayProblem(
    401, "auth.token_invalid", "The Authorization header is not a bearer token"
)


class JwtFilter:
    __slots__ = ("forbidden", "required", "roles", "tokens")

    def __init__(self, tokens: TokenVerifier, *, required: bool, roles: frozenset[str]) -> None:
        self.tokens = tokens
        self.required = required or bool(roles)
        self.roles = roles
        self.forbidden = GatewayProblem(
            403, ROLE_MISSING_CODE, "This requires one of the roles: " + ", ".join(sorted(roles))
        )

    def on_request(self, exchange: Exchange) -> Step:
        authorization: bytes | None = None
        for name, value in exchange.headers:
            if name == b"authorization":
                authorization = value
        token = _bearer(exchange, authorization, required=self.required)
        if token is None:
            return self._admit(exchange, None)
        if not token:
            return False  # refused
        try:
            principal = self.tokens.verify_cached(token)
        except Problem as problem:
            exchange.send_problem(_problem(problem), _CHALLENGE)
            return False
        if principal is None:
            return self._verify(exchange, token)
        return self._admit(exchange, principal)

    async def _verify(self, exchange: Exchange, token: str) -> bool:
        try:
            principal = await self.tokens.verify(token)
        except Problem as problem:
            if not exchange.finished:
                exchange.send_problem(_problem(problem), _CHALLENGE)
            return False
        if exchange.finished:  # the client left while we waited
            return False
        return self._admit(exchange, principal)

    def _admit(self, exchange: Exchange, principal: Principal | None) -> bool:
        if principal is None:
            if self.roles:
                exchange.send_problem(TOKEN_MISSING, _CHALLENGE)
                return False
            return True
        if self.roles and principal.roles.isdisjoint(self.roles):
            exchange.send_problem(self.forbidden)
            return False
        caller_for(exchange).principal = principal
        exchange.user_id = principal.user_id
        return True


def _bearer(exchange: Exchange, authorization: bytes | None, *, required: bool) -> str | None:
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
