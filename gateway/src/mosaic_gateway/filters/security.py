"""A worker's credential services: the API key verifier, the token verifier and the shared
rate-limit stores, created on first use by a route's filters (pipeline.py).

They are per worker (on the `WorkerContext`) and outlive configuration reloads: caches and
revocation state are not rebuilt when routes change.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from mosaic_gateway.config import RateLimitsSpec, SecuritySpec
from mosaic_gateway.filters.apikeys import ApiKeyVerifier
from mosaic_gateway.filters.ratelimit import NatsKvWindowCounter, RedisWindowCounter, WindowCounter
from mosaic_kit.jwks import JwksCache
from mosaic_kit.logging import get_logger
from mosaic_kit.nats.keys import NatsKeySource
from mosaic_kit.nats.revocation import RevocationFeed, follow_revocations
from mosaic_kit.revocation import RevocationSet
from mosaic_kit.tokens import TokenVerifier

if TYPE_CHECKING:
    from mosaic_gateway.filters.context import WorkerContext

__all__ = ["SecurityServices"]

_log = get_logger("mosaic_gateway.filters.security")


class SecurityServices:
    """A worker's API key verifier and token verifier, created on first use by a route."""

    def __init__(self, context: WorkerContext, settings: SecuritySpec) -> None:
        self._context = context
        self._settings = settings
        self._api_keys: ApiKeyVerifier | None = None
        self._tokens: TokenVerifier | None = None
        self._jwks: JwksCache | None = None
        self._feed: RevocationFeed | None = None
        self._started_keys = False
        self._started_tokens = False
        self.counters: dict[str, WindowCounter] = {}

    @property
    def api_keys(self) -> ApiKeyVerifier:
        if self._api_keys is None:
            spec = self._settings.api_keys
            self._api_keys = ApiKeyVerifier(
                self._context.nats,
                ttl=spec.ttl,
                negative_ttl=spec.negative_ttl,
                max_entries=spec.max_entries,
                timeout=spec.timeout,
            )
        return self._api_keys

    @property
    def tokens(self) -> TokenVerifier:
        if self._tokens is None:
            spec = self._settings.jwt
            self._jwks = JwksCache(NatsKeySource(self._context.nats, timeout=2.0))
            self._tokens = TokenVerifier(
                self._jwks,
                revocations=RevocationSet(max_token_ttl=timedelta(seconds=spec.max_token_ttl)),
                issuer=spec.issuer,
                audience=spec.audience,
                leeway=spec.leeway,
                cache_size=spec.cache_size,
            )
        return self._tokens

    def counter(self, spec: RateLimitsSpec) -> WindowCounter:
        """The shared-limit store (one per worker)."""
        name = spec.store or ""
        found = self.counters.get(name)
        if found is None:
            if spec.store == "redis":
                assert spec.redis_url is not None  # checked with the configuration
                found = RedisWindowCounter.from_url(spec.redis_url, timeout=spec.timeout)
            else:
                found = NatsKvWindowCounter(self._context.js, bucket=spec.bucket)
            self.counters[name] = found
        return found

    async def start(self) -> None:
        """Follow the revocation feeds of whatever verifier routes use (idempotent)."""
        if self._api_keys is not None and not self._started_keys:
            self._started_keys = True
            await self._api_keys.start(self._context.js)
        if self._tokens is not None and not self._started_tokens:
            self._started_tokens = True
            assert self._jwks is not None
            try:
                await self._jwks.refresh()
            except Exception as exc:  # auth may start later; keys are fetched on first use
                _log.warning("jwks_not_loaded_at_start", error=type(exc).__name__)
            self._feed = await follow_revocations(
                self._context.js,
                self._tokens.revocations,
                since=timedelta(seconds=self._settings.jwt.max_token_ttl),
            )

    async def stop(self) -> None:
        if self._api_keys is not None:
            await self._api_keys.stop()
        if self._feed is not None:
            await self._feed.stop()
        if self._jwks is not None:
            await self._jwks.aclose()
        for counter in self.counters.values():
            await counter.close()
        self.counters.clear()
