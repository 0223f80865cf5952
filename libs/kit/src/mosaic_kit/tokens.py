"""Verifying Mosaic access tokens: `TokenVerifier` and the `Principal` it yields.

Free of any web framework, so the gateway's workers use the very same verifier as the services
(`mosaic_kit.fastapi.auth` adds the FastAPI dependencies on top). A rejected token raises a `Problem`
(401, or 503 when the signing keys cannot be fetched) saying why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from jwt.types import Options

from mosaic_kit.jwks import JwksCache, JwksUnavailable
from mosaic_kit.logging import get_logger
from mosaic_kit.problem import Problem
from mosaic_kit.revocation import RevocationSet

__all__ = [
    "ALGORITHM",
    "MAX_TOKEN_LENGTH",
    "Principal",
    "TokenVerifier",
    "token_expired",
    "token_invalid",
    "token_missing",
    "token_revoked",
]

_log = get_logger("mosaic_kit.tokens")

ALGORITHM = "EdDSA"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# Far above any token auth issues; bounds the work a junk header can cause.
MAX_TOKEN_LENGTH = 8192
_REQUIRED_CLAIMS = ["sub", "sid", "roles", "iat", "exp", "iss", "aud"]
# Time claims are checked below against one clock shared with the cache path.
_DECODE_OPTIONS: Options = {
    "require": _REQUIRED_CLAIMS,
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request, as stated by a verified access token.

    Times are epoch seconds as in the token. `token_hash` is the SHA-256 (hex) of the token, usable
    to correlate without ever keeping or logging the token itself.
    """

    user_id: str
    roles: frozenset[str]
    session_id: str
    issued_at: int
    expires_at: int
    token_hash: str | None = None

    def has_any_role(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)


def _unauthorized(code: str, detail: str) -> Problem:
    return Problem(401, code, detail, headers=_CHALLENGE)


def token_missing() -> Problem:
    return _unauthorized("auth.token_missing", "A bearer token is required")


def token_invalid(detail: str = "The bearer token is not valid") -> Problem:
    return _unauthorized("auth.token_invalid", detail)


def token_expired() -> Problem:
    return _unauthorized("auth.token_expired", "The bearer token has expired")


def token_revoked() -> Problem:
    return _unauthorized("auth.token_revoked", "The bearer token has been revoked")


def _epoch_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise token_invalid(f"The token's {name} claim is not a number")
    return int(value)


_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_MAX_HEADER_LENGTH = 1024


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to choose the key; PyJWT re-reads it under the signature.

    Done here rather than with `jwt.get_unverified_header` because that parses the whole token,
    which `jwt.decode` then does again: a third of the cost of a cold verification.
    """
    segment, dot, rest = token.partition(".")
    if not dot or rest.count(".") != 1 or len(segment) > _MAX_HEADER_LENGTH:
        raise token_invalid("The bearer token is malformed")
    if not _B64URL.fullmatch(segment):
        raise token_invalid("The bearer token is malformed")
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise token_invalid("The bearer token is malformed") from None
    if not isinstance(header, dict):
        raise token_invalid("The bearer token is malformed")
    return header


@dataclass(slots=True)
class _Verified:
    principal: Principal
    kid: str


class TokenVerifier:
    """Verifies Mosaic access tokens; `verify` is the only method a request path needs.

    Accepts exactly EdDSA signatures by a key in `jwks` with a `kid` header, and requires `iss`,
    `aud`, `sub`, `sid`, `roles`, `iat` and `exp`. `leeway` (seconds) absorbs clock skew on `exp`,
    `iat` and `nbf`. Up to `cache_size` verified tokens are remembered (least recently used
    evicted first; 0 disables the cache).
    """

    def __init__(
        self,
        jwks: JwksCache,
        *,
        revocations: RevocationSet,
        issuer: str = "mosaic-auth",
        audience: str = "mosaic",
        leeway: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.jwks = jwks
        self.revocations = revocations
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        # Plain counters (cheap on the hot path) for metrics and tests.
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def cached(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    def verify_cached(self, token: str | None) -> Principal | None:
        """`verify` without I/O: the principal of a token verified before, or None when the
        signature must be checked (then call `verify`). Raises the same problems."""
        if not token:
            raise token_missing()
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise token_invalid("The bearer token is malformed")
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is None:
            return None
        principal = hit.principal
        # A key auth withdrew (e.g. compromised) must stop vouching for tokens at once.
        if principal.expires_at > self._clock() - self._leeway and self.jwks.has_kid(hit.kid):
            self._cache.move_to_end(digest)
            self.cache_hits += 1
            if self.revocations.is_revoked(principal):
                raise token_revoked()
            return principal
        return None

    async def verify(self, token: str | None) -> Principal:
        """The principal of `token`, or a 401 Problem saying why it is not acceptable."""
        principal = self.verify_cached(token)
        if principal is not None:
            return principal
        assert token is not None  # verify_cached raised otherwise
        digest = hashlib.sha256(token.encode()).digest()
        self._cache.pop(digest, None)  # expired, or its key was withdrawn
        self.cache_misses += 1
        verified = await self._verify_signed(token, digest)
        if self.revocations.is_revoked(verified.principal):
            raise token_revoked()
        if self._cache_size:
            self._cache[digest] = verified
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verified.principal

    async def _verify_signed(self, token: str, digest: bytes) -> _Verified:
        header = _unverified_header(token)
        # Decided before any key lookup, so alg-confusion tokens cannot even trigger a refetch.
        if header.get("alg") != ALGORITHM:
            raise token_invalid("The bearer token is not signed with an accepted algorithm")
        # Auth never issues JWS extensions; refusing them keeps odd forms (RFC 7797) out.
        if "crit" in header or "b64" in header:
            raise token_invalid("The bearer token uses unsupported header parameters")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise token_invalid("The bearer token has no key id")
        try:
            key = await self.jwks.get_key(kid)
        except JwksUnavailable:
            # Not the client's fault: a 401 would make it discard a token that may be fine.
            raise Problem(
                503, "auth.keys_unavailable", "Tokens cannot be verified right now"
            ) from None
        if key is None:
            raise token_invalid("The bearer token is signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options=_DECODE_OPTIONS,
            )
        except jwt.PyJWTError as exc:
            _log.debug("token_rejected", reason=type(exc).__name__)
            raise token_invalid() from None
        return _Verified(self._principal(claims, digest), kid)

    def _principal(self, claims: Mapping[str, Any], digest: bytes) -> Principal:
        now = self._clock()
        expires_at = _epoch_claim(claims, "exp")
        issued_at = _epoch_claim(claims, "iat")
        if expires_at <= now - self._leeway:
            raise token_expired()
        if issued_at > now + self._leeway:
            raise token_invalid("The bearer token is not valid yet")
        if "nbf" in claims and _epoch_claim(claims, "nbf") > now + self._leeway:
            raise token_invalid("The bearer token is not valid yet")
        sub, sid, roles = claims["sub"], claims["sid"], claims["roles"]
        if not isinstance(sub, str) or not sub or not isinstance(sid, str) or not sid:
            raise token_invalid("The bearer token has no subject or session")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise token_invalid("The bearer token's roles are not a list of strings")
        return Principal(
            user_id=sub,
            roles=frozenset(roles),
            session_id=sid,
            issued_at=issued_at,
            expires_at=expires_at,
            token_hash=digest.hex(),
        )
