"""Rate limits: the local token bucket, and one budget shared by replicas over NATS KV and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from mosaic_devstack.embedded import EmbeddedNats
from mosaic_gateway.filters.ratelimit import (
    LocalRateLimiter,
    NatsKvWindowCounter,
    RateLimit,
    RedisWindowCounter,
    SharedRateLimiter,
    retry_after_header,
)
from mosaic_kit.nats.connection import Client, connect
from mosaic_kit.nats.kv import encode_kv_key


class Clock:
    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- local ------------------------------------------------------------------------------------


def test_bucket_allows_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(RateLimit(requests=3, per=1.0), clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.hit("a")
    assert wait == pytest.approx(1 / 3)
    clock.now += 0.2
    assert limiter.hit("a") == pytest.approx(1 / 3 - 0.2)
    clock.now += 1 / 3 - 0.2
    assert limiter.hit("a") == 0.0, "one token is back after 1/3 s"
    assert limiter.hit("a") > 0
    # A long pause fills the bucket up to its size, never beyond.
    clock.now += 100.0
    assert [limiter.hit("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.hit("a") > 0


def test_burst_smaller_than_the_rate() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(RateLimit(requests=10, per=1.0, burst=2), clock=clock)
    assert limiter.hit("a") == 0.0
    assert limiter.hit("a") == 0.0
    assert limiter.hit("a") == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.hit("a") == 0.0
    # Over a second at a steady pace, the full rate gets through.
    allowed = 0
    for _ in range(100):
        clock.now += 0.01
        allowed += limiter.hit("b") == 0.0
    assert allowed in (10, 11)  # 10 per second, plus the bucket's initial token(s)


def test_refused_requests_do_not_push_the_client_further_back() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(RateLimit(requests=1, per=10.0), clock=clock)
    assert limiter.hit("a") == 0.0
    for _ in range(50):
        assert limiter.hit("a") == pytest.approx(10.0)
    clock.now += 10.0
    assert limiter.hit("a") == 0.0


def test_clients_and_routes_are_isolated() -> None:
    clock = Clock()
    route_a = LocalRateLimiter(RateLimit(requests=1, per=60.0), clock=clock)
    route_b = LocalRateLimiter(RateLimit(requests=1, per=60.0), clock=clock)
    assert route_a.hit("key-1") == 0.0
    assert route_a.hit("key-1") > 0
    assert route_a.hit("key-2") == 0.0, "another client has its own budget"
    assert route_a.hit(b"key-1") == 0.0, "bytes and str keys are distinct clients"
    assert route_b.hit("key-1") == 0.0, "another route has its own budget"


def test_client_table_is_bounded_least_recently_used_first() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(RateLimit(requests=1, per=60.0), max_clients=2, clock=clock)
    limiter.hit("a")
    limiter.hit("b")
    assert limiter.hit("a") > 0  # refused: a is still tracked (and was the most recent)
    clock.now += 0.001
    limiter.hit("c")  # evicts the least recently seen: b
    assert len(limiter) == 2
    assert limiter.hit("b") == 0.0, "b was evicted, so it starts with a full bucket"
    assert limiter.hit("c") > 0


def test_allowed_hits_also_count_as_recent_use() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(RateLimit(requests=1, per=60.0), max_clients=2, clock=clock)
    limiter.hit("a")
    limiter.hit("b")
    clock.now += 100.0
    assert limiter.hit("a") == 0.0  # refilled, allowed, and now the most recent
    limiter.hit("c")  # must evict b, not a
    assert limiter.hit("a") > 0, "a's spent budget was kept"


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after_header(0.01) == (b"retry-after", b"1")
    assert retry_after_header(1.0) == (b"retry-after", b"1")
    assert retry_after_header(1.2) == (b"retry-after", b"2")
    assert retry_after_header(59.5) == (b"retry-after", b"60")
    clock = Clock()
    limiter = LocalRateLimiter(RateLimit(requests=2, per=60.0), clock=clock)
    limiter.hit("a")
    limiter.hit("a")
    assert retry_after_header(limiter.hit("a")) == (b"retry-after", b"30")


def test_invalid_limits() -> None:
    with pytest.raises(ValueError, match="requests >= 1"):
        RateLimit(requests=0, per=1.0)
    with pytest.raises(ValueError, match="positive period"):
        RateLimit(requests=1, per=0)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(requests=1, per=1.0, burst=0)


# --- shared over NATS KV ------------------------------------------------------------------------


@pytest.fixture
async def replicas(nats_url: str) -> AsyncIterator[tuple[Client, Client]]:
    """Two NATS connections, standing for two gateway replicas."""
    first = await connect(nats_url, "gateway-1")
    second = await connect(nats_url, "gateway-2")
    yield first, second
    await first.close()
    await second.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# Window boundaries come from the counter's clock: pin it 10 s into a 60 s window.
WINDOW_START = 60.0 * 30_000_000


async def test_two_replicas_share_one_budget_over_nats_kv(
    replicas: tuple[Client, Client],
) -> None:
    wall = Clock(WINDOW_START + 10.0)
    limit = RateLimit(requests=5, per=60.0)
    name = unique("route")
    counters = [
        NatsKvWindowCounter(nc.jetstream(), "gw_test_ratelimit", max_window=120, clock=wall)
        for nc in replicas
    ]
    first, second = (SharedRateLimiter(c, limit, name=name) for c in counters)

    assert [await first.hit("key-1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [await second.hit("key-1") for _ in range(2)] == [0.0, 0.0]
    wait = await second.hit("key-1")
    assert wait == pytest.approx(50.0), "refused until the window ends"
    assert await first.hit("key-1") == pytest.approx(50.0)
    assert await first.hit("key-2") == 0.0, "another client has its own budget"

    kv = await counters[0].ensure()
    stored = await kv.get(encode_kv_key(f"{name}|key-1:{int(wall.now // 60)}"))
    assert stored.value == b"7"
    # Once refused, a replica answers locally for the rest of the window.
    for _ in range(5):
        assert await first.hit("key-1") > 0
    assert (await kv.get(encode_kv_key(f"{name}|key-1:{int(wall.now // 60)}"))).value == b"7"

    # The next window starts a fresh count.
    wall.now += 50.0
    third_replica = SharedRateLimiter(counters[1], limit, name=name)
    assert await third_replica.hit("key-1") == 0.0


async def test_concurrent_hits_from_two_replicas_admit_exactly_the_limit(
    replicas: tuple[Client, Client],
) -> None:
    wall = Clock(WINDOW_START + 1.0)
    limit = RateLimit(requests=7, per=60.0)
    name = unique("route")
    limiters = [
        SharedRateLimiter(
            NatsKvWindowCounter(nc.jetstream(), "gw_test_ratelimit", max_window=120, clock=wall),
            limit,
            name=name,
            timeout=5.0,
        )
        for nc in replicas
    ]
    waits = await asyncio.gather(*(limiters[i % 2].hit("busy") for i in range(30)))
    assert sum(1 for w in waits if w == 0.0) == 7
    assert all(w == pytest.approx(59.0) for w in waits if w)
    assert all(limiter.backend_errors == 0 for limiter in limiters)


async def test_backend_outage_falls_back_to_a_local_bucket(own_nats: EmbeddedNats) -> None:
    nc = await connect(own_nats.url, "gateway-outage")
    try:
        counter = NatsKvWindowCounter(nc.jetstream(), "gw_test_ratelimit", max_window=120)
        limiter = SharedRateLimiter(
            counter, RateLimit(requests=2, per=60.0), name="route", timeout=0.3, cooldown=30.0
        )
        assert await limiter.hit("a") == 0.0
        own_nats.stop()
        # Not an error for the client and not a free pass: the same budget, kept locally.
        assert await limiter.hit("a") == 0.0
        assert await limiter.hit("a") == 0.0
        assert await limiter.hit("a") > 0
        assert limiter.backend_errors == 1, "after one failure the backend is skipped a while"
    finally:
        await nc.close()


def test_shared_limiter_name_must_be_usable_in_keys() -> None:
    counter = RedisWindowCounter.from_url("redis://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"without '\|'"):
        SharedRateLimiter(counter, RateLimit(1, 1.0), name="a|b")


# --- shared over Redis --------------------------------------------------------------------------


async def wait_for_room_in_window(window: float, needed: float = 5.0) -> None:
    # Redis takes window boundaries from its own clock; keep the test inside one window.
    remaining = window - time.time() % window
    if remaining < needed:
        await asyncio.sleep(remaining + 0.05)


async def test_two_replicas_share_one_budget_over_redis(redis_url: str) -> None:
    prefix = unique("test-rl") + ":"
    counters = [RedisWindowCounter.from_url(redis_url, prefix=prefix) for _ in range(2)]
    try:
        limit = RateLimit(requests=4, per=60.0)
        first, second = (SharedRateLimiter(c, limit, name="route") for c in counters)
        await wait_for_room_in_window(60.0)
        waits = await asyncio.gather(*((first, second)[i % 2].hit("key-1") for i in range(10)))
        assert sum(1 for w in waits if w == 0.0) == 4
        refused = [w for w in waits if w]
        expected = 60.0 - time.time() % 60.0
        assert all(abs(w - expected) < 2.0 for w in refused)
        assert await second.hit("key-2") == 0.0
        count, remaining = await counters[0].increment("route|key-1", 60.0, 0)
        assert count == 10
        assert 0 < remaining <= 60.0
    finally:
        for counter in counters:
            await counter.close()
