"""The worker's request handler: from a parsed request to its route's chain.

Paths that could mean something else to a backend are refused first (routing/paths.py), then
the router finds the route for the path and method, the route's body limit applies, and the
route's chain (routing/chain.py) takes the request.
"""

from __future__ import annotations

from collections.abc import Mapping

from mosaic_gateway.http import problems
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.routing.paths import refusal as path_refusal
from mosaic_gateway.routing.route import CompiledRoute
from mosaic_gateway.routing.router import Router


class Dispatcher:
    """Routes each exchange; the router is swapped by a reload, between requests."""

    __slots__ = ("router",)

    def __init__(self, router: Router[CompiledRoute]) -> None:
        self.router = router

    def handle(self, exchange: Exchange) -> None:
        path = exchange.path
        refused = path_refusal(path)  # encoded separators, dot segments (paths.py)
        if refused is not None:
            exchange.send_problem(refused)
            return
        found = self.router.match(path)
        if found is None:
            exchange.send_problem(problems.NO_ROUTE)
            return
        entry = found[0]
        route = entry.by_method.get(exchange.method)
        if route is None:
            if exchange.method == b"OPTIONS" and _cors_preflight(exchange, entry.by_method):
                return
            exchange.send_problem(problems.METHOD_NOT_ALLOWED, ((b"allow", entry.allow),))
            return
        limit = route.max_body_bytes
        if limit and (
            (exchange.content_length is not None and exchange.content_length > limit)
            or exchange.body_bytes > limit
        ):
            exchange.send_problem(problems.BODY_TOO_LARGE)
            return
        exchange.max_body_bytes = limit
        exchange.route = route
        chain = route.chain
        assert chain is not None
        chain.run(exchange)


def _cors_preflight(exchange: Exchange, routes: Mapping[bytes, CompiledRoute]) -> bool:
    """A CORS preflight to a path whose routes have CORS settings: answered by the first."""
    for route in routes.values():
        preflight = route.preflight
        if preflight is not None and preflight(exchange):
            return True
    return False
