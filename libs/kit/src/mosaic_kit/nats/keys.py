"""The JWKS from the auth service over NATS request-reply: a `mosaic_kit.jwks.KeySource`."""

from __future__ import annotations

from typing import Any

from mosaic_kit.jwks import validate_jwks
from mosaic_kit.nats.rpc import request

__all__ = ["NatsKeySource"]


class NatsKeySource:
    """The JWKS from the auth service over NATS request-reply (`auth.jwks.get`).

    Raises `mosaic_kit.nats.rpc.RpcError` (unavailable, timeout, error reply) or ValueError.
    """

    def __init__(self, nc: Any, subject: str = "auth.jwks.get", *, timeout: float = 2.0) -> None:
        self._nc = nc
        self._subject = subject
        self._timeout = timeout

    async def fetch(self) -> dict[str, Any]:
        data = await request(self._nc, self._subject, {}, timeout=self._timeout)
        return validate_jwks(data)
