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
    from mosaic_kit.tokens import ClientPrincipal, Principal


class Caller:
    """Made by the first credential filter that admits the request (with what it found), then
    completed by the next: `exchange.get(CALLER)` is None for a request without credentials."""

    __slots__ = ("api_key", "client", "principal")

    def __init__(
        self,
        api_key: ApiKeyIdentity | None = None,
        principal: Principal | None = None,
        client: ClientPrincipal | None = None,
    ) -> None:
        self.api_key = api_key
        self.principal = principal
        self.client = client


CALLER: StateKey[Caller] = StateKey("caller")
