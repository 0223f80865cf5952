"""What of the client's request reaches the backend: the header and query allow-lists, and the
caller's claims added as headers (headers.py holds the policies).

Identity headers (`x-user-id`, `x-user-roles`, `x-client-id`, `x-client-scopes` and every header
a claim is forwarded as on *any* route of the configuration, in any spelling) are taken out of every request, whatever the route:
a route with nothing to filter gets an `IdentityStrip` that does only that (the fast path: one
scan of the header names). These filters run after the credential filters and before anything
builds an upstream request (forwarding, aggregation, a cache fill), so no client can claim an
identity through a route without auth, nor through a route whose backend trusts a header another
route sets.

A client application's bearer token is not forwarded even where `authorization` is allowed (a
route open to clients that also takes user tokens implies it): the services verify a bearer token
as a user's and would refuse it; they get `x-client-id` and `x-client-scopes` instead.
"""

from __future__ import annotations

from mosaic_gateway.filters.apikeys import ApiKeyIdentity
from mosaic_gateway.filters.caller import API_KEY, CLIENT, USER
from mosaic_gateway.filters.headers import HeaderPolicy, QueryPolicy, render_lines, strip_identity
from mosaic_gateway.http.server import Exchange
from mosaic_kit.tokens import ClientPrincipal, Principal

# The caller's three parts and their rendered identity header lines.
_Rendered = tuple[Principal | None, ApiKeyIdentity | None, ClientPrincipal | None, bytes]

_RENDERED_MAX = 10_000


class HeaderFilter:
    __slots__ = ("_rendered", "_strip_authorization", "policy")

    def __init__(self, policy: HeaderPolicy) -> None:
        self.policy = policy
        self._rendered: dict[tuple[int, int, int], _Rendered] = {}
        # Whether a client's `Authorization` can survive the allow-list (then it is taken out).
        self._strip_authorization = policy.allowed is None or b"authorization" in policy.allowed

    def on_request(self, exchange: Exchange) -> bool:
        policy = self.policy
        headers = policy.filter_request(exchange.headers)
        # Three keys read: the state dict is looked at once, as the observer does (None: nothing
        # was noted, so no credential).
        principal: Principal | None = None
        api_key: ApiKeyIdentity | None = None
        client: ClientPrincipal | None = None
        state = exchange.state
        if state is not None:
            principal, api_key, client = state.get(USER), state.get(API_KEY), state.get(CLIENT)
        if principal is None and api_key is None and client is None:
            exchange.headers = headers
            return True
        if client is not None and self._strip_authorization:
            headers = [item for item in headers if item[0] != b"authorization"]
        exchange.headers = headers
        # Keyed by the objects' ids, not their (dataclass) hashes, which Python would compute
        # field by field on every request. Safe: the entry holds the three objects, so no other
        # live object can have their ids while it exists; the identity checks say so again.
        key = (id(principal), id(api_key), id(client))
        entry = self._rendered.get(key)
        if (
            entry is None
            or entry[0] is not principal
            or entry[1] is not api_key
            or entry[2] is not client
        ):
            entry = (
                principal,
                api_key,
                client,
                render_lines(policy.identity_headers(principal, api_key, client)),
            )
            if len(self._rendered) >= _RENDERED_MAX:
                self._rendered.clear()  # rebuilt from scratch: cheaper than an LRU
            self._rendered[key] = entry
        exchange.upstream_headers = entry[3]
        return True


class QueryFilter:
    __slots__ = ("policy",)

    def __init__(self, policy: QueryPolicy) -> None:
        self.policy = policy

    def on_request(self, exchange: Exchange) -> bool:
        if exchange.query is not None:
            exchange.query = self.policy.filter(exchange.query)
        return True


class IdentityStrip:
    """The identity headers go; the rest of the request is left alone."""

    __slots__ = ("names",)

    def __init__(self, names: frozenset[bytes]) -> None:
        self.names = names

    def on_request(self, exchange: Exchange) -> bool:
        exchange.headers = strip_identity(exchange.headers, self.names)
        return True
