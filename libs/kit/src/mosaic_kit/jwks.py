"""Where token-verification keys come from, and the in-process cache of them.

The auth service publishes its Ed25519 public keys as a JWKS. Every process that verifies tokens
keeps them in a `JwksCache`, parsed once into key objects by `kid`. A token signed with a `kid` the
cache does not know (auth rotated its key) triggers a refetch; those refetches are rate-limited and
coalesced so that a flood of tokens with forged `kid`s costs auth at most one request per interval.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mosaic_kit.logging import get_logger

if TYPE_CHECKING:
    import httpx  # only the HTTP key source's type: the gateway's workers fetch keys over NATS

__all__ = [
    "ED25519_KEY_BYTES",
    "HttpKeySource",
    "JwksCache",
    "JwksUnavailable",
    "KeySource",
    "StaticKeySource",
    "parse_ed25519_jwk",
    "validate_jwks",
]

_log = get_logger("mosaic_kit.jwks")

ED25519_KEY_BYTES = 32


class KeySource(Protocol):
    """Anything that can produce the current JWKS (`{"keys": [...]}`)."""

    async def fetch(self) -> dict[str, Any]: ...


class JwksUnavailable(Exception):  # noqa: N818 - reads as a state, like asyncio.TimeoutError
    """No verification keys could be obtained from the key source."""


def validate_jwks(document: object) -> dict[str, Any]:
    """`document` if it is shaped like a JWKS, else ValueError (never trust a reply blindly)."""
    if not isinstance(document, Mapping):
        raise ValueError("JWKS must be a JSON object")
    keys = document.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, Mapping) for k in keys):
        raise ValueError("JWKS 'keys' must be a list of objects")
    return {"keys": [dict(k) for k in keys]}


class StaticKeySource:
    """A JWKS held in memory: the auth service's own keys, and tests.

    `jwks` may be replaced with `update` to simulate (or perform) a key rotation.
    """

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._jwks = validate_jwks(jwks)
        self.fetches = 0

    def update(self, jwks: Mapping[str, Any]) -> None:
        self._jwks = validate_jwks(jwks)

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": [dict(k) for k in self._jwks["keys"]]}


class HttpKeySource:
    """The JWKS from an HTTP endpoint, e.g. auth's `GET /v1/auth/jwks.json`.

    The caller owns `client` (connection pool, timeouts, TLS settings) and closes it.
    """

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self._url = url
        self._client = client

    async def fetch(self) -> dict[str, Any]:
        response = await self._client.get(self._url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return validate_jwks(response.json())


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url_decode(value: str) -> bytes:
    # The stdlib decoder silently skips foreign characters; a key must be exactly what was sent.
    if not _B64URL.fullmatch(value):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def parse_ed25519_jwk(jwk: Mapping[str, Any]) -> tuple[str, Ed25519PublicKey]:
    """(kid, public key) of a signing JWK, or ValueError for anything but an Ed25519 key.

    Only the public `x` is read: a `d` published by mistake is ignored, never used.
    """
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("JWK without a kid")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError(f"JWK {kid} is not an Ed25519 key")
    if jwk.get("alg", "EdDSA") != "EdDSA" or jwk.get("use", "sig") != "sig":
        raise ValueError(f"JWK {kid} is not an EdDSA signing key")
    x = jwk.get("x")
    if not isinstance(x, str):
        raise ValueError(f"JWK {kid} has no public key")
    try:
        raw = _b64url_decode(x)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"JWK {kid} public key is not base64url") from exc
    if len(raw) != ED25519_KEY_BYTES:
        raise ValueError(f"JWK {kid} public key has the wrong length")
    return kid, Ed25519PublicKey.from_public_bytes(raw)


def _usable_keys(document: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in document["keys"]:
        try:
            kid, key = parse_ed25519_jwk(jwk)
        except ValueError as exc:
            _log.warning("jwks_key_skipped", reason=str(exc))
            continue
        keys[kid] = key
    if not keys:
        # Auth always publishes its signing key; an empty set is a fault upstream, and
        # installing it would reject every token (even cached ones) until the next fetch.
        raise ValueError("JWKS has no usable Ed25519 key")
    return keys


class JwksCache:
    """Verification keys by kid, refetched from `source` when an unknown kid shows up.

    - `get_key` of a known kid is a dict lookup.
    - An unknown kid triggers a refetch at most once per `min_refresh_interval` seconds; callers
      arriving while a fetch is running wait for that same fetch rather than start their own.
    - A failed fetch keeps the keys already known and also waits out the interval before retrying,
      so an unreachable auth service is not hammered either. While no key set was ever loaded
      (a service that started before auth), the wait is `unloaded_retry_interval` instead.
    - A successful fetch replaces the whole set: a key auth stops publishing stops verifying.
      A JWKS without any usable key counts as a failed fetch.
    - `start_refreshing` optionally refetches in the background every `interval` seconds.
    """

    def __init__(
        self,
        source: KeySource,
        *,
        min_refresh_interval: float = 10.0,
        unloaded_retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._min_interval = min_refresh_interval
        self._unloaded_retry = min(unloaded_retry_interval, min_refresh_interval)
        self._clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._loaded = False
        self._next_refetch_at = float("-inf")
        self._inflight: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.fetch_count = 0

    @property
    def loaded(self) -> bool:
        """Whether at least one fetch has succeeded."""
        return self._loaded

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def has_kid(self, kid: str) -> bool:
        return kid in self._keys

    def peek(self, kid: str) -> Ed25519PublicKey | None:
        """The key for `kid` if already known; never fetches."""
        return self._keys.get(kid)

    async def get_key(self, kid: str) -> Ed25519PublicKey | None:
        """The key for `kid`, refetching once if it is unknown and the rate limit allows.

        Raises JwksUnavailable when no key set was ever loaded and none can be fetched now.
        None means the kid is not (or not yet, because of the rate limit) among auth's keys.
        """
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._inflight is None:
            if self._loaded and self._clock() < self._next_refetch_at:
                return None
            if self._loaded:
                # Only refetches caused by unknown kids count against the limit: a forged kid
                # flood is what it guards against; the first load and periodic refreshes do not.
                self._next_refetch_at = self._clock() + self._min_interval
            elif self._clock() < self._next_refetch_at:
                raise JwksUnavailable("verification keys are not loaded yet")
        try:
            await self._shared_fetch()
        except Exception as exc:
            if not self._loaded:
                raise JwksUnavailable("verification keys could not be fetched") from exc
            return None
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch now (sharing a fetch already running); raises if the source fails."""
        await self._shared_fetch()

    async def _shared_fetch(self) -> None:
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        # Shielded: one waiting request being cancelled must not abort the fetch for the others.
        await asyncio.shield(self._inflight)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            # Retrieve the exception so an unawaited failure is not reported as "never retrieved".
            task.exception()

    async def _fetch(self) -> None:
        self.fetch_count += 1
        try:
            keys = _usable_keys(validate_jwks(await self._source.fetch()))
        except Exception as exc:
            # With no keys at all every request fails, so retry soon (a service that starts
            # before auth must not refuse tokens for long); with keys, keep to the interval.
            wait = self._min_interval if self._loaded else self._unloaded_retry
            self._next_refetch_at = self._clock() + wait
            _log.warning("jwks_fetch_failed", error=type(exc).__name__, detail=str(exc)[:200])
            raise
        self._install(keys)

    def _install(self, keys: dict[str, Ed25519PublicKey]) -> None:
        added = keys.keys() - self._keys.keys()
        removed = self._keys.keys() - keys.keys()
        if added or removed:
            _log.info("jwks_updated", added=sorted(added), removed=sorted(removed))
        self._keys = keys
        self._loaded = True

    def start_refreshing(self, interval: float) -> None:
        """Refetch every `interval` seconds in the background until `aclose`."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_loop(interval))

    async def _refresh_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            # Failures are already logged by _fetch; the known keys stay in use.
            with contextlib.suppress(Exception):
                await self.refresh()

    async def aclose(self) -> None:
        """Stop background refreshing and any fetch in flight."""
        for task in (self._refresher, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._refresher = None
        self._inflight = None
