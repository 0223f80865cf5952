"""The rate limit filter: a route's `rate_limit`, counted here or in a shared store.

`by: address` runs before the credential filters (cheap, and before any work is spent on a
flood); `by: api_key`, `by: user` and `by: client` after them, a request without that identity
counting against its address. `by: client` counts per client application id (a client token's
`client_id`), else per API key id (the calling application without a client token), else per
address: the budget belongs to whichever application is calling. They are counted as
`client:<id>` and `key:<id>`, so a client id never shares a budget with a key id or an address
that happens to be spelled the same. A local limit answers in the same call; a shared one too when the store
said this client is over already, else the count is an awaitable (ratelimit.py falls back to a
local limit when the store is slow).
"""

from __future__ import annotations

from collections.abc import Awaitable

from mosaic_gateway.filters.caller import API_KEY, CLIENT, USER
from mosaic_gateway.filters.ratelimit import (
    RATE_LIMITED,
    LocalRateLimiter,
    SharedRateLimiter,
    retry_after_header,
)
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.routing.chain import Step


class RateLimitFilter:
    __slots__ = ("by", "local", "shared")

    def __init__(
        self, by: str, local: LocalRateLimiter | None, shared: SharedRateLimiter | None
    ) -> None:
        self.by = by  # "address" | "api_key" | "user" | "client"
        self.local = local
        self.shared = shared

    def on_request(self, exchange: Exchange) -> Step:
        client: str | bytes = exchange.conn.peer
        by = self.by  # "address" keeps the peer
        if by == "api_key":
            api_key = exchange.get(API_KEY)
            if api_key is not None:
                client = api_key.id
        elif by == "user":
            user = exchange.get(USER)
            if user is not None:
                client = user.user_id
        elif by == "client":
            application = exchange.get(CLIENT)
            if application is not None:
                client = "client:" + application.client_id
            else:
                api_key = exchange.get(API_KEY)
                if api_key is not None:
                    client = "key:" + api_key.id
        if self.local is not None:
            wait = self.local.hit(client)
        else:
            shared = self.shared
            assert shared is not None
            wait = shared.blocked(client)
            if wait <= 0:
                return _counted(exchange, shared.hit(client))
        if wait > 0:
            exchange.send_problem(RATE_LIMITED, (retry_after_header(wait),))
            return False
        return True


async def _counted(exchange: Exchange, waiting: Awaitable[float]) -> bool:
    wait = await waiting
    if exchange.finished:
        return False
    if wait > 0:
        exchange.send_problem(RATE_LIMITED, (retry_after_header(wait),))
        return False
    return True
