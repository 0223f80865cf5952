"""A configured route, compiled for the hot path: what the router finds for a path and method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mosaic_gateway.observe.accesslog import route_fields
from mosaic_gateway.upstream.attempt import RetryPolicy
from mosaic_gateway.upstream.balancer import Backend

if TYPE_CHECKING:
    from mosaic_gateway.http.server import Exchange
    from mosaic_gateway.routing.chain import Chain


@dataclass(eq=False)
class CompiledRoute:
    template: str
    backend: Backend  # an aggregate route's: its first call's
    timeout: float
    max_body_bytes: int
    strip_prefix: bytes
    add_prefix: bytes
    retry: RetryPolicy | None = None
    # The filters and the terminal handler (chain.py); set once the route exists, since the
    # terminal handler holds the route.
    chain: Chain | None = None
    # Answers a CORS preflight for a method the path has no route for (the CORS filter's);
    # False when the request is not one.
    preflight: Callable[[Exchange], bool] | None = None
    # The access log's `route` and `backend` fields, rendered once (observe/accesslog.py).
    log_fields: bytes = field(init=False)
    # Whether the path sent upstream differs from the client's (`upstream_path`).
    rewrites: bool = field(init=False)

    def __post_init__(self) -> None:
        self.log_fields = route_fields(self.template, self.backend.name)
        self.rewrites = bool(self.strip_prefix or self.add_prefix)

    def upstream_path(self, path: bytes) -> bytes:
        if self.strip_prefix:
            path = path[len(self.strip_prefix) :]
        if self.add_prefix:
            path = self.add_prefix + path
        return path or b"/"
