"""Access tokens (short-lived JWTs) and refresh tokens (opaque, rotated on every use).

Two kinds of access token, signed with the same keys and published in the same JWKS: a user's
(`sub`, `sid`, `roles`) and a client application's (OAuth2 client credentials, RFC 9068:
`typ: at+jwt`, `client_id`, `scope`, `jti`, no `sub`), told apart by `mosaic_kit.tokens`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import jwt

from mosaic_auth.keys import ALGORITHM, KeyPair
from mosaic_kit.tokens import CLIENT_TOKEN_TYPE


@dataclass(frozen=True)
class ClientToken:
    """A client-credentials access token, with what revocation and the answer need of it."""

    token: str
    jti: str
    issued_at: int
    expires_at: int


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    refresh_token: str
    expires_in: int

    def to_json(self) -> dict[str, object]:
        return {
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token,
            "tokenType": "Bearer",
            "expiresIn": self.expires_in,
        }


def new_refresh_token() -> tuple[str, bytes]:
    """A refresh token and the hash under which it is stored (the token itself never is)."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> bytes:
    # 256 random bits need no slow hash: a fast digest cannot be brute-forced back.
    return hashlib.sha256(token.encode()).digest()


def epoch_ceil(ts: float) -> int:
    return math.ceil(ts)


class Signer:
    """Signs access tokens with the active key, re-reading it now and then.

    Another replica (or `rotate-keys`) may rotate the key; tokens signed with the previous key
    stay valid because retired keys stay in the JWKS until those tokens have expired.
    """

    def __init__(
        self,
        load_active: Callable[[], Awaitable[KeyPair]],
        *,
        issuer: str,
        audience: str,
        ttl: int,
        refresh_interval: float,
    ) -> None:
        self._load_active = load_active
        self._issuer = issuer
        self._audience = audience
        self.ttl = ttl
        self._refresh_interval = refresh_interval
        self._key: KeyPair | None = None
        self._loaded_at = 0.0

    async def key(self) -> KeyPair:
        now = time.monotonic()
        if self._key is None or now - self._loaded_at > self._refresh_interval:
            self._key = await self._load_active()
            self._loaded_at = now
        return self._key

    def forget_key(self) -> None:
        self._key = None

    async def access_token(
        self, user_id: uuid.UUID, roles: Iterable[str], session_id: uuid.UUID, not_before: int
    ) -> str:
        key = await self.key()
        # iat never precedes the user's tokens_valid_after, so a token minted right after a role
        # change within the same second is not mistaken for one minted before it.
        iat = max(int(time.time()), not_before)
        claims = {
            "sub": str(user_id),
            "roles": sorted(roles),
            "sid": str(session_id),
            "iat": iat,
            "exp": iat + self.ttl,
            "iss": self._issuer,
            "aud": self._audience,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})

    async def client_token(
        self,
        client_id: uuid.UUID,
        scopes: Iterable[str],
        audience: Iterable[str],
        not_before: int,
        ttl: int,
    ) -> ClientToken:
        """A client application's token (the shared contract, `mosaic_kit.tokens`): `aud` holds
        the platform audience first, then the client's registered ones."""
        key = await self.key()
        # As for users: never before the client's cut-off, so a token minted in the second the
        # client was enabled again is not taken for one minted before it was disabled.
        iat = max(int(time.time()), not_before)
        jti = str(uuid.uuid4())
        claims = {
            "iss": self._issuer,
            "aud": [self._audience, *(a for a in audience if a != self._audience)],
            "client_id": str(client_id),
            "scope": " ".join(scopes),
            "jti": jti,
            "iat": iat,
            "exp": iat + ttl,
        }
        token = jwt.encode(
            claims,
            key.private_key,
            algorithm=ALGORITHM,
            headers={"kid": key.kid, "typ": CLIENT_TOKEN_TYPE},
        )
        return ClientToken(token, jti, iat, iat + ttl)


def next_cutoff(tokens_valid_after: int) -> int:
    """A `tokens_valid_after` later than the `iat` of every token issued so far (a user's or a
    client's).

    Tokens are minted with `iat = max(now, tokens_valid_after)`, so one second past the larger of
    the two rejects them all, even those minted within the current second; tokens minted from now
    on carry an `iat` at or after the new cut-off and pass.
    """
    return max(int(time.time()), tokens_valid_after) + 1
