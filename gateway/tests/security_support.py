"""A stand-in for the auth service on NATS, for gateway security tests.

It answers the real subjects the gateway uses (`auth.apikeys.verify`, `auth.jwks.get`), signs
access tokens with an Ed25519 key it publishes as JWKS -- users' tokens, and client applications'
client-credentials tokens in the contract's shape (RFC 9068: `typ: at+jwt`, `client_id`, `scope`,
`jti`, `aud` a list holding `mosaic`, no `sub`) -- and publishes auth's revocation events on auth's
stream (sessions, API keys, `auth.client.disabled`, `auth.client.token_revoked`). Each test module runs it against a NATS server of its own, so no real auth
service of another test suite answers the same subjects.
"""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mosaic_devstack.embedded import EmbeddedNats
from mosaic_kit.events import new_event
from mosaic_kit.nats.connection import Client, connect
from mosaic_kit.nats.jetstream import ensure_stream, publish
from mosaic_kit.nats.rpc import RpcService, serve
from mosaic_kit.problem import Problem


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class StandInAuth:
    def __init__(self) -> None:
        self.kid = "k-" + uuid.uuid4().hex[:8]
        self.private = Ed25519PrivateKey.generate()
        self.keys: dict[str, dict[str, str]] = {}
        self.verify_calls = 0
        self.nc: Client | None = None
        self.service: RpcService | None = None

    # --- what auth answers --------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        raw = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(raw),
                    "kid": self.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                }
            ]
        }

    async def _jwks(self, _payload: dict[str, Any]) -> dict[str, Any]:
        return self.jwks()

    async def _verify(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.verify_calls += 1
        found = self.keys.get(payload.get("key", ""))
        if found is None:
            raise Problem(403, "auth.apikey_invalid", "The API key is not valid")
        return found

    # --- what tests do ------------------------------------------------------------------

    def issue_key(self, name: str = "test app") -> tuple[str, str]:
        key = "mk_" + uuid.uuid4().hex + uuid.uuid4().hex
        key_id = str(uuid.uuid4())
        self.keys[key] = {"id": key_id, "name": name}
        return key, key_id

    def token(
        self,
        *,
        roles: list[str] | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        expires_in: int = 900,
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": user_id or str(uuid.uuid4()),
            "sid": session_id or str(uuid.uuid4()),
            "roles": roles if roles is not None else ["LEARNER"],
            "iat": now,
            "exp": now + expires_in,
            "iss": "mosaic-auth",
            "aud": "mosaic",
        }
        claims.update(overrides)
        return jwt.encode(claims, self.private, algorithm="EdDSA", headers={"kid": self.kid})

    def client_token(
        self,
        *,
        client_id: str | None = None,
        scopes: list[str] | tuple[str, ...] = ("blogs:read",),
        expires_in: int = 900,
        issued_at: int | None = None,
        jti: str | None = None,
        typ: str = "at+jwt",
        **overrides: Any,
    ) -> str:
        """A client-credentials access token, signed as auth signs them."""
        now = int(time.time()) if issued_at is None else issued_at
        claims: dict[str, Any] = {
            "iss": "mosaic-auth",
            "aud": ["mosaic"],
            "client_id": client_id or "cl_" + uuid.uuid4().hex[:16],
            "scope": " ".join(scopes),
            "jti": jti or str(uuid.uuid4()),
            "iat": now,
            "exp": now + expires_in,
        }
        claims.update(overrides)
        return jwt.encode(
            claims, self.private, algorithm="EdDSA", headers={"kid": self.kid, "typ": typ}
        )

    async def disable_client(self, client_id: str, tokens_valid_after: int | None = None) -> None:
        """What auth publishes when a client is disabled or deleted: its tokens issued before
        the cut-off stop working."""
        cutoff = int(time.time()) + 1 if tokens_valid_after is None else tokens_valid_after
        await self.publish(
            "auth.client.disabled", {"clientId": client_id, "tokensValidAfter": cutoff}
        )

    async def revoke_client_token(self, jti: str, expires_at: int) -> None:
        """RFC 7009 revocation of one client token."""
        await self.publish("auth.client.token_revoked", {"jti": jti, "expiresAt": expires_at})

    async def revoke_key(self, key: str) -> None:
        """What auth does on `DELETE /v1/api-keys/{id}`: forget it, then tell everyone."""
        found = self.keys.pop(key)
        await self.publish("auth.apikey.revoked", {"id": found["id"]})

    async def revoke_session(self, session_id: str) -> None:
        await self.publish(
            "auth.session.revoked",
            {"sessionId": session_id, "userId": str(uuid.uuid4()), "expiresAt": time.time() + 900},
        )

    async def publish(self, event_type: str, data: dict[str, Any]) -> None:
        assert self.nc is not None
        await publish(self.nc.jetstream(), new_event(event_type, data))

    async def start(self, url: str) -> None:
        self.nc = await connect(url, "stand-in-auth")
        await ensure_stream(self.nc.jetstream(), "auth")
        self.service = await serve(
            self.nc,
            name="auth",
            version="1.0.0",
            description="test stand-in for auth",
            endpoints={"auth.apikeys.verify": self._verify, "auth.jwks.get": self._jwks},
        )

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self.nc is not None:
            await self.nc.close()


def start_nats(directory: Path) -> EmbeddedNats:
    server = EmbeddedNats(directory)
    server.start()
    return server
