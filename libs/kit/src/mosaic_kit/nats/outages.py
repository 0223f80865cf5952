"""Which NATS errors mean "the broker cannot be reached now" (a 503, not a bug).

Registered with `mosaic_kit.problem.treat_as_unreachable` when `mosaic_kit.nats.connection` is
imported. NATS's own TimeoutError is an OSError, which always counts.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors

__all__ = ["nats_unreachable"]

_UNREACHABLE: tuple[type[BaseException], ...] = (
    # No connection now (closed, reconnecting, draining, buffer full), or nobody answered.
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)


def nats_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, _UNREACHABLE)
