"""The shared cache: one contract, run against NATS KV (always) and Redis (when one answers)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.js.errors
import pytest
from kit_support import records
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from redis.asyncio import Redis

from mosaic_devstack.embedded import EmbeddedNats, free_port
from mosaic_kit.cache import Cache, CacheError, cached
from mosaic_kit.chassis.cache import cache_from_settings
from mosaic_kit.metrics import new_registry
from mosaic_kit.nats.connection import connect
from mosaic_kit.nats.kv import NatsKvCache, encode_kv_key
from mosaic_kit.redis.cache import RedisCache
from mosaic_kit.settings import ServiceSettings

NATS_KV_KEY = re.compile(r"^[-/_=\.a-zA-Z0-9]+$")

Replica = Callable[..., Awaitable[Cache]]
Closer = Callable[[], Awaitable[None]]


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _nats_replicas(nats_url: str, closers: list[Closer]) -> Replica:
    bucket = _unique("cache_test_")
    default_namespace = _unique("t") + ":"

    async def replica(namespace: str = default_namespace) -> Cache:
        # Each replica has its own connection, as separate processes would.
        nc = await connect(nats_url, "cache-test")
        cache = NatsKvCache(nc.jetstream(), bucket, namespace, max_ttl=60)
        closers.extend([nc.close, cache.close])
        return cache

    async def drop_bucket() -> None:
        nc = await connect(nats_url, "cache-test-cleanup")
        with contextlib.suppress(nats.js.errors.NotFoundError):  # never created
            await nc.jetstream().delete_key_value(bucket)
        await nc.close()

    closers.append(drop_bucket)
    return replica


def _redis_replicas(url: str, closers: list[Closer]) -> Replica:
    namespaces: set[str] = set()
    default_namespace = _unique("mosaic-test-") + ":"

    async def replica(namespace: str = default_namespace) -> Cache:
        namespaces.add(namespace)
        cache = RedisCache(url, namespace)
        closers.append(cache.close)
        return cache

    async def drop_keys() -> None:
        client = Redis.from_url(url)
        for namespace in namespaces:
            keys = [key async for key in client.scan_iter(match=f"{namespace}*")]
            if keys:
                await client.unlink(*keys)
        await client.aclose()

    closers.append(drop_keys)
    return replica


@pytest.fixture(params=["nats-kv", "redis"])
async def replicas(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Replica]:
    """Makes cache instances ("replicas") sharing one backend (and, by default, one namespace)."""
    closers: list[Closer] = []
    if request.param == "redis":
        factory = _redis_replicas(request.getfixturevalue("redis_url"), closers)
    else:
        factory = _nats_replicas(nats_url, closers)
    yield factory
    for close in reversed(closers):
        await close()


@pytest.fixture
async def cache(replicas: Replica) -> Cache:
    return await replicas()


# -- the contract ---------------------------------------------------------------------------------


async def test_set_get_overwrite_delete(cache: Cache) -> None:
    assert await cache.get("blog:1") is None
    await cache.set("blog:1", b"first", 30)
    await cache.set("blog:2", b"second", 30)
    await cache.set("empty", b"", 30)
    assert await cache.get("blog:1") == b"first"
    assert await cache.get("empty") == b""
    await cache.set("blog:1", b"updated", 30)
    assert await cache.get("blog:1") == b"updated"

    await cache.delete("blog:1", "never-set", "blog:1")
    await cache.delete()
    assert await cache.get("blog:1") is None
    assert await cache.get("blog:2") == b"second"
    # A key deleted can be cached again (a NATS purge marker must not block the next value).
    await cache.set("blog:1", b"again", 30)
    assert await cache.get("blog:1") == b"again"


async def test_entries_expire_after_their_own_ttl(replicas: Replica) -> None:
    writer, reader = await replicas(), await replicas()
    await writer.set("short", b"s", 1)
    await writer.set("long", b"l", 30)
    assert await reader.get("short") == b"s"
    await asyncio.sleep(1.3)
    assert await reader.get("short") is None
    assert await reader.get("long") == b"l"
    await writer.set("ignored", b"x", 0)
    assert await reader.get("ignored") is None


async def test_every_replica_sees_a_delete_at_once(replicas: Replica) -> None:
    one, two = await replicas(), await replicas()
    await one.set("blog:slug:hello", b"v1", 60)
    assert await two.get("blog:slug:hello") == b"v1"
    await two.delete("blog:slug:hello")
    assert await one.get("blog:slug:hello") is None


async def test_generation_bump_hides_the_whole_group_for_every_replica(replicas: Replica) -> None:
    one, two = await replicas(), await replicas()
    # Replicas reading a group for the first time at the same moment must agree on it.
    firsts = await asyncio.gather(*(r.get_generation("listings") for r in (one, two) * 4))
    assert len(set(firsts)) == 1
    old = firsts[0]
    for page in (1, 2, 3):
        await one.set(f"listings:{old}:{page}", f"page {page}".encode(), 60)
    assert await two.get(f"listings:{old}:2") == b"page 2"

    new = await two.bump_generation("listings")
    assert new != old
    assert await one.get_generation("listings") == new
    assert await two.get_generation("listings") == new
    assert await one.get(f"listings:{new}:2") is None
    # Another group keeps its generation.
    other = await one.get_generation("similar")
    await one.bump_generation("listings")
    assert await two.get_generation("similar") == other


async def test_caller_keys_cannot_reach_generations(cache: Cache) -> None:
    generation = await cache.get_generation("grp")
    await cache.set("g:grp", b"forged", 60)
    await cache.delete("g:grp")
    assert await cache.get_generation("grp") == generation


async def test_namespaces_do_not_collide(replicas: Replica) -> None:
    mine, theirs = await replicas(), await replicas(_unique("other") + ":")
    await mine.set("k", b"mine", 60)
    await theirs.set("k", b"theirs", 60)
    assert await mine.get("k") == b"mine"
    assert await theirs.get("k") == b"theirs"
    await theirs.delete("k")
    assert await mine.get("k") == b"mine"
    assert await mine.get_generation("g") != await theirs.get_generation("g")


ODD_KEYS = [
    "with space",
    "ünïcødé/日本語",
    "a/b/c",
    "dots..and.",
    ".leading",
    "=3D",
    "=",
    "=_",
    "*>",
    "tab\tnew\nline",
    "",
    "x" * 1000,
    "x" * 999 + "y",
    "ü" * 300,
]


async def test_odd_keys_round_trip(replicas: Replica) -> None:
    writer, reader = await replicas(), await replicas()
    for index, key in enumerate(ODD_KEYS):
        await writer.set(key, f"value {index}".encode(), 60)
    for index, key in enumerate(ODD_KEYS):
        assert await reader.get(key) == f"value {index}".encode(), key
    await writer.delete(*ODD_KEYS[:3])
    assert [await reader.get(k) for k in ODD_KEYS[:4]] == [None, None, None, b"value 3"]


def test_kv_key_encoding_is_valid_bounded_and_injective() -> None:
    encoded = [encode_kv_key("blog:" + key) for key in ODD_KEYS]
    for key in encoded:
        assert NATS_KV_KEY.match(key), key
        assert not key.startswith(".")
        assert not key.endswith(".")
        assert len(key) <= 240
    assert len(set(encoded)) == len(encoded)
    # Plain characters stay readable; the escape character itself is escaped.
    assert encode_kv_key("blog:post/1-a_b") == "blog=3Apost/1-a_b"
    assert encode_kv_key("=") != encode_kv_key("=3D")
    assert encode_kv_key("x" * 1000).startswith("x" * 100)


# -- read-through ---------------------------------------------------------------------------------


async def test_cached_loads_once_for_concurrent_misses(cache: Cache) -> None:
    calls = 0

    async def load() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)  # long enough for every caller's miss to arrive meanwhile
        return b"from the database"

    results = await asyncio.gather(*(cached(cache, "hot", 30, load) for _ in range(20)))
    assert calls == 1
    assert results == [(b"from the database", False)] * 20
    assert await cached(cache, "hot", 30, load) == (b"from the database", True)
    assert calls == 1


async def test_cached_does_not_store_none(cache: Cache) -> None:
    calls = 0

    async def load() -> bytes | None:
        nonlocal calls
        calls += 1
        return None

    assert await cached(cache, "missing-blog", 30, load) == (None, False)
    assert await cached(cache, "missing-blog", 30, load) == (None, False)
    assert calls == 2
    assert await cache.get("missing-blog") is None


async def test_cached_shares_a_failure_then_loads_again(cache: Cache) -> None:
    calls = 0

    async def failing() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise LookupError("database down")

    outcomes = await asyncio.gather(
        *(cached(cache, "flaky", 30, failing) for _ in range(5)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(o, LookupError) for o in outcomes)

    async def working() -> bytes:
        return b"ok"

    assert await cached(cache, "flaky", 30, working) == (b"ok", False)


async def test_a_waiter_takes_over_when_the_loading_task_is_cancelled(cache: Cache) -> None:
    started = asyncio.Event()
    loads: list[str] = []

    async def load() -> bytes:
        loads.append("load")
        started.set()
        await asyncio.sleep(0.2)
        return b"value"

    leader = asyncio.create_task(cached(cache, "contested", 30, load))
    await started.wait()
    waiter = asyncio.create_task(cached(cache, "contested", 30, load))
    await asyncio.sleep(0.05)
    leader.cancel()
    assert await asyncio.wait_for(waiter, 5) == (b"value", False)
    assert leader.cancelled()
    assert loads == ["load", "load"]


# -- metrics --------------------------------------------------------------------------------------


async def test_hits_misses_and_errors_are_counted_per_namespace(nats_url: str) -> None:
    registry = new_registry(process_metrics=False)
    nc = await connect(nats_url, "cache-test-metrics")
    bucket = _unique("cache_test_")
    up = NatsKvCache(nc.jetstream(), bucket, "up:", max_ttl=60, registry=registry)
    down = RedisCache(f"redis://127.0.0.1:{free_port()}/0", "down:", registry=registry)
    try:
        await up.set("k", b"v", 30)
        await up.get("k")
        await up.get("k")
        await up.get("nope")
        await down.get("k")
        with pytest.raises(CacheError):
            await down.delete("k")
    finally:
        await down.close()
        await nc.jetstream().delete_key_value(bucket)
        await nc.close()

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert sample("cache_lookups_total", namespace="up:", result="hit") == 2
    assert sample("cache_lookups_total", namespace="up:", result="miss") == 1
    assert sample("cache_lookups_total", namespace="up:", result="error") == 0
    assert sample("cache_lookups_total", namespace="down:", result="error") == 1
    assert sample("cache_errors_total", namespace="down:", operation="get") == 1
    assert sample("cache_errors_total", namespace="down:", operation="delete") == 1


# -- a backend that is down -----------------------------------------------------------------------


@pytest.fixture(params=["redis-closed-port", "nats-closed-connection"])
async def down_cache(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Cache]:
    if request.param == "redis-closed-port":
        broken: Cache = RedisCache(
            f"redis://127.0.0.1:{free_port()}/0", "down:", write_timeout=0.5, cooldown=0
        )
    else:
        nc = await connect(nats_url, "cache-test-closed")
        broken = NatsKvCache(
            nc.jetstream(), _unique("cache_test_"), "down:", write_timeout=0.5, cooldown=0
        )
        await nc.close()
    yield broken
    await broken.close()


async def _assert_degrades(cache: Cache) -> None:
    started = time.monotonic()
    assert await cache.get("k") is None
    await cache.set("k", b"v", 30)  # skipped, not raised

    async def load() -> bytes:
        return b"from the database"

    assert await cached(cache, "k", 30, load) == (b"from the database", False)
    first, second = await cache.get_generation("g"), await cache.get_generation("g")
    # Throwaway generations: nothing cached under one can be read back under another.
    assert first != second
    # Bounded by the read timeouts (0.5 s) rather than by client retries or default timeouts.
    assert time.monotonic() - started < 3

    with pytest.raises(CacheError):
        await cache.delete("k")
    with pytest.raises(CacheError):
        await cache.bump_generation("g")


async def test_a_down_backend_degrades_reads_and_fails_invalidations(down_cache: Cache) -> None:
    await _assert_degrades(down_cache)


async def test_failures_are_logged_rate_limited_without_keys_or_values(
    down_cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="mosaic_kit.cache")
    for _ in range(5):
        await down_cache.set("secret-key", b"secret-value", 30)
        assert await down_cache.get("secret-key") is None
    lines = [r for r in records(caplog, "mosaic_kit.cache") if r["event"] == "cache_backend_error"]
    assert sorted(line["operation"] for line in lines) == ["get", "set"]  # once per interval
    assert "secret" not in repr(lines)


async def test_nats_server_outage_then_recovery(own_nats: EmbeddedNats) -> None:
    registry = new_registry(process_metrics=False)
    nc = await connect(own_nats.url, "cache-test-outage", reconnect_wait=0.1)
    cache = NatsKvCache(
        nc.jetstream(),
        "cache_outage",
        "blog:",
        read_timeout=0.5,
        write_timeout=0.5,
        cooldown=30,
        registry=registry,
    )

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"namespace": "blog:", **labels}) or 0.0

    try:
        await cache.set("k", b"before", 30)
        assert await cache.get("k") == b"before"
        await asyncio.to_thread(own_nats.stop)
        assert await cache.get("k") is None
        # The first timeout opens the breaker: later reads skip the backend instead of waiting.
        assert await cache.get("k") is None
        assert count("cache_errors_total", operation="get") == 1
        assert count("cache_lookups_total", result="error") == 2
        await _assert_degrades(cache)

        await asyncio.to_thread(own_nats.start)
        # The bucket lived in the stopped server's memory. Invalidations always reach for the
        # backend, so they notice the loss, rebuild the bucket and close the breaker.
        for _ in range(40):
            try:
                await cache.delete("k")
                break
            except CacheError:
                await asyncio.sleep(0.25)
        await cache.set("k", b"after", 30)
        assert await cache.get("k") == b"after"
    finally:
        await cache.close()
        await nc.close()


# -- NATS KV specifics ----------------------------------------------------------------------------


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await connect(nats_url, "cache-test-js")
    yield nc.jetstream()
    await nc.close()


async def _messages(js: JetStreamContext, bucket: str) -> int:
    info = await js.stream_info(f"KV_{bucket}")
    return int(info.state.messages)


async def test_nats_storage_is_reclaimed_per_key(js: JetStreamContext) -> None:
    bucket = _unique("cache_test_")
    cache = NatsKvCache(js, bucket, "blog:", max_ttl=600)
    try:
        await cache.ensure()
        # The embedded server (>= 2.11) takes per-message TTLs: entries do not wait for max_ttl.
        assert cache.per_key_ttl
        await cache.set("short", b"v", 1)
        await cache.set("deleted", b"v", 600)
        await cache.delete("deleted")
        assert await _messages(js, bucket) == 2  # the short entry and a purge marker
        for _ in range(40):
            if await _messages(js, bucket) == 0:
                break
            await asyncio.sleep(0.1)
        assert await _messages(js, bucket) == 0
    finally:
        await js.delete_key_value(bucket)


async def test_nats_binds_to_a_bucket_made_with_another_max_age(js: JetStreamContext) -> None:
    bucket = _unique("cache_test_")
    await js.create_key_value(bucket=bucket, history=1, ttl=30)
    cache = NatsKvCache(js, bucket, "blog:", max_ttl=600)
    try:
        await cache.set("k", b"v", 600)
        assert await cache.get("k") == b"v"
    finally:
        await js.delete_key_value(bucket)


async def test_nats_cache_recreates_a_deleted_bucket(js: JetStreamContext) -> None:
    bucket = _unique("cache_test_")
    cache = NatsKvCache(js, bucket, "blog:", max_ttl=60)
    try:
        await cache.set("k", b"v", 30)
        await js.delete_key_value(bucket)
        assert await cache.get("k") is None
        await cache.set("k", b"v2", 30)  # fails once, noticing the bucket is gone
        await cache.set("k", b"v2", 30)
        assert await cache.get("k") == b"v2"
    finally:
        await js.delete_key_value(bucket)


def test_invalid_bucket_names_are_refused() -> None:
    with pytest.raises(ValueError, match="bucket"):
        NatsKvCache(None, "has.dot", "blog:")  # type: ignore[arg-type]


# -- choosing a backend ---------------------------------------------------------------------------


async def test_settings_without_redis_choose_nats_kv(nats_url: str) -> None:
    nc = await connect(nats_url, "cache-test-settings")
    bucket = _unique("cache_test_")
    registry: CollectorRegistry = new_registry(process_metrics=False)
    try:
        chosen = await cache_from_settings(
            ServiceSettings(redis_url=None), nc, "blog:", bucket=bucket, registry=registry
        )
        assert isinstance(chosen, NatsKvCache)
        assert chosen.per_key_ttl  # the bucket was made at start-up, not at first use
        await chosen.set("k", b"v", 30)
        assert await chosen.get("k") == b"v"
        with pytest.raises(ValueError, match="REDIS_URL"):
            await cache_from_settings(ServiceSettings(redis_url=None), None, "blog:")
    finally:
        await nc.jetstream().delete_key_value(bucket)
        await nc.close()


async def test_settings_with_redis_choose_redis(redis_url: str) -> None:
    settings = ServiceSettings(redis_url=SecretStr(redis_url))
    namespace = _unique("mosaic-test-") + ":"
    chosen = await cache_from_settings(settings, None, namespace)
    try:
        assert isinstance(chosen, RedisCache)
        await chosen.set("k", b"v", 30)
        assert await chosen.get("k") == b"v"
    finally:
        await chosen.delete("k")
        await chosen.close()
