"""Which shared cache a service gets: Redis when `REDIS_URL` is set, else NATS KV."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from mosaic_kit.logging import describe_error, get_logger

if TYPE_CHECKING:
    from nats.aio.client import Client

    from mosaic_kit.settings import ServiceSettings

from mosaic_kit.cache import Cache
from mosaic_kit.nats.kv import NatsKvCache

_log = get_logger("mosaic_kit.cache")

__all__ = ["cache_from_settings"]


async def cache_from_settings(
    settings: ServiceSettings,
    nc: Client | None,
    namespace: str,
    *,
    bucket: str = "mosaic_cache",
    max_ttl: float = 3600.0,
    registry: CollectorRegistry | None = None,
) -> Cache:
    """Redis when `settings.redis_url` is set, else a JetStream KV bucket on `nc`.

    The NATS bucket is created here when possible; if JetStream does not answer yet, the cache
    is returned anyway (reads miss until it does) rather than failing the service's start.
    """
    url = settings.redis_url.get_secret_value().strip() if settings.redis_url else ""
    if url:
        # Imported when used: the Redis client is a third of a second of every start without it.
        from mosaic_kit.redis.cache import RedisCache

        redis_cache = RedisCache(url, namespace, registry=registry)
        _log.info("cache_backend", backend="redis", server=redis_cache.where, namespace=namespace)
        return redis_cache
    if nc is None:
        raise ValueError("REDIS_URL is not set and no NATS connection was given for the cache")
    kv_cache = NatsKvCache(nc.jetstream(), bucket, namespace, max_ttl, registry=registry)
    try:
        async with asyncio.timeout(settings.nats_request_timeout):
            await kv_cache.ensure()
    except Exception as exc:
        _log.warning("cache_bucket_unavailable", bucket=bucket, error=describe_error(exc))
    _log.info(
        "cache_backend",
        backend="nats-kv",
        bucket=bucket,
        namespace=namespace,
        per_key_ttl=kv_cache.per_key_ttl,
    )
    return kv_cache
