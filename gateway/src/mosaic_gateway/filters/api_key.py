"""The API key filter: `x-api-key`, checked with auth over NATS and cached (apikeys.py).

401 when the route requires a key and there is none, 403 when auth refuses it, 503 when auth
cannot answer. A key seen before is a cache hit, answered in the same call; cached answers are
dropped by `auth.apikey.revoked` events.
"""

from __future__ import annotations

from mosaic_gateway.filters.apikeys import (
    API_KEY_HEADER,
    ApiKeyError,
    ApiKeyIdentity,
    ApiKeyMissing,
    ApiKeyVerifier,
)
from mosaic_gateway.filters.caller import caller_for
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.routing.chain import Step


class ApiKeyFilter:
    __slots__ = ("keys", "required")

    def __init__(self, keys: ApiKeyVerifier, *, required: bool) -> None:
        self.keys = keys
        self.required = required

    def on_request(self, exchange: Exchange) -> Step:
        key: bytes | None = None
        for name, value in exchange.headers:
            if name == API_KEY_HEADER:
                key = value
        if key is None:
            if self.required:
                exchange.send_problem(ApiKeyMissing.problem)
                return False
            return True
        try:
            identity = self.keys.peek(key)
        except ApiKeyError as exc:
            exchange.send_problem(exc.problem)
            return False
        if identity is None:
            return self._verify(exchange, key)
        return _admit(exchange, identity)

    async def _verify(self, exchange: Exchange, key: bytes) -> bool:
        try:
            identity = await self.keys.verify(key)
        except ApiKeyError as exc:
            if not exchange.finished:
                exchange.send_problem(exc.problem)
            return False
        return _admit(exchange, identity)


def _admit(exchange: Exchange, identity: ApiKeyIdentity) -> bool:
    caller_for(exchange).api_key = identity
    return True
