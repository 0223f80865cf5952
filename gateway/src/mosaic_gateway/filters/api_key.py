"""The API key filter: `x-api-key`, checked with auth over NATS and cached (apikeys.py).

401 when the route requires a key and there is none, 403 when auth refuses it, 503 when auth
cannot answer. A key seen before is a cache hit, answered in the same call; cached answers are
dropped by `auth.apikey.revoked` events.

On a route open to client applications (`auth.scopes`) the JWT filter runs first (jwt.py says
why), and a client token it verified stands in for the key: a missing key is then no error
(a key sent anyway is still checked: a credential that fails is never ignored). Elsewhere a
request without a key that carries a client token is told so (401 `auth.token_invalid`, "not
accepted here") rather than asked for a key it may not have.
"""

from __future__ import annotations

from mosaic_gateway.filters.apikeys import (
    ApiKeyError,
    ApiKeyMissing,
    ApiKeyVerifier,
)
from mosaic_gateway.filters.caller import API_KEY, CLIENT
from mosaic_gateway.filters.jwt import CLIENT_TOKEN_NOT_HERE, is_client_token
from mosaic_gateway.http.problems import GatewayProblem
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.routing.chain import Step

KEY_OR_CLIENT_TOKEN_MISSING = GatewayProblem(
    ApiKeyMissing.problem.status,
    ApiKeyMissing.problem.code,
    "An API key (x-api-key) or a client application's bearer token is required",
)


class ApiKeyFilter:
    __slots__ = ("clients", "keys", "required")

    def __init__(self, keys: ApiKeyVerifier, *, required: bool, clients: bool = False) -> None:
        self.keys = keys
        self.required = required
        self.clients = clients  # open to client applications: a client token replaces the key

    def on_request(self, exchange: Exchange) -> Step:
        key = exchange.api_key  # found by the server while parsing (http/server.py)
        if key is None:
            if not self.required:
                return True
            if self.clients:
                if exchange.get(CLIENT) is not None:
                    return True
                exchange.send_problem(KEY_OR_CLIENT_TOKEN_MISSING)
                return False
            # Only to word the refusal.
            authorization = exchange.authorization
            if authorization is not None and is_client_token(authorization):
                exchange.send_problem(CLIENT_TOKEN_NOT_HERE, ((b"www-authenticate", b"Bearer"),))
                return False
            exchange.send_problem(ApiKeyMissing.problem)
            return False
        try:
            identity = self.keys.peek(key)
        except ApiKeyError as exc:
            exchange.send_problem(exc.problem)
            return False
        if identity is None:
            return self._verify(exchange, key)
        exchange.put(API_KEY, identity)
        return True

    async def _verify(self, exchange: Exchange, key: bytes) -> bool:
        try:
            identity = await self.keys.verify(key)
        except ApiKeyError as exc:
            if not exchange.finished:
                exchange.send_problem(exc.problem)
            return False
        exchange.put(API_KEY, identity)
        return True
