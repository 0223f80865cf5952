"""`Invalidator`: generation bumps after a commit never hold the caller, and land eventually.

Against a real NATS key-value cache whose server the test freezes (SIGSTOP) and thaws.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from mosaic_devstack.embedded import EmbeddedNats
from mosaic_kit.cache import Invalidator
from mosaic_kit.nats.connection import connect
from mosaic_kit.nats.kv import NatsKvCache


def _freeze(pid: int) -> None:
    """SIGSTOP `pid` and wait until it is stopped (delivery is asynchronous)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 2
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "T":
        assert time.monotonic() < deadline, "the process did not stop"
        time.sleep(0.005)


async def test_bumps_wait_briefly_when_healthy_skip_waiting_when_frozen_and_land_after_thaw(
    own_nats: EmbeddedNats,
) -> None:
    nc = await connect(own_nats.url, "invalidator-test")
    bucket = f"inval_{uuid.uuid4().hex[:8]}"
    writer = NatsKvCache(nc.jetstream(), bucket, "t:", max_ttl=60, write_timeout=0.5)
    reader = NatsKvCache(nc.jetstream(), bucket, "t:", max_ttl=60, read_timeout=0.3, cooldown=0)
    invalidator = Invalidator(writer, patience=0.2, retry_max=0.3)
    try:
        first = await reader.get_generation("public")
        # Healthy: the bump has landed when invalidate returns (read-your-writes, any replica).
        await invalidator.invalidate("public")
        landed = await reader.get_generation("public")
        assert landed != first
        assert not invalidator.unsettled("public")
        assert await invalidator.generation("public") == landed

        assert own_nats.pid is not None
        _freeze(own_nats.pid)
        try:
            took = []
            for _ in range(20):
                started = time.perf_counter()
                await invalidator.invalidate("public")
                took.append(time.perf_counter() - started)
            # At most the patience, once: when a round is overdue, nobody waits for it.
            assert max(took) < 0.3, took
            assert sum(t > 0.05 for t in took) <= 1, took
            # Nor is anything left behind per write while the backend hangs.
            assert len(invalidator._waiters) <= 1
            assert invalidator.unsettled("public")
            # This replica's reads of the group skip the cache until the bump lands.
            assert await invalidator.generation("public") != await invalidator.generation("public")
            assert not await invalidator.settle(0.6)
        finally:
            os.kill(own_nats.pid, signal.SIGCONT)

        assert await invalidator.settle(10)
        after = await reader.get_generation("public")
        assert after != landed
        assert await invalidator.generation("public") == after
    finally:
        await invalidator.close()
        await nc.close()


async def test_close_gives_up_within_its_bound_and_says_so(own_nats: EmbeddedNats) -> None:
    nc = await connect(own_nats.url, "invalidator-close-test")
    cache = NatsKvCache(nc.jetstream(), f"inval_{uuid.uuid4().hex[:8]}", "t:", write_timeout=0.3)
    invalidator = Invalidator(cache, patience=0)
    assert own_nats.pid is not None
    _freeze(own_nats.pid)
    try:
        await invalidator.invalidate("public")
        started = time.perf_counter()
        await invalidator.close(timeout=0.5)
        assert time.perf_counter() - started < 1.0
        assert invalidator.unsettled("public")
    finally:
        os.kill(own_nats.pid, signal.SIGCONT)
        await nc.close()
