"""A token issuer for a service's own test suite: auth's tokens without running auth.

It signs access tokens exactly as auth does (EdDSA, `kid` header; `sub`, `sid`, `roles`, `iat`,
`exp`, `iss`, `aud`, `jti`) with a key of its own, and answers its JWKS over NATS on a subject of
its own, the way auth answers `auth.jwks.get`. A service under test points its key source at that
subject, so its real verifier, JWKS cache and NATS request path do the work; tests sharing one
NATS server never read each other's keys.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mosaic_kit.nats import rpc
from mosaic_kit.nats.connection import Client
from mosaic_kit.tokens import ALGORITHM

__all__ = ["TokenIssuer"]


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenIssuer:
    def __init__(self, *, issuer: str = "mosaic-auth", audience: str = "mosaic") -> None:
        self.issuer = issuer
        self.audience = audience
        self.kid = f"test-{uuid.uuid4().hex[:8]}"
        self.jwks_subject = f"test.{uuid.uuid4().hex[:12]}.jwks.get"
        self._key = Ed25519PrivateKey.generate()
        self._service: rpc.RpcService | None = None

    def jwks(self) -> dict[str, Any]:
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": self.kid}
        return {"keys": [{**jwk, "use": "sig", "alg": ALGORITHM}]}

    def token(
        self,
        user_id: uuid.UUID | str | None = None,
        roles: Iterable[str] = ("USER",),
        *,
        ttl: int = 900,
        **claims: Any,
    ) -> str:
        """An access token for `user_id` (a new one if None); `claims` override the defaults."""
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": str(user_id or uuid.uuid4()),
            "sid": str(uuid.uuid4()),
            "roles": sorted(roles),
            "iat": now,
            "exp": now + ttl,
            "iss": self.issuer,
            "aud": self.audience,
            "jti": secrets.token_urlsafe(12),
            **claims,
        }
        return jwt.encode(body, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    async def serve(self, nc: Client) -> None:
        """Answer `jwks_subject` on `nc` until `stop()`."""

        async def jwks(_payload: dict[str, Any]) -> dict[str, Any]:
            return self.jwks()

        self._service = await rpc.serve(
            nc,
            name=f"test-issuer-{self.kid}",
            version="0.0.0",
            description="JWKS of a test token issuer",
            endpoints={self.jwks_subject: jwks},
        )

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
            self._service = None
