"""Who the caller is, as the route's credential filters found out: the facts later filters of
the same request read (a rate limit by API key, user or client, the identity headers for the
upstream).

`principal` is a user (a user's token), `client` a third-party application (a client-credentials
token, on a route open to client applications); never both, since a request carries one bearer
token. `api_key` is the calling application's key, when one was sent and verified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mosaic_gateway.http.server import StateKey

if TYPE_CHECKING:
    from mosaic_gateway.filters.apikeys import ApiKeyIdentity
    from mosaic_gateway.http.server import Exchange
    from mosaic_kit.tokens import ClientPrincipal, Principal


class Caller:
    __slots__ = ("api_key", "client", "principal")

    def __init__(self) -> None:
        self.api_key: ApiKeyIdentity | None = None
        self.principal: Principal | None = None
        self.client: ClientPrincipal | None = None


CALLER: StateKey[Caller] = StateKey("caller")


def caller_of(exchange: Exchange) -> Caller | None:
    """The exchange's caller, if a credential filter made one."""
    return exchange.get(CALLER)


def caller_for(exchange: Exchange) -> Caller:
    """The exchange's caller, made on first use (only requests with a credential pay for it)."""
    found = exchange.get(CALLER)
    if found is None:
        found = Caller()
        exchange.put(CALLER, found)
    return found
