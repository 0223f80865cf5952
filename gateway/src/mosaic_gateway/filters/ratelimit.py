"""Rate limits per route and per client (API key id, user id or address): 429 + `Retry-After`.

A route gets its own limiter, built once per configuration, so routes never share a budget; the
client key (chosen by the route's configuration) selects the budget inside it.

**Local** (`LocalRateLimiter`): a token bucket per client, kept in this worker process. It is
implemented as GCRA ("generic cell rate algorithm"), the token bucket written as one number per
client -- the theoretical arrival time of the next request -- so a check is one clock read, one
dict lookup and one float store, with no per-client object. Buckets of clients not seen recently
are evicted first (LRU, bounded by `max_clients`); a bucket of a client idle for `per` seconds is
full again anyway, so eviction only loses state when more than `max_clients` clients are limited
at the same moment. Each worker process has its own buckets: with W workers behind one port a
client may get up to W times the budget (the kernel spreads connections, not clients).

**Shared** (`SharedRateLimiter`): one budget across every worker and gateway replica, counted in
Redis or a NATS JetStream key-value bucket (the backends of `mosaic_kit.cache`). It uses fixed
windows: a counter per client and window of `per` seconds, named after the window's index.
Accuracy trade-offs, all deliberate:

* A fixed window admits up to `requests` at the end of one window and `requests` more at the
  start of the next: up to twice the limit within one `per` span around a boundary. `burst` does
  not apply. In exchange a check is one atomic increment.
* Redis takes the window boundaries from the server's clock (`TIME` inside the Lua script), so
  every replica agrees. NATS KV has no such clock: replicas use their own wall clocks, and a skew
  of s seconds moves their boundaries by s.
* Allowed requests wait for the increment (one round trip; NATS KV: one, or two under
  contention between replicas). Within a process, hits on the same key while an increment is in
  flight are summed into the next one (at most one in flight per key), so a busy client costs
  one round trip per round-trip time, not per request, with no loss of accuracy.
* Once a client is refused in a window, it is refused locally until the window ends without
  asking the backend again: counts only grow within a window, so this is exact.
* When the backend fails or does not answer within `timeout`, the limiter falls back to a local
  token bucket with the same budget (so, per worker) for `cooldown` seconds: rate limiting
  degrades to per-process accuracy rather than failing requests or letting everything through.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.kv import KeyValue

from mosaic_gateway.http.problems import GatewayProblem
from mosaic_kit.logging import get_logger
from mosaic_kit.nats.kv import encode_kv_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "RATE_LIMITED",
    "LocalRateLimiter",
    "NatsKvWindowCounter",
    "RateLimit",
    "RedisWindowCounter",
    "SharedRateLimiter",
    "WindowCounter",
    "retry_after_header",
]

_log = get_logger("mosaic_gateway.filters.ratelimit")

RATE_LIMITED = GatewayProblem(429, "gateway.rate_limited", "Too many requests; retry later")

ClientKey = str | bytes

_LOG_EVERY = 10.0
_MAX_RETRY_AFTER = 86_400


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`requests` per `per` seconds; locally, up to `burst` of them at once (default: all)."""

    requests: int
    per: float
    burst: int | None = None

    def __post_init__(self) -> None:
        if self.requests < 1 or self.per <= 0:
            raise ValueError("a rate limit needs requests >= 1 and a positive period")
        if self.burst is not None and self.burst < 1:
            raise ValueError("burst must be at least 1")


def retry_after_header(wait: float) -> tuple[bytes, bytes]:
    """The `Retry-After` header for a wait of `wait` seconds (whole seconds, rounded up, >= 1)."""
    seconds = min(_MAX_RETRY_AFTER, max(1, math.ceil(wait)))
    return (b"retry-after", b"%d" % seconds)


# ----------------------------------------------------------------------------------------- local


class LocalRateLimiter:
    """A token bucket per client in this process; `hit` is the whole request-path API."""

    __slots__ = ("_clock", "_interval", "_max_clients", "_tat", "_tolerance", "limit")

    def __init__(
        self,
        limit: RateLimit,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.limit = limit
        # One request "costs" `interval` seconds of budget; a full bucket holds `burst` of them.
        self._interval = limit.per / limit.requests
        burst = limit.requests if limit.burst is None else limit.burst
        self._tolerance = self._interval * (burst - 1)
        self._max_clients = max_clients
        self._clock = clock
        # client -> theoretical arrival time of its next request; ordered least recently used
        # first. OrderedDict rather than dict: popping the oldest stays O(1) under churn.
        self._tat: OrderedDict[ClientKey, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tat)

    def hit(self, client: ClientKey) -> float:
        """0.0 if `client` may make a request now (and count it), else seconds until it may."""
        now = self._clock()
        buckets = self._tat
        tat = buckets.get(client)
        if tat is None:
            tat = now
            if len(buckets) >= self._max_clients:
                buckets.popitem(last=False)
        else:
            # Recently seen, refused or not: a client being limited right now is the last one
            # whose state may be evicted (evicting it would hand it a full bucket).
            buckets.move_to_end(client)
            if tat < now:
                tat = now
            else:
                wait = tat - self._tolerance - now
                if wait > 0:
                    # Refused requests cost nothing: a client hammering while limited is not
                    # pushed further back, it gets in as soon as its budget allows.
                    return wait
        buckets[client] = tat + self._interval
        return 0.0

    def forget(self, client: ClientKey) -> None:
        self._tat.pop(client, None)


# ---------------------------------------------------------------------------------- shared store


class WindowCounter(Protocol):
    """A shared counter per key and fixed time window."""

    async def increment(self, key: str, window: float, amount: int) -> tuple[int, float]:
        """Add `amount` to `key`'s count in the current window of `window` seconds.

        Returns the count after the addition and the seconds left until the window ends.
        """
        ...

    async def close(self) -> None: ...


# Atomic: the window comes from the server's clock, the counter expires after its window.
# `math.floor` on doubles is exact here: epoch milliseconds stay far below 2^53.
_REDIS_WINDOW_SCRIPT = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window_ms = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local index = math.floor(now_ms / window_ms)
local key = KEYS[1] .. ':' .. index
local count = redis.call('INCRBY', key, amount)
if count == amount then
  redis.call('PEXPIRE', key, window_ms + 1000)
end
return {count, (index + 1) * window_ms - now_ms}
"""


class RedisWindowCounter:
    """Fixed-window counters in Redis, one Lua script call (`EVALSHA`) per increment.

    The script derives the window's key from `KEYS[1]`; on Redis Cluster that is only safe
    with a single-node setup or keys that hash to one slot, which these do not try to ensure.
    """

    def __init__(
        self, redis: Redis, *, prefix: str = "mosaic:ratelimit:", owns_client: bool = False
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._owns = owns_client
        self._script = redis.register_script(_REDIS_WINDOW_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "mosaic:ratelimit:",
        timeout: float = 0.5,
        max_connections: int = 32,
    ) -> RedisWindowCounter:
        # Imported when used: the Redis client is a third of a second of every worker's start.
        from redis.asyncio import BlockingConnectionPool, Redis

        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return cls(Redis.from_pool(pool), prefix=prefix, owns_client=True)

    async def increment(self, key: str, window: float, amount: int) -> tuple[int, float]:
        window_ms = max(1, round(window * 1000))
        reply: Any = await self._script(keys=[self._prefix + key], args=[window_ms, amount])
        count, remaining_ms = reply
        return int(count), int(remaining_ms) / 1000

    async def close(self) -> None:
        if self._owns:
            await self._redis.aclose()


class RateLimitContentionError(Exception):
    """Optimistic updates of a NATS KV counter kept losing to other replicas."""


class NatsKvWindowCounter:
    """Fixed-window counters in a JetStream key-value bucket, updated with optimistic concurrency.

    Each (key, window) is its own KV key, so a new window starts from a missing key and old ones
    expire with the bucket's max age (which must exceed the longest window). An increment is a
    compare-and-set on the key's revision (`kv.update(last=...)`): the revision from this
    process's previous write is tried first, so a key mostly written by one replica costs one
    round trip; on a conflict the current value is read and the update retried.
    """

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str = "mosaic_ratelimit",
        *,
        max_window: float = 3600.0,
        attempts: int = 10,
        clock: Callable[[], float] = time.time,
        remember: int = 10_000,
    ) -> None:
        if attempts < 1 or max_window <= 0:
            raise ValueError("attempts must be >= 1 and max_window positive")
        self.bucket = bucket
        self._js = js
        self._max_window = max_window
        self._attempts = attempts
        self._clock = clock
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        self._remember = remember
        # KV key -> (revision, count) of this process's last successful write.
        self._last: OrderedDict[str, tuple[int, int]] = OrderedDict()

    async def ensure(self) -> KeyValue:
        """Create the bucket (or bind to the existing one); safe to call concurrently."""
        if self._kv is not None:
            return self._kv
        async with self._lock:
            if self._kv is None:
                try:
                    kv = await self._js.create_key_value(
                        bucket=self.bucket,
                        description="Mosaic gateway shared rate-limit counters",
                        history=1,
                        ttl=self._max_window + 60,
                        storage=StorageType.MEMORY,
                    )
                except nats.js.errors.BadRequestError:
                    # Exists with another configuration: usable if it keeps windows long enough.
                    kv = await self._js.key_value(self.bucket)
                info = await self._js.stream_info(f"KV_{self.bucket}")
                max_age = info.config.max_age
                if max_age and max_age < self._max_window:
                    raise ValueError(
                        f"bucket {self.bucket} keeps values {max_age}s, less than a window "
                        f"of {self._max_window}s"
                    )
                self._kv = kv
        return self._kv

    async def increment(self, key: str, window: float, amount: int) -> tuple[int, float]:
        if window > self._max_window:
            raise ValueError(f"a window of {window}s exceeds max_window {self._max_window}s")
        kv = await self.ensure()
        now = self._clock()
        index = int(now // window)
        remaining = (index + 1) * window - now
        name = encode_kv_key(f"{key}:{index}")
        known = self._last.get(name)
        try:
            for _ in range(self._attempts):
                if known is None:
                    try:
                        entry = await kv.get(name)
                    except nats.js.errors.KeyNotFoundError:
                        count = amount
                        try:
                            revision = await kv.create(name, b"%d" % count)
                        except nats.js.errors.KeyWrongLastSequenceError:
                            continue  # another replica created it first
                        self._remember_write(name, revision, count)
                        return count, remaining
                    known = (entry.revision or 0, int(entry.value or b"0"))
                count = known[1] + amount
                try:
                    revision = await kv.update(name, b"%d" % count, last=known[0])
                except nats.js.errors.KeyWrongLastSequenceError:
                    known = None  # someone else wrote since: read the current value
                    continue
                self._remember_write(name, revision, count)
                return count, remaining
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoStreamResponseError):
            self._kv = None  # deleted under us: create it again on next use
            raise
        raise RateLimitContentionError(f"{self._attempts} conflicting updates in a row")

    def _remember_write(self, name: str, revision: int, count: int) -> None:
        last = self._last
        last[name] = (revision, count)
        last.move_to_end(name)
        if len(last) > self._remember:
            last.popitem(last=False)

    async def close(self) -> None:
        # The NATS connection belongs to the caller.
        self._kv = None


# -------------------------------------------------------------------------------- shared limiter


class _Batch:
    """Hits on one key waiting for the same increment."""

    __slots__ = ("future", "size")

    def __init__(self, future: asyncio.Future[tuple[int, float]]) -> None:
        self.future = future
        self.size = 0


class SharedRateLimiter:
    """One budget per client across replicas; see the module docstring for the accuracy.

    `name` identifies the route's limit in the store: replicas must use the same name for the
    same route, and different routes different names.
    """

    def __init__(
        self,
        counter: WindowCounter,
        limit: RateLimit,
        *,
        name: str,
        timeout: float = 0.25,
        cooldown: float = 1.0,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name or "|" in name:
            raise ValueError("a shared limiter needs a name without '|'")
        if timeout <= 0 or cooldown < 0:
            raise ValueError("timeout must be positive and cooldown not negative")
        self.name = name
        self.limit = limit
        self._counter = counter
        self._timeout = timeout
        self._cooldown = cooldown
        self._max_clients = max_clients
        self._clock = clock
        self._fallback = LocalRateLimiter(limit, max_clients=max_clients, clock=clock)
        # client -> when (clock) its current window ends; set once it was refused in it.
        self._blocked: OrderedDict[ClientKey, float] = OrderedDict()
        self._open: dict[str, _Batch] = {}
        self._sending: dict[str, asyncio.Future[tuple[int, float]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bypass_until = 0.0
        self._last_warning = -_LOG_EVERY
        self.backend_errors = 0

    def blocked(self, client: ClientKey) -> float:
        """Seconds `client` must still wait if it is known to be over the limit, else 0.0.

        Synchronous and O(1): the request path can refuse without awaiting anything.
        """
        until = self._blocked.get(client)
        if until is None:
            return 0.0
        wait = until - self._clock()
        if wait > 0:
            return wait
        del self._blocked[client]
        return 0.0

    async def hit(self, client: ClientKey) -> float:
        """0.0 if `client` may make a request now (and count it), else seconds until it may."""
        wait = self.blocked(client)
        if wait > 0:
            return wait
        if self._bypass_until and self._clock() < self._bypass_until:
            return self._fallback.hit(client)
        key = f"{self.name}|{client.decode('latin-1') if isinstance(client, bytes) else client}"
        try:
            count, remaining = await self._count(key)
        except Exception as exc:
            self._backend_failed(exc)
            return self._fallback.hit(client)
        if count <= self.limit.requests:
            return 0.0
        # A window ending this very millisecond still refuses: the answer is "not now".
        remaining = max(remaining, 0.001)
        blocked = self._blocked
        blocked[client] = self._clock() + remaining
        blocked.move_to_end(client)
        if len(blocked) > self._max_clients:
            blocked.popitem(last=False)
        return remaining

    async def _count(self, key: str) -> tuple[int, float]:
        """This hit's position in its window: joins the increment about to be sent for `key`."""
        batch = self._open.get(key)
        if batch is None:
            batch = _Batch(asyncio.get_running_loop().create_future())
            self._open[key] = batch
            task = asyncio.create_task(self._send(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        position = batch.size
        batch.size += 1
        # Shielded: a cancelled request must not cancel the increment others wait for.
        total, remaining = await asyncio.shield(batch.future)
        return total - batch.size + position + 1, remaining

    async def _send(self, key: str, batch: _Batch) -> None:
        previous = self._sending.get(key)
        self._sending[key] = batch.future
        try:
            if previous is not None:
                # One increment in flight per key: hits arriving meanwhile grow this batch.
                await asyncio.wait([previous])
            # Closed: later hits start the next batch.
            del self._open[key]
            async with asyncio.timeout(self._timeout):
                result = await self._counter.increment(key, self.limit.per, batch.size)
        except Exception as exc:
            batch.future.set_exception(exc)
            # Marked as retrieved: if every waiter was cancelled, nothing else would read it.
            batch.future.exception()
        else:
            batch.future.set_result(result)
        finally:
            if self._open.get(key) is batch:
                del self._open[key]
            if not batch.future.done():  # cancelled (loop shutting down): waiters see it too
                batch.future.cancel()
            if self._sending.get(key) is batch.future:
                del self._sending[key]

    def _backend_failed(self, exc: Exception) -> None:
        self.backend_errors += 1
        now = self._clock()
        self._bypass_until = now + self._cooldown
        if now - self._last_warning >= _LOG_EVERY:
            self._last_warning = now
            _log.warning(
                "rate_limit_backend_unavailable",
                limiter=self.name,
                error=type(exc).__name__,
                fallback="local",
                cooldown_s=self._cooldown,
            )

    async def close(self) -> None:
        """Wait for increments in flight (their waiters get answers), then release nothing else:
        the counter belongs to the caller, as several limiters share one."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
