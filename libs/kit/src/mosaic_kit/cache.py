"""Shared caches for public reads: one interface, Redis or a NATS JetStream key-value bucket.

The backends are adapters: `mosaic_kit.redis.cache.RedisCache` and
`mosaic_kit.nats.kv.NatsKvCache`; `mosaic_kit.chassis.cache.cache_from_settings` picks Redis when
`REDIS_URL` is set and otherwise a JetStream key-value bucket on the service's NATS connection. Either way the cache is shared by every replica, so an
invalidation made by one replica is seen by all of them on their next read. Keys carry the
namespace given at construction (`"blog:"`), so services sharing one server never collide.

Groups of entries (listing pages, say) are invalidated without scanning keys: callers embed the
group's *generation* in their keys (`get_generation`) and a write calls `bump_generation`, which
makes every entry built on the old generation unreachable at once; those entries then expire by
their TTL. Generations are random tokens, not counters, so a generation that is lost (evicted,
expired, a NATS restart of a memory bucket) can only hide old entries, never revive them.

Failure policy -- a cache must never make a read fail, and a write must know when it could not
invalidate:

* `get` returns None and `set` is skipped when the backend fails or does not answer within
  `read_timeout`; `get_generation` then returns a throwaway generation, so the read goes to the
  source of truth. Such failures are counted and logged at warning level at most once per
  `_LOG_EVERY` seconds per operation (never with the key or the value). After a connection
  failure or a timeout, reads skip the backend for `cooldown` seconds, so an outage costs one
  timeout per cooldown rather than one per request.
* `delete` and `bump_generation` always try the backend (whatever the cooldown) and raise
  `CacheError` when it fails or does not answer within `write_timeout`: the service decides
  whether the write that needed the invalidation is rolled back, retried or reported.
  `Invalidator` is the usual answer after a commit: it bumps in the background, retrying until
  the bump lands, so a slow or frozen backend never holds a response.

Known limit of cache-aside: a read that loaded a value just before a concurrent write committed
can store it just after that write's `delete`, leaving a stale entry until its TTL. Keys that
embed a generation bumped *after* the commit do not have that race (the late entry lands under
the old generation), so keep TTLs of single-entry keys short or put them in a group.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry

from mosaic_kit import metrics
from mosaic_kit.logging import describe_error, get_logger

if TYPE_CHECKING:
    pass


__all__ = [
    "BaseCache",
    "Cache",
    "CacheError",
    "Invalidator",
    "cached",
    "new_generation",
]


_log = get_logger("mosaic_kit.cache")


_LOG_EVERY = 10.0


# Internal sub-namespaces, so that a caller's key can never name a generation and vice versa.
_VALUE = "v:"


_GENERATION = "g:"


class CacheError(Exception):
    """An invalidation (`delete`, `bump_generation`) did not reach the cache backend."""


@runtime_checkable
class Cache(Protocol):
    """A shared byte cache; see the module docstring for the failure policy."""

    async def get(self, key: str) -> bytes | None:
        """The cached value, or None on a miss or when the backend is unavailable."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds; skipped (not raised) when the backend fails."""
        ...

    async def delete(self, *keys: str) -> None:
        """Remove `keys` for every replica; raises `CacheError` when that cannot be done."""
        ...

    async def get_generation(self, group: str) -> str:
        """The current generation of `group`, to embed in the keys of its entries."""
        ...

    async def bump_generation(self, group: str) -> str:
        """Start a new generation of `group` (old entries become unreachable); raises `CacheError`."""
        ...

    async def close(self) -> None:
        """Release what the cache holds (not a connection it was given)."""
        ...


def new_generation() -> str:
    return secrets.token_hex(8)


class BaseCache(abc.ABC):
    """The failure policy, metrics and namespacing; backends implement the `_raw_*` methods."""

    backend: ClassVar[str]
    # Errors meaning the backend is unreachable or slow (as opposed to refusing one request).
    outage_errors: ClassVar[tuple[type[BaseException], ...]] = (TimeoutError, OSError)

    def __init__(
        self,
        namespace: str,
        *,
        read_timeout: float,
        write_timeout: float,
        cooldown: float,
        registry: CollectorRegistry | None,
    ) -> None:
        if read_timeout <= 0 or write_timeout <= 0 or cooldown < 0:
            raise ValueError("timeouts must be positive and cooldown not negative")
        self.namespace = namespace
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._cooldown = cooldown
        self._bypass_until = 0.0
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lookups = metrics.counter(
            "cache_lookups",
            "Cache reads by namespace and outcome (hit, miss, error).",
            ("namespace", "result"),
            registry=registry,
        )
        self._errors = metrics.counter(
            "cache_errors",
            "Cache backend failures by namespace and operation.",
            ("namespace", "operation"),
            registry=registry,
        )

    # -- backend hooks: keys arrive namespaced; errors are the public methods' business ----------

    @abc.abstractmethod
    async def _raw_get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def _raw_set(self, key: str, value: bytes, ttl: float) -> None: ...

    @abc.abstractmethod
    async def _raw_delete(self, keys: list[str]) -> None: ...

    @abc.abstractmethod
    async def _raw_get_generation(self, key: str) -> str: ...

    @abc.abstractmethod
    async def _raw_set_generation(self, key: str, generation: str) -> None: ...

    def _on_error(self, exc: BaseException) -> None:  # noqa: B027 - optional hook
        """Hook for a backend to reset state an error showed to be stale."""

    # -- the public interface --------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        if self._bypassing():
            self._lookups.labels(self.namespace, "error").inc()
            return None
        try:
            async with asyncio.timeout(self._read_timeout):
                value = await self._raw_get(self.namespace + _VALUE + key)
        except Exception as exc:
            self._read_failed("get", exc)
            self._lookups.labels(self.namespace, "error").inc()
            return None
        self._lookups.labels(self.namespace, "miss" if value is None else "hit").inc()
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0 or self._bypassing():
            return
        try:
            async with asyncio.timeout(self._read_timeout):
                await self._raw_set(self.namespace + _VALUE + key, value, ttl)
        except Exception as exc:
            self._read_failed("set", exc)

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        full = [self.namespace + _VALUE + key for key in keys]
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._raw_delete(full)
        except Exception as exc:
            raise self._write_failed("delete", exc) from exc
        self._bypass_until = 0.0

    async def get_generation(self, group: str) -> str:
        if self._bypassing():
            return new_generation()
        try:
            async with asyncio.timeout(self._read_timeout):
                return await self._raw_get_generation(self.namespace + _GENERATION + group)
        except Exception as exc:
            self._read_failed("get_generation", exc)
            # Never cached under by anyone else: the read misses, and what it stores is orphaned.
            return new_generation()

    async def bump_generation(self, group: str) -> str:
        generation = new_generation()
        try:
            async with asyncio.timeout(self._write_timeout):
                await self._raw_set_generation(self.namespace + _GENERATION + group, generation)
        except Exception as exc:
            raise self._write_failed("bump_generation", exc) from exc
        self._bypass_until = 0.0
        return generation

    # -- failure bookkeeping ---------------------------------------------------------------------

    def _bypassing(self) -> bool:
        return self._bypass_until > 0 and time.monotonic() < self._bypass_until

    def _read_failed(self, operation: str, exc: Exception) -> None:
        self._errors.labels(self.namespace, operation).inc()
        self._on_error(exc)
        if isinstance(exc, self.outage_errors):
            self._bypass_until = time.monotonic() + self._cooldown
        self._warn(operation, exc)

    def _write_failed(self, operation: str, exc: Exception) -> CacheError:
        self._errors.labels(self.namespace, operation).inc()
        self._on_error(exc)
        self._warn(operation, exc)
        return CacheError(f"cache {operation} failed on {self.backend}: {describe_error(exc)}")

    def _warn(self, operation: str, exc: Exception) -> None:
        now = time.monotonic()
        last = self._last_logged.get(operation)
        if last is not None and now - last < _LOG_EVERY:
            self._suppressed[operation] = self._suppressed.get(operation, 0) + 1
            return
        self._last_logged[operation] = now
        _log.warning(
            "cache_backend_error",
            backend=self.backend,
            namespace=self.namespace,
            operation=operation,
            error=describe_error(exc),
            suppressed=self._suppressed.pop(operation, 0),
        )


_Flight = tuple[int, int, str]


_in_flight: dict[_Flight, asyncio.Future[bytes | None]] = {}


async def cached(
    cache: Cache,
    key: str,
    ttl: float,
    load: Callable[[], Awaitable[bytes | None]],
) -> tuple[bytes | None, bool]:
    """`(value, hit)`: the cached value of `key`, else what `load()` returns (stored for `ttl`).

    A None from `load` (say, not found) is returned but not stored. Concurrent misses of the same
    key in this process share one `load()`; its exception reaches all of them. If the task
    running the load is cancelled, a waiting task takes over rather than failing.
    """
    value = await cache.get(key)
    if value is not None:
        return value, True
    flight: _Flight = (id(asyncio.get_running_loop()), id(cache), key)
    while (pending := _in_flight.get(flight)) is not None:
        try:
            return await asyncio.shield(pending), False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not pending.cancelled() or (task is not None and task.cancelling()):
                raise
            # The loading task was cancelled, not this one: load in its place.
            if _in_flight.get(flight) is pending:
                del _in_flight[flight]
    future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
    _in_flight[flight] = future
    try:
        try:
            value = await load()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unwaited failure is not reported twice
            raise
        future.set_result(value)
        if value is not None:
            # Still registered meanwhile, so later misses take the result instead of loading.
            await cache.set(key, value, ttl)
        return value, False
    finally:
        if not future.done():  # cancelled (or worse): waiters take over the load
            future.cancel()
        if _in_flight.get(flight) is future:
            del _in_flight[flight]


class Invalidator:
    """Generation bumps made after a commit, off the path of the response.

    A write calls `invalidate(group)` once its transaction committed. The group is marked and one
    background task bumps the marked groups; marks made meanwhile coalesce into the next round,
    so what is queued never exceeds one entry per group, whatever the write rate. A round that
    fails (backend down, or silent past the cache's `write_timeout`) is retried with backoff until
    it lands; the change is committed, only cached reads lag meanwhile.

    `invalidate` waits for its round at most `patience` seconds, and not at all while a round is
    overdue: normally the bump lands within that wait, so the writer's next read, on any replica,
    sees the change; when the backend hangs, the response does not wait for it. Reads of a group
    whose bump has not landed yet bypass this replica's cache (`generation`), so a writer reading
    back through the same replica never sees what it just replaced.
    """

    def __init__(
        self,
        cache: Cache,
        *,
        patience: float = 0.1,
        retry_min: float = 0.1,
        retry_max: float = 2.0,
    ) -> None:
        if patience < 0 or retry_min <= 0 or retry_max < retry_min:
            raise ValueError("patience must not be negative, retry_min positive, <= retry_max")
        self.cache = cache
        self._patience = patience
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._pending: set[str] = set()
        self._in_flight: set[str] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._round_started: float | None = None
        self._failing_since: float | None = None
        self._closed = False

    def unsettled(self, group: str) -> bool:
        """Whether a bump of `group` was asked for and has not landed yet."""
        return group in self._pending or group in self._in_flight

    async def generation(self, group: str) -> str:
        """The generation to key `group`'s entries with: a throwaway one while a bump is due."""
        if self.unsettled(group):
            return new_generation()
        return await self.cache.get_generation(group)

    async def invalidate(self, group: str) -> None:
        """Mark `group` for a new generation; wait at most `patience` seconds for it to land."""
        if self._closed:
            raise RuntimeError("the invalidator is closed")
        self._pending.add(group)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cache-invalidator")
        self._wake.set()
        if self._patience <= 0 or self._overdue():
            return
        # Only a caller that waits leaves a waiter, and drops it when it stops waiting: while the
        # backend hangs, writes leave nothing behind them.
        landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(landed)
        try:
            await asyncio.wait({landed}, timeout=self._patience)
        finally:
            landed.cancel()  # a no-op once it landed

    async def settle(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, not a deadline
        """Wait up to `timeout` seconds for every asked bump to land; whether they did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending or self._in_flight:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 - a bound
        """Give pending bumps up to `timeout` seconds to land, then stop."""
        self._closed = True
        if self._task is None:
            return
        settled = await self.settle(timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not settled:
            _log.error(
                "cache_invalidation_lost",
                namespace=getattr(self.cache, "namespace", ""),
                groups=sorted(self._pending | self._in_flight),
            )

    def _overdue(self) -> bool:
        if self._failing_since is not None:
            return True
        started = self._round_started
        return started is not None and time.monotonic() - started > self._patience

    async def _run(self) -> None:
        delay = self._retry_min
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                groups, self._pending = self._pending, set()
                waiters, self._waiters = self._waiters, []
                self._in_flight = groups
                self._round_started = time.monotonic()
                try:
                    for group in sorted(groups):
                        await self.cache.bump_generation(group)
                except asyncio.CancelledError:
                    self._pending |= groups  # closed mid-round: still owed, as `close` reports
                    raise
                except Exception:  # a CacheError is logged by the cache itself
                    # Whatever failed, this task must live on: it is the only one bumping.
                    self._pending |= groups
                    self._waiters = [w for w in waiters if not w.done()] + self._waiters
                    if self._failing_since is None:
                        self._failing_since = time.monotonic()
                        _log.warning("cache_invalidation_delayed", groups=sorted(groups))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self._retry_max)
                    continue
                finally:
                    self._in_flight = set()
                    self._round_started = None
                if self._failing_since is not None:
                    _log.info(
                        "cache_invalidation_recovered",
                        after_s=round(time.monotonic() - self._failing_since, 3),
                    )
                    self._failing_since = None
                delay = self._retry_min
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
