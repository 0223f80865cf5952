"""The admin listener: the gateway's own liveness/readiness and a view of its live state.

Served on a separate (by default loopback) port, so none of these paths can collide with a
route or be reached from outside. Every worker answers with its own view (`worker` is its pid):
balancing and health state are per worker. `/metrics` is the exception: whichever worker a
scrape reaches sums every worker's counters (metrics.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import orjson

from mosaic_gateway.http import problems
from mosaic_gateway.http.server import Exchange
from mosaic_gateway.lifecycle.runtime import Runtime
from mosaic_gateway.observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

_JSON = b"application/json"


class AdminHandler:
    def __init__(
        self,
        runtime: Callable[[], Runtime],
        draining: Callable[[], bool],
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self._runtime = runtime
        self._draining = draining
        self._metrics = metrics  # renders Prometheus text; None: metrics are off

    def handle(self, exchange: Exchange) -> None:
        if exchange.method not in (b"GET", b"HEAD"):
            exchange.send_problem(problems.METHOD_NOT_ALLOWED, ((b"allow", b"GET, HEAD"),))
            return
        path = exchange.path
        if path == b"/healthz":
            self._json(exchange, 200, {"status": "ok"})
        elif path == b"/readyz":
            if self._draining():
                self._json(exchange, 503, {"status": "draining"})
            else:
                self._json(exchange, 200, {"status": "ready"})
        elif path == b"/metrics" and self._metrics is not None:
            exchange.respond(
                200,
                self._metrics(),
                METRICS_CONTENT_TYPE,
                ((b"x-gateway-worker", b"%d" % os.getpid()),),
            )
        elif path == b"/admin/routes":
            self._json(exchange, 200, {"routes": self._runtime().routes_snapshot()})
        elif path == b"/admin/backends":
            self._json(exchange, 200, {"backends": self._runtime().backends_snapshot()})
        else:
            exchange.send_problem(problems.NO_ROUTE)

    @staticmethod
    def _json(exchange: Exchange, status: int, document: dict[str, object]) -> None:
        document["worker"] = os.getpid()
        exchange.respond(status, orjson.dumps(document), _JSON)
