"""What the shared servers give on this machine: the PostgreSQL and NATS figures of docs/scaling.md.

Starts its own embedded PostgreSQL (durable: fsync on, as in production) and NATS with JetStream
and measures, through the same drivers the services use (asyncpg, nats-py):

- PostgreSQL point reads by primary key (a prepared statement, a pool of 16, 64 concurrent
  callers): the shape of a service's read by id;
- PostgreSQL single-row inserts, each its own committed transaction: the shape of a write with
  its outbox row (one commit, one WAL flush);
- NATS request-reply round trips (a responder in a second connection, 64 in flight): the shape
  of `auth.users.get`;
- JetStream publishes with their acknowledgement (file storage, one replica, 256 in flight): the
  shape of the outbox relay.

The client runs in one Python process on the same cores as the server, so each figure is a floor
for the server and roughly what one service process can push. Writes
bench/results/infra_capacity.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import nats
from loadgen import write_results

from mosaic_devstack.embedded import EmbeddedNats, EmbeddedPostgres, free_port

RESULTS = Path(__file__).resolve().parent / "results" / "infra_capacity.json"


async def _saturate(
    operation: Callable[[int], Awaitable[None]], in_flight: int, seconds: float
) -> dict[str, float]:
    """Run `operation` from `in_flight` callers for `seconds`; rate and latency percentiles."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        n = index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await operation(n)
            latencies.append(time.perf_counter() - started)
            n += in_flight

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {
        "per_second": round(len(latencies) / elapsed),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


async def postgres_rows(dsn: str, seconds: float) -> dict[str, dict[str, float]]:
    pool = await asyncpg.create_pool(dsn, min_size=16, max_size=16)
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE bench_items (id bigint PRIMARY KEY, title text NOT NULL,"
                " body text NOT NULL)"
            )
            await conn.execute(
                "INSERT INTO bench_items SELECT g, 'title ' || g, repeat('x', 400)"
                " FROM generate_series(1, 100000) g"
            )
            await conn.execute(
                "CREATE TABLE bench_writes (id bigint PRIMARY KEY, payload jsonb NOT NULL)"
            )
            await conn.execute("ANALYZE bench_items")

        async def read(n: int) -> None:
            async with pool.acquire() as conn:
                await conn.fetchrow(
                    "SELECT id, title, body FROM bench_items WHERE id = $1", n % 100000 + 1
                )

        async def write(n: int) -> None:
            async with pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO bench_writes VALUES ($1, $2)", n, '{"kind": "bench"}'
                )

        return {
            "postgres point read": await _saturate(read, 64, seconds),
            "postgres committed insert": await _saturate(write, 64, seconds),
        }
    finally:
        await pool.close()


async def nats_rows(url: str, seconds: float) -> dict[str, dict[str, float]]:
    responder = await nats.connect(url, name="bench-responder")
    client = await nats.connect(url, name="bench-client")
    try:

        async def answer(msg: Any) -> None:
            await msg.respond(b'{"ok":true}')

        await responder.subscribe("bench.echo", queue="bench", cb=answer)
        await responder.flush()

        async def request(_n: int) -> None:
            await client.request("bench.echo", b'{"id":1}', timeout=5)

        js = client.jetstream()
        await js.add_stream(name="BENCH", subjects=["bench.events.>"])
        payload = b'{"type":"blog.blog.liked","data":{"blog_id":"x"}}' * 4

        async def publish(n: int) -> None:
            await js.publish("bench.events.liked", payload, headers={"Nats-Msg-Id": f"bench-{n}"})

        return {
            "nats request-reply": await _saturate(request, 64, seconds),
            "jetstream publish + ack": await _saturate(publish, 256, seconds),
        }
    finally:
        await client.close()
        await responder.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mosaic-infra-bench-"))
    pg = EmbeddedPostgres(root / "pg", free_port(), durable=True)
    broker = EmbeddedNats(root / "nats", free_port())
    pg.start()
    broker.start()
    try:
        dsn = pg.url.replace("postgresql+asyncpg://", "postgresql://")
        rows = asyncio.run(postgres_rows(dsn, args.seconds))
        rows |= asyncio.run(nats_rows(broker.url, args.seconds))
    finally:
        broker.stop()
        pg.stop()
    print(f"{'case':<28} {'per second':>11} {'p50 ms':>8} {'p99 ms':>8}")
    for name, row in rows.items():
        print(f"{name:<28} {row['per_second']:>11,} {row['p50_ms']:>8} {row['p99_ms']:>8}")
    write_results(
        RESULTS,
        "infra_capacity",
        {
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]},
            "seconds": args.seconds,
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
