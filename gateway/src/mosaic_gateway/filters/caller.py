"""Who the caller is, as the route's credential filters found out: the facts later filters of
the same request read (a rate limit by API key, user or client, the identity headers for the
upstream), each under its own key of the exchange's state (`exchange.get(API_KEY)`...).

`USER` is a user (a user's token), `CLIENT` a third-party application (a client-credentials
token, on a route open to client applications); never both, since a request carries one bearer
token. `API_KEY` is the calling application's key, when one was sent and verified. A request
with no credential stores none of them (its `exchange.state` stays None).

Three keys rather than one object holding the three: a credential filter's note is then one
entry in the state dict, not an object made per request (~100 ns on the full route).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mosaic_gateway.http.server import StateKey

if TYPE_CHECKING:
    from mosaic_gateway.filters.apikeys import ApiKeyIdentity
    from mosaic_kit.tokens import ClientPrincipal, Principal

API_KEY: StateKey[ApiKeyIdentity] = StateKey("api_key")
USER: StateKey[Principal] = StateKey("user")
CLIENT: StateKey[ClientPrincipal] = StateKey("client")
