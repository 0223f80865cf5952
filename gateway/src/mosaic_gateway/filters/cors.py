"""The CORS filter: preflights answered at the gateway, response headers for the browser.

A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered 204 or 403
from the route's `cors` settings and never forwarded; any other request goes on with the CORS
response lines prepared (`Exchange.response_extra`: every answer carries them, a problem too, so
that a browser can read it).
"""

from __future__ import annotations

from mosaic_gateway.filters.headers import CORS_FORBIDDEN, CorsPolicy
from mosaic_gateway.http.server import Exchange


class CorsFilter:
    __slots__ = ("policy",)

    def __init__(self, policy: CorsPolicy) -> None:
        self.policy = policy

    def on_request(self, exchange: Exchange) -> bool:
        origin: bytes | None = None
        for name, value in exchange.headers:
            if name == b"origin":
                origin = value
        if exchange.method == b"OPTIONS" and origin is not None and self.preflight(exchange):
            return False
        exchange.response_extra = self.policy.response_lines(origin)
        return True

    def preflight(self, exchange: Exchange) -> bool:
        """Answer a CORS preflight; False when the request is not one (so it is routed on)."""
        origin = method = requested = None
        for name, value in exchange.headers:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                method = value
            elif name == b"access-control-request-headers":
                requested = value
        if origin is None or method is None:
            return False
        answer = self.policy.preflight(origin, method.strip().upper(), requested)
        if answer is None:
            exchange.send_problem(CORS_FORBIDDEN)
        else:
            exchange.respond(204, b"", b"text/plain", answer)
        return True
