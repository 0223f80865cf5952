"""The shared cache on a Redis server: a `mosaic_kit.cache.BaseCache` backend."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis.exceptions
from prometheus_client import CollectorRegistry
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

if TYPE_CHECKING:
    pass

from mosaic_kit.cache import BaseCache, new_generation

__all__ = ["RedisCache"]


def _redact_redis_url(url: str) -> str:
    parsed = urlsplit(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.hostname or ''}{port}{parsed.path}"


def _as_bytes(value: bytes | str | None) -> bytes | None:
    # The pool is built without `decode_responses`, so replies are bytes; typed as either.
    return value.encode() if isinstance(value, str) else value


class RedisCache(BaseCache):
    """A cache in Redis (`redis://`, `rediss://` or `unix://` URL), with a bounded pool.

    Expiry is Redis' own (`PX`). Generation keys live `generation_ttl` seconds after their last
    bump; their expiry only hides old entries of the group.
    """

    backend = "redis"
    outage_errors = (
        TimeoutError,
        OSError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    )

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        read_timeout: float = 0.5,
        write_timeout: float = 2.0,
        connect_timeout: float = 0.5,
        cooldown: float = 1.0,
        max_connections: int = 32,
        generation_ttl: float = 86_400.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        super().__init__(
            namespace,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            cooldown=cooldown,
            registry=registry,
        )
        self._generation_ms = max(1, int(generation_ttl * 1000))
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            # How long a command waits for a free connection when all are busy.
            timeout=write_timeout,
            socket_timeout=write_timeout,
            socket_connect_timeout=connect_timeout,
            # One immediate retry, on connection errors only: it replaces a pooled connection the
            # server closed (a Redis restart) without doubling the wait on a server that is slow.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            health_check_interval=30,
        )
        self._redis: Redis = Redis.from_pool(pool)
        self.where = _redact_redis_url(url)

    async def _raw_get(self, key: str) -> bytes | None:
        return _as_bytes(await self._redis.get(key))

    async def _raw_set(self, key: str, value: bytes, ttl: float) -> None:
        await self._redis.set(key, value, px=max(1, math.ceil(ttl * 1000)))

    async def _raw_delete(self, keys: list[str]) -> None:
        await self._redis.unlink(*keys)

    async def _raw_get_generation(self, key: str) -> str:
        current = _as_bytes(await self._redis.get(key))
        if current is None:
            # First reader of the group: all replicas must agree, so the first SET NX wins and
            # every racer reads back the winner's token in the same transaction.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, new_generation(), nx=True, px=self._generation_ms)
                pipe.get(key)
                _, stored = await pipe.execute()
            current = _as_bytes(stored)
        if current is None:  # evicted between SET and GET: behave as a failed read
            return new_generation()
        return current.decode()

    async def _raw_set_generation(self, key: str, generation: str) -> None:
        await self._redis.set(key, generation, px=self._generation_ms)

    async def close(self) -> None:
        await self._redis.aclose()
