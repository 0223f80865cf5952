"""Verifying Mosaic access tokens: `TokenVerifier` and the principals it yields.

Two kinds of token are signed by auth with the same keys: a user's (`sub`, `sid`, `roles`: a
`Principal`) and a third-party application's, from the OAuth2 client-credentials grant (RFC 9068:
`typ: at+jwt`, `client_id`, `scope`, `jti`, and no `sub`: a `ClientPrincipal`). `verify` accepts
only the first (every service route acting for a user); `verify_any` either, for the gateway's
routes open to client applications.

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
    "CLIENT_TOKEN_TYPE",
    "MAX_TOKEN_LENGTH",
    "AnyPrincipal",
    "ClientPrincipal",
    "Principal",
    "TokenVerifier",
    "client_token_refused",
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
# The kind's own claims are checked in `_principal`: a user's `sub`, `sid`, `roles`; a client's
# `client_id`, `scope`, `jti`.
_REQUIRED_CLAIMS = ["iat", "exp", "iss", "aud"]
# RFC 9068 §2.1: the media type of an access token in JWT form ("application/" may be omitted).
CLIENT_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type
_CLIENT_TYPES = frozenset({CLIENT_TOKEN_TYPE, "application/at+jwt"})
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


@dataclass(frozen=True, slots=True)
class ClientPrincipal:
    """A third-party application, as stated by a verified client-credentials token.

    `token_id` is the token's `jti` (what RFC 7009 revocation names); `scopes` what the token was
    granted, a subset of what the client is registered for."""

    client_id: str
    scopes: frozenset[str]
    token_id: str
    issued_at: int
    expires_at: int
    token_hash: str | None = None

    def has_any_scope(self, *scopes: str) -> bool:
        return not self.scopes.isdisjoint(scopes)

    def has_all_scopes(self, *scopes: str) -> bool:
        return self.scopes.issuperset(scopes)


AnyPrincipal = Principal | ClientPrincipal


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


def client_token_refused() -> Problem:
    return _unauthorized(
        "auth.token_invalid", "A client application's token is not accepted here: sign in"
    )


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
    principal: AnyPrincipal
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
        principal = self.verify_cached_any(token)
        # Inline rather than `_user`: this is every authenticated request's path.
        if principal is None or type(principal) is Principal:
            return principal
        raise client_token_refused()

    async def verify(self, token: str | None) -> Principal:
        """The user `token` was issued to, or a 401 Problem saying why it is not acceptable
        (a client application's token among the reasons)."""
        principal = _user(await self.verify_any(token))
        assert principal is not None
        return principal

    def verify_cached_any(self, token: str | None) -> AnyPrincipal | None:
        """`verify_any` without I/O: None when the signature must be checked."""
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
            revocations = self.revocations
            if (
                revocations.is_revoked(principal)
                if type(principal) is Principal
                else revocations.is_client_revoked(principal)  # type: ignore[arg-type]
            ):
                raise token_revoked()
            return principal
        return None

    async def verify_any(self, token: str | None) -> AnyPrincipal:
        """The user or the client application `token` was issued to, or a 401 Problem."""
        principal = self.verify_cached_any(token)
        if principal is not None:
            return principal
        assert token is not None  # verify_cached_any raised otherwise
        digest = hashlib.sha256(token.encode()).digest()
        self._cache.pop(digest, None)  # expired, or its key was withdrawn
        self.cache_misses += 1
        verified = await self._verify_signed(token, digest)
        if self._revoked(verified.principal):
            raise token_revoked()
        if self._cache_size:
            self._cache[digest] = verified
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verified.principal

    def _revoked(self, principal: AnyPrincipal) -> bool:
        if isinstance(principal, Principal):
            return self.revocations.is_revoked(principal)
        return self.revocations.is_client_revoked(principal)

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
        return _Verified(self._principal(claims, digest, header.get("typ")), kid)

    def _principal(self, claims: Mapping[str, Any], digest: bytes, typ: object) -> AnyPrincipal:
        now = self._clock()
        expires_at = _epoch_claim(claims, "exp")
        issued_at = _epoch_claim(claims, "iat")
        if expires_at <= now - self._leeway:
            raise token_expired()
        if issued_at > now + self._leeway:
            raise token_invalid("The bearer token is not valid yet")
        if "nbf" in claims and _epoch_claim(claims, "nbf") > now + self._leeway:
            raise token_invalid("The bearer token is not valid yet")
        if "sub" not in claims and "client_id" in claims:
            return _client(claims, digest, typ, issued_at, expires_at)
        sub, sid, roles = claims.get("sub"), claims.get("sid"), claims.get("roles")
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


def _client(
    claims: Mapping[str, Any], digest: bytes, typ: object, issued_at: int, expires_at: int
) -> ClientPrincipal:
    # RFC 9068 §4: a resource server rejects a JWT access token without the right `typ`, so
    # that no other JWT signed by the same keys (an ID token, say) passes for one.
    if not isinstance(typ, str) or typ.lower() not in _CLIENT_TYPES:
        raise token_invalid("The client token is not typed at+jwt")
    client_id, scope, jti = claims.get("client_id"), claims.get("scope"), claims.get("jti")
    if not isinstance(client_id, str) or not client_id or not isinstance(jti, str) or not jti:
        raise token_invalid("The client token has no client_id or jti")
    if not isinstance(scope, str):
        raise token_invalid("The client token's scope is not a string")
    return ClientPrincipal(
        client_id=client_id,
        scopes=frozenset(scope.split()),
        token_id=jti,
        issued_at=issued_at,
        expires_at=expires_at,
        token_hash=digest.hex(),
    )


def _user(principal: AnyPrincipal | None) -> Principal | None:
    if principal is None or isinstance(principal, Principal):
        return principal
    raise client_token_refused()
